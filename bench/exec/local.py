"""``--executor local --jobs N``: runs in N long-lived worker processes (``python -m bench.exec.worker --serve``).

Isolation is the point: whatever a run does — raise, call ``os._exit``, exhaust memory and get killed, hang past
``--run-timeout`` — only that run fails. Its record holds the exit code (or the timeout) and the last lines of its log
(``<results>/.logs/<run_id>.log``); the other runs go on, the next one in a fresh worker.

A worker starts once per executor, not once per run: it takes run after run over a pipe and keeps its session
(imports, tasks, its most recent stages) in memory between them, so on the tiny tier — where a run can take less
time than starting Python — a run costs little more than its own work. An idle worker takes the longest waiting run
(by step budget, so that no long run is left to the end; when the caller streams, LR-search probes first, since the
runs the search picks wait for them), and among runs as long, one on a defended stage it already holds. Streaming
(``submit(specs, more=...)``), the runs that become ready as runs finish join the same queue, so no worker waits for
a wave to end. Before the runs, the workers build their defended stages in parallel into the on-disk stage cache,
or find them there (:meth:`LocalExecutor.prepare`), so the sweep's own process neither builds them one after another
while the workers wait nor loads them at all. Workers start in their own process group and exit when their sweep dies or
the executor is closed (or garbage-collected), so an interrupted sweep leaves no orphans; the runs already written
stay.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.core.spec import RunSpec
from bench.exec.run_queue import POLL_S, RunQueue
from bench.exec.shared import StageFailure, clear_previous, read_back, record_death
from bench.exec.worker import SERVE_STAGES, WorkerOptions
from bench.plan.planner import RunRecord

STOP_WAIT_S = 5.0
"""How long a closed worker may take to exit on its own before it is killed."""
TIMED_OUT = "timed out"


class LocalExecutor:
    """Runs specs in ``jobs`` long-lived worker processes (see the module docstring)."""

    streams = True
    starts = True
    computes_in_workers = True
    """The sweep's own process builds no stage: workers do (:meth:`prepare`, then each run)."""

    def __init__(self, session, options: WorkerOptions, *, jobs: int, run_timeout: float | None = None,
                 gpus: int = 0):
        self.session, self.options, self.jobs, self.run_timeout, self.gpus = session, options, jobs, run_timeout, gpus
        self.workers_started = 0
        """Worker processes started so far (one per slot, plus one for each worker that died)."""
        self._workers: dict[int, _Worker] = {}  # slot -> its live worker
        self._lock = threading.Lock()
        self._close = weakref.finalize(self, _stop_all, self._workers, self._lock)

    def close(self) -> None:
        """Stop the workers (they finish nothing: call between waves, not during one)."""
        self._close()

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def prestart(self, specs: Sequence[RunSpec]) -> None:
        """Start the workers ``specs`` will need now and have them import their tasks' code, while the caller still
        prepares (builds or reads) the stages: worker startup overlaps it instead of following it. Their startup
        output goes to ``.logs/worker-<slot>.log``."""
        logs = Path(self.options.results_dir) / ".logs"
        logs.mkdir(parents=True, exist_ok=True)
        tasks = sorted({spec.task.name for spec in specs})
        for slot in range(min(self.jobs, len(specs))):
            if slot not in self._workers:
                self._start(slot, logs / f"worker-{slot}.log").warm(tasks)

    def prepare(self, specs: Sequence[RunSpec]) -> dict[str, StageFailure | None]:
        """Have the workers build the defended stages ``specs`` need, or find them in the on-disk stage cache (one
        per distinct stage: :meth:`~bench.run.stages.Session.defended_to_prepare`), one per worker at a time, and wait
        for them. Returns, per stage key (``spec.stage_key("defended")``), None when it is ready (a worker keeps
        what it prepared in memory, and takes the runs on it first) or the :class:`StageFailure` that stopped it:
        an error the build raised (bad input or not), a worker that died building it (``os._exit``, killed for
        memory) or a build past ``--run-timeout``. A stage is tried once, and never in the caller's process: a
        defense that kills its process kills a worker, not the sweep."""
        todo: queue.SimpleQueue = queue.SimpleQueue()
        specs = self.session.defended_to_prepare(specs)
        for spec in specs:
            todo.put(spec)
        outcomes: dict[str, StageFailure | None] = {}
        stop = threading.Event()
        threads = [threading.Thread(target=self._prepare_slot, args=(slot, todo, stop, outcomes), daemon=True,
                                    name=f"local-prepare-{slot}") for slot in range(min(self.jobs, len(specs)))]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(POLL_S)  # (with a timeout, so that Ctrl-C reaches the caller's thread)
        finally:
            self._halt(threads, stop)
        return outcomes

    def submit(self, specs: Sequence[RunSpec], more: Callable[[RunRecord], Sequence[RunSpec]] | None = None,
               start: Callable[[RunSpec], RunSpec] | None = None,
               rank: Callable[[RunSpec], tuple] | None = None) -> Iterator[RunRecord]:
        """Run ``specs``, and the runs ``more(record)`` returns for each finished one (see the module docstring);
        ``start(spec)``, called in a worker slot's thread as a run is taken, gives the spec to run in its place;
        ``rank`` orders the runs the queue holds as equal (:class:`RunQueue`)."""
        pending = RunQueue(specs, gating_first=more is not None, rank=rank)
        if more is None:
            pending.close()  # nothing will be added: a slot with nothing left to take ends
        finished: queue.Queue = queue.Queue()
        stop = threading.Event()
        slots = self.jobs if more is not None else min(self.jobs, len(specs))
        threads = [threading.Thread(target=self._slot, args=(slot, pending, finished, stop, start), daemon=True,
                                    name=f"local-worker-{slot}") for slot in range(slots if specs else 0)]
        for thread in threads:
            thread.start()
        outstanding = len(specs)
        try:
            while outstanding:
                item = _get(finished, threads)
                if isinstance(item, BaseException):
                    raise item
                outstanding -= 1
                if more is not None:
                    added = list(more(item))
                    pending.add(added)
                    outstanding += len(added)
                if not outstanding:
                    pending.close()
                yield item
        finally:
            pending.close()
            if not outstanding:  # every slot is idle or about to see the closed queue: let them end by themselves
                for thread in threads:
                    thread.join(STOP_WAIT_S)
            self._halt(threads, stop)

    def _halt(self, threads: list[threading.Thread], stop: threading.Event) -> None:
        """Wait for the slot threads; if any is still busy (interrupted, or the caller stopped early), kill the
        workers first, so no job outlives the sweep (and no run is recorded as failed)."""
        if any(thread.is_alive() for thread in threads):
            stop.set()
            with self._lock:
                for worker in self._workers.values():
                    worker.signal_kill()
        for thread in threads:
            thread.join()
        if stop.is_set():  # (once no thread uses a worker's pipes any more)
            _kill_all(self._workers, self._lock)

    # -- one worker slot -----------------------------------------------------------------------------------------
    def _slot(self, slot: int, pending: RunQueue, finished: queue.Queue, stop: threading.Event,
              start: Callable[[RunSpec], RunSpec] | None = None) -> None:
        try:
            while not stop.is_set():
                worker = self._workers.get(slot)
                spec = pending.take(worker.stages if worker else [], stop)
                if spec is None:
                    return
                if start is not None:
                    spec = start(spec)
                record = self._run(slot, spec, stop)
                if record is not None:
                    finished.put(record)
        except BaseException as err:  # noqa: BLE001 - handed to submit(), which raises it in the caller's thread
            finished.put(err)

    def _prepare_slot(self, slot: int, todo: queue.SimpleQueue, stop: threading.Event,
                      outcomes: dict[str, StageFailure | None]) -> None:
        log = Path(self.options.results_dir) / ".logs" / f"worker-{slot}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        while not stop.is_set():
            try:
                spec = todo.get_nowait()
            except queue.Empty:
                return
            key = spec.stage_key("defended")
            try:
                worker = self._workers.get(slot) or self._start(slot, log)
            except Exception as err:  # noqa: BLE001 - a worker that cannot start fails the runs, which say why
                outcomes[key] = StageFailure(f"WorkerStart: cannot start a worker: {err}", bad_input=False)
                continue
            deadline = time.monotonic() + self.run_timeout if self.run_timeout else None
            answer = worker.run({"prepare": spec.to_json(), "log": str(log)}, deadline, stop)
            if isinstance(answer, dict):
                if answer.get("prepared"):
                    worker.held(key)
                    outcomes[key] = None  # (dict item assignment is atomic: slots share it safely)
                else:
                    outcomes[key] = StageFailure(answer.get("error") or "failed", bool(answer.get("bad_input")),
                                                 answer.get("message") or "", answer.get("type") or "")
            elif not stop.is_set():  # the worker died (or overran): this stage fails; a fresh worker takes the next
                with self._lock:
                    self._workers.pop(slot, None)
                code = worker.kill() if answer == TIMED_OUT else worker.reap()
                error = self._death_error(code, answer == TIMED_OUT, doing="building the defended stage")
                outcomes[key] = StageFailure(f"{error} (while preparing; log: {log})", bad_input=False)

    def _run(self, slot: int, spec: RunSpec, stop: threading.Event) -> RunRecord | None:
        run_json = clear_previous(spec, self.options)
        logs = Path(self.options.results_dir) / ".logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{spec.run_id}.log"
        started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        started = time.monotonic()
        log.write_bytes(b"")  # (an earlier attempt's log goes)
        worker = self._workers.get(slot)
        if worker is None:  # a fresh worker writes its startup into this run's log
            worker = self._start(slot, log)
        deadline = started + self.run_timeout if self.run_timeout else None
        answer = worker.run({"run_id": spec.run_id, "spec": spec.to_json(), "log": str(log)}, deadline, stop)
        if stop.is_set():
            return None
        if isinstance(answer, dict):
            worker.held(spec.stage_key("defended"))
            record = read_back(spec, run_json)
            if record is not None:
                return record
            error = f"RunMissing: the worker finished the run but {run_json} is not there"
            return self._record_death(spec, error, None, False, log, started_at, started)
        with self._lock:
            self._workers.pop(slot, None)
        code = worker.kill() if answer == TIMED_OUT else worker.reap()
        error = self._death_error(code, answer == TIMED_OUT)
        return self._record_death(spec, error, code, answer == TIMED_OUT, log, started_at, started)

    def _start(self, slot: int, log: Path) -> _Worker:
        """A fresh worker for ``slot``, its startup output going to ``log``."""
        worker = _Worker(self.options, self._env(slot), log)
        with self._lock:
            self._workers[slot] = worker
            self.workers_started += 1
        return worker

    def _env(self, slot: int) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
        if self.gpus and self.options.device in (None, "cuda"):
            env["CUDA_VISIBLE_DEVICES"] = str(slot % self.gpus)  # one GPU per worker slot
        return env

    def _death_error(self, code: int | None, timed_out: bool, doing: str = "the run") -> str:
        if timed_out:
            return f"RunTimeout: {doing} exceeded --run-timeout {self.run_timeout:g} s and was killed"
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"WorkerKilled: the worker process was killed by {name} during {doing}" + (
                " (out of memory?)" if name == "SIGKILL" else "")
        return f"WorkerExited: the worker process exited with code {code} during {doing}"

    def _record_death(self, spec: RunSpec, error: str, code: int | None, timed_out: bool, log: Path,
                      started_at: str, started: float) -> RunRecord:
        return record_death(spec, self.session, error, started_at=started_at, wall=time.monotonic() - started,
                            log=log, details={"exit_code": code, "timed_out": timed_out})


class _Worker:
    """One ``python -m bench.exec.worker --serve`` process: runs go in on one pipe, answers come back on another."""

    def __init__(self, options: WorkerOptions, env: dict[str, str], log: Path):
        jobs_read, jobs_write = os.pipe()
        results_read, results_write = os.pipe()
        try:
            with open(log, "ab") as out:  # appending: the worker's own appends to it must not be overwritten
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "bench.exec.worker", "--serve", str(jobs_read), str(results_write)],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                    pass_fds=(jobs_read, results_write))
        except BaseException:
            os.close(jobs_write)
            os.close(results_read)
            raise
        finally:
            os.close(jobs_read)
            os.close(results_write)
        self._jobs = os.fdopen(jobs_write, "w")
        self._results: int | None = results_read
        self._buffer = b""
        self.stages: list[str] = []
        """The defended stages this worker holds in memory (those of its most recent runs)."""
        self._send(options.to_json())

    def warm(self, tasks: list[str]) -> None:
        """Have the worker import these tasks' code before its first run (no answer comes back)."""
        self._send({"warm": tasks})

    def held(self, stage: str) -> None:
        self.stages = [*(s for s in self.stages if s != stage), stage][-SERVE_STAGES:]

    def run(self, job: dict[str, Any], deadline: float | None, stop: threading.Event) -> dict | str | None:
        """Send one run and wait for its answer: a dict; ``TIMED_OUT`` past ``deadline``; None if the worker died."""
        if not self._send(job):
            return None
        while b"\n" not in self._buffer:
            if stop.is_set() or self._results is None:  # (None: this worker was closed)
                return None
            if deadline is not None and time.monotonic() > deadline:
                return TIMED_OUT
            ready, _, _ = select.select([self._results], [], [], POLL_S)
            if ready:
                chunk = os.read(self._results, 65536)
                if not chunk:  # the worker's end closed: it died
                    return None
                self._buffer += chunk
            elif self.proc.poll() is not None:
                return None
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def _send(self, message: dict[str, Any]) -> bool:
        try:
            self._jobs.write(json.dumps(message) + "\n")
            self._jobs.flush()
            return True
        except (BrokenPipeError, ValueError):  # the worker died (or was stopped) already
            return False

    def reap(self) -> int | None:
        """The exit code of a worker that died."""
        try:
            return self.proc.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:  # its answer pipe closed yet it lives on: end it
            return self.kill()

    def signal_kill(self) -> None:
        """Kill the worker's process group (its own run, and any process the run started)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> int | None:
        self.signal_kill()
        code = self.proc.wait()
        self._close_pipes()
        return code

    def close(self) -> None:
        """Ask the worker to exit (it does once it sees the end of its jobs)."""
        self._close_pipes()

    def _close_pipes(self) -> None:
        try:
            self._jobs.close()
        except OSError:  # (a write the dead worker never read)
            pass
        if self._results is not None:  # closed once: a second close could hit a descriptor since reused
            os.close(self._results)
            self._results = None


def _get(finished: queue.Queue, threads: list[threading.Thread]):
    while True:  # a timeout keeps the caller's thread interruptible (Ctrl-C) while it waits
        try:
            return finished.get(timeout=POLL_S)
        except queue.Empty:
            if not any(thread.is_alive() for thread in threads) and finished.empty():
                return RuntimeError("the local executor's worker threads ended with runs left to do")


def _kill_all(workers: dict[int, _Worker], lock: threading.Lock) -> None:
    with lock:
        doomed = list(workers.values())
        workers.clear()
    for worker in doomed:
        worker.kill()


def _stop_all(workers: dict[int, _Worker], lock: threading.Lock) -> None:
    """Close every worker's jobs pipe, then kill those that have not exited within ``STOP_WAIT_S``."""
    with lock:
        idle = list(workers.values())
        workers.clear()
    for worker in idle:
        worker.close()
    deadline = time.monotonic() + STOP_WAIT_S
    for worker in idle:
        try:
            worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.kill()

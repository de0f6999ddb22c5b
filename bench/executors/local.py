"""``--executor local --jobs N``: runs in worker processes (``python -m bench.worker``), N workers at a time.

Isolation is the point: whatever a run does — raise, call ``os._exit``, exhaust memory and get killed, hang past
``--run-timeout`` — only that run fails. Its record holds the exit code (or the timeout) and the last lines of the
worker's log (``<results>/.logs/``); the other runs go on. A worker takes a batch of runs (mostly sharing a defended
stage) and runs them one after another with one session, so imports and stages are paid once per batch, not per run
(on the tiny tier a run can take less time than starting Python). When a worker dies, the run it was on is recorded
as failed and the rest of its batch goes to a fresh worker. Workers start in their own process group and exit when
their sweep dies, so an interrupted sweep leaves no orphans; the runs already written stay.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Iterator, Sequence

from bench.executors.shared import clear_previous, read_back, record_death
from bench.planner import RunRecord
from bench.spec import RunSpec
from bench.worker import WorkerOptions, batch_job_of

POLL_S = 0.2


class LocalExecutor:
    """Runs specs in worker processes, ``jobs`` at a time, in batches that share a stage (see the module docstring)."""

    def __init__(self, session, options: WorkerOptions, *, jobs: int, run_timeout: float | None = None,
                 gpus: int = 0):
        self.session, self.options, self.jobs, self.run_timeout, self.gpus = session, options, jobs, run_timeout, gpus
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._slots = list(range(jobs))

    def batches(self, specs: Sequence[RunSpec]) -> list[list[RunSpec]]:
        """About two batches per worker (load balance), each a contiguous slice of the runs ordered by defended
        stage, so that a batch's runs mostly share their stages."""
        ordered = sorted(specs, key=lambda spec: spec.stage_key("defended"))  # stable: a stage's runs keep their order
        size = max(1, math.ceil(len(ordered) / (2 * self.jobs)))
        return [ordered[i:i + size] for i in range(0, len(ordered), size)]

    def submit(self, specs: Sequence[RunSpec]) -> Iterator[RunRecord]:
        pool = ThreadPoolExecutor(max_workers=self.jobs)
        pending: set[Future] = set()
        try:
            pending = {pool.submit(self._batch, batch) for batch in self.batches(specs)}
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    records, rest = future.result()
                    yield from records
                    if rest:  # the worker died mid-batch: the runs after the failed one get a fresh worker
                        pending.add(pool.submit(self._batch, rest))
        finally:  # interrupted (or the caller stopped early): no worker outlives the sweep
            self._kill_all()
            pool.shutdown(wait=True, cancel_futures=True)

    # -- one batch -------------------------------------------------------------------------------------------
    def _batch(self, batch: list[RunSpec]) -> tuple[list[RunRecord], list[RunSpec]]:
        run_jsons = [clear_previous(spec, self.options) for spec in batch]
        logs = Path(self.options.results_dir) / ".logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{batch[0].run_id}+{len(batch) - 1}.log"
        with self._lock:
            slot = self._slots.pop(0)
        try:
            code, timed_out, started_at, progress_at = self._launch(batch, run_jsons, log_path, slot)
        finally:
            with self._lock:
                self._slots.append(slot)
        records = []
        for i, (spec, run_json) in enumerate(zip(batch, run_jsons)):
            record = read_back(spec, run_json)
            if record is None:  # the run the worker was on when it died; the rest go to a fresh worker
                records.append(self._death(spec, code, timed_out, log_path, started_at, progress_at))
                return records, batch[i + 1:]
            records.append(record)
        return records, []

    def _launch(self, batch, run_jsons, log_path: Path, slot: int):
        env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
        if self.gpus and self.options.device in (None, "cuda"):
            env["CUDA_VISIBLE_DEVICES"] = str(slot % self.gpus)  # one GPU per worker slot
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as job_file:
            json.dump(batch_job_of(batch, self.options), job_file)
        started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        progress_at = time.monotonic()  # when the current run started: the last completion, or the launch
        done, timed_out = 0, False
        try:
            with open(log_path, "w") as log:
                proc = subprocess.Popen([sys.executable, "-m", "bench.worker", job_file.name], stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                        start_new_session=True)
                with self._lock:
                    self._procs.add(proc)
                try:
                    while proc.poll() is None:
                        time.sleep(POLL_S)
                        while done < len(run_jsons) and run_jsons[done].is_file():
                            done, progress_at = done + 1, time.monotonic()
                            started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
                        if self.run_timeout and time.monotonic() - progress_at > self.run_timeout:
                            timed_out = True
                            _kill(proc)
                            proc.wait()
                finally:
                    with self._lock:
                        self._procs.discard(proc)
        finally:
            os.unlink(job_file.name)
        return proc.returncode, timed_out, started_at, progress_at

    def _death(self, spec: RunSpec, code: int, timed_out: bool, log_path: Path, started_at: str,
               progress_at: float) -> RunRecord:
        if timed_out:
            error = f"RunTimeout: the run exceeded --run-timeout {self.run_timeout:g} s and was killed"
        elif code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            error = f"WorkerKilled: the worker process was killed by {name}" + (
                " (out of memory?)" if name == "SIGKILL" else "")
        else:
            error = f"WorkerExited: the worker process exited with code {code} before recording the run"
        return record_death(spec, self.session, error, started_at=started_at, wall=time.monotonic() - progress_at,
                            log=log_path, details={"exit_code": code, "timed_out": timed_out})

    def _kill_all(self) -> None:
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            _kill(proc)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass

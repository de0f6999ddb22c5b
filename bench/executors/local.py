"""``--executor local --jobs N``: each run in its own worker process (``python -m bench.worker``), N at a time.

Isolation is the point: whatever a run does — raise, call ``os._exit``, exhaust memory and get killed, hang past
``--run-timeout`` — only that run fails. Its record holds the exit code (or the timeout) and the last lines of its
log (``<results>/.logs/<run_id>.log``); the other runs go on. Workers start in their own process group, so an
interrupted sweep takes its workers down with it, and the runs already written stay.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Iterator, Sequence

from bench.planner import RunRecord
from bench.results import RUN_JSON, read_run_json
from bench.spec import RunSpec
from bench.worker import WorkerOptions, job_of

LOG_LINES = 40
"""Lines of a dead worker's log kept in its failed run.json."""


class LocalExecutor:
    """Runs each spec in a fresh worker process, ``jobs`` at a time (see the module docstring)."""

    def __init__(self, session, options: WorkerOptions, *, jobs: int, run_timeout: float | None = None,
                 gpus: int = 0):
        self.session, self.options, self.jobs, self.run_timeout, self.gpus = session, options, jobs, run_timeout, gpus
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._slots = list(range(jobs))

    def submit(self, specs: Sequence[RunSpec]) -> Iterator[RunRecord]:
        pool = ThreadPoolExecutor(max_workers=self.jobs)
        try:
            futures = [pool.submit(self._one, spec) for spec in specs]
            for future in as_completed(futures):
                yield future.result()
        finally:  # interrupted (or the caller stopped early): no worker outlives the sweep
            self._kill_all()
            pool.shutdown(wait=True, cancel_futures=True)

    # -- one run ---------------------------------------------------------------------------------------------
    def _one(self, spec: RunSpec) -> RunRecord:
        results = Path(self.options.results_dir)
        run_json = results / spec.run_id / RUN_JSON
        run_json.unlink(missing_ok=True)  # a failed earlier attempt's record; this attempt writes its own
        logs = results / ".logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{spec.run_id}.log"
        with self._lock:
            slot = self._slots.pop(0)
        try:
            return self._launch(spec, run_json, log_path, slot)
        finally:
            with self._lock:
                self._slots.append(slot)

    def _launch(self, spec: RunSpec, run_json: Path, log_path: Path, slot: int) -> RunRecord:
        env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
        if self.gpus and self.options.device in (None, "cuda"):
            env["CUDA_VISIBLE_DEVICES"] = str(slot % self.gpus)  # one GPU per worker slot
        started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        start = time.perf_counter()
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as job_file:
            json.dump(job_of(spec, self.options), job_file)
        timed_out = False
        try:
            with open(log_path, "w") as log:
                proc = subprocess.Popen([sys.executable, "-m", "bench.worker", job_file.name], stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                        start_new_session=True)
                with self._lock:
                    self._procs.add(proc)
                try:
                    code = proc.wait(timeout=self.run_timeout)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    _kill(proc)
                    code = proc.wait()
                finally:
                    with self._lock:
                        self._procs.discard(proc)
        finally:
            os.unlink(job_file.name)
        if run_json.is_file() and not timed_out:
            info = read_run_json(run_json.parent)
            return RunRecord(spec, info.get("status", "failed"), info.get("summary") or {}, info.get("error"))
        return self._record_death(spec, code, timed_out, log_path, started_at, time.perf_counter() - start)

    def _record_death(self, spec: RunSpec, code: int, timed_out: bool, log_path: Path, started_at: str,
                      wall: float) -> RunRecord:
        from bench.runner import record_failure

        if timed_out:
            error = f"RunTimeout: the run exceeded --run-timeout {self.run_timeout:g} s and was killed"
        elif code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            error = f"WorkerKilled: the worker process was killed by {name}" + (
                " (out of memory?)" if name == "SIGKILL" else "")
        else:
            error = f"WorkerExited: the worker process exited with code {code} before recording the run"
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-LOG_LINES:]) \
            if log_path.is_file() else ""
        result = record_failure(spec, self.session, error, started_at=started_at, wall=wall,
                                details={"exit_code": code, "timed_out": timed_out, "log": str(log_path),
                                         "log_tail": tail})
        return RunRecord(spec, result.status, {}, error)

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

"""``--executor ray``: each run a Ray task, on a local Ray instance or a cluster (``--address``).

A task gets the run's job as a JSON string (never pickled models) and calls :func:`bench.exec.worker.execute_job`, which
writes the run directory itself; the driver reads ``run.json`` back, so the results folder must be on storage that
every node mounts at the same path. Tasks reserve ``--cpus-per-run``/``--gpus-per-run`` (Ray then sets
``CUDA_VISIBLE_DEVICES`` for each), run with ``max_calls=1`` — the worker process exits after its run, returning all
its memory, GPU memory included — and are never retried (a run that killed its worker would only do it again).

A task whose worker died (``os._exit``, a segfault, Ray's out-of-memory killer) or raised outside the run becomes a
``failed`` run with the error; runs that become ready as others finish (an LR search's full runs, refinement) are
submitted at once, with no wave barrier (``streams``); ``--run-timeout`` cancels a run that has been running longer
(counted from when it started, not from when it was queued) and fails it. Each run's output goes to ``<results>/.logs/<run_id>.log``.

It has no ``prepare`` (see :mod:`bench.exec.executors`): the sweep's own process builds the defended stages, one after
another, before their runs, which read them from the stage cache (shared by the nodes, or rebuilt on each).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from bench.core.spec import RunSpec
from bench.exec.shared import SHARED_STORAGE_GRACE_S, clear_previous, portable, read_back, record_death
from bench.exec.worker import WorkerOptions, job_of
from bench.plan.planner import RunRecord

POLL_S = 1.0
"""How often the driver wakes while it waits for results (to check for timed-out runs, and to stay interruptible)."""


def run_in_ray_worker(job_json: str, log_path: str) -> str:
    """The Ray task: one run, with this process's output (Python's and native code's) in the run's log."""
    from bench.exec.worker import execute_job, output_to

    os.environ["TQDM_DISABLE"] = "1"
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with output_to(log_path):  # its existence tells the driver the run has started (for --run-timeout)
        try:
            return execute_job(json.loads(job_json))
        except BaseException:
            traceback.print_exc()  # into the log, whose tail the failed run keeps
            raise


class RayExecutor:
    """Runs each spec as a Ray task (see the module docstring)."""

    def __init__(self, session, options: WorkerOptions, *, address: str | None = None, cpus_per_run: float = 1,
                 gpus_per_run: float | None = None, mem_gb: float | None = None, max_in_flight: int | None = None,
                 run_timeout: float | None = None, wants_gpu: bool = False):
        """``gpus_per_run`` None: 1 when ``wants_gpu`` (the real tier on CUDA) and the cluster has GPUs, else 0.
        ``max_in_flight`` None: every run is queued at once and Ray's scheduler places them."""
        self.session, self.options = session, portable(options)
        self.address, self.cpus_per_run, self.gpus_per_run = address, cpus_per_run, gpus_per_run
        self.mem_gb, self.max_in_flight, self.run_timeout = mem_gb, max_in_flight, run_timeout
        self.wants_gpu = wants_gpu

    streams = True
    computes_in_workers = True
    """The sweep's own process loads no model: the first task that needs a stage builds it under the shared cache's
    lock, the others wait and read it."""

    def submit(self, specs: Sequence[RunSpec],
               more: Callable[[RunRecord], Sequence[RunSpec]] | None = None) -> Iterator[RunRecord]:
        """Run ``specs`` as Ray tasks, and the runs ``more(record)`` returns as each one finishes."""
        import ray

        if not specs:
            return
        task = self._task(ray)
        queue = deque(specs)
        pending: dict = {}  # ObjectRef -> _Launch
        try:
            while queue or pending:
                while queue and (self.max_in_flight is None or len(pending) < self.max_in_flight):
                    launch = self._launch(task, queue.popleft())
                    pending[launch.ref] = launch
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                done = [self._collect(ray, pending.pop(ref)) for ref in ready]
                for ref in self._timed_out(pending.values()):
                    ray.cancel(ref, force=True)
                    done.append(self._record_timeout(pending.pop(ref)))
                for record in done:
                    if more is not None:
                        queue.extend(more(record))
                    yield record
        finally:  # interrupted (or the caller stopped early): no run outlives the sweep
            for ref in pending:
                ray.cancel(ref, force=True)

    # -- setup -------------------------------------------------------------------------------------------------
    def _task(self, ray):
        if not ray.is_initialized():  # a caller (a test, a notebook) may have started Ray already: join that one
            if self.address is None:
                ray.init(include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=self.address, log_to_driver=False)
        gpus = self.gpus_per_run
        if gpus is None:
            gpus = 1 if self.wants_gpu and ray.cluster_resources().get("GPU", 0) >= 1 else 0
        resources = {"num_cpus": self.cpus_per_run, "num_gpus": gpus}
        if self.mem_gb:
            resources["memory"] = int(self.mem_gb * 1024**3)
        return ray.remote(max_calls=1, max_retries=0, **resources)(run_in_ray_worker)

    def _launch(self, task, spec: RunSpec) -> _Launch:
        run_json = clear_previous(spec, self.options)
        log = Path(self.options.results_dir) / ".logs" / f"{spec.run_id}.log"
        log.unlink(missing_ok=True)
        ref = task.remote(json.dumps(job_of(spec, self.options)), str(log))
        return _Launch(spec, ref, run_json, log, time.perf_counter())

    # -- results -----------------------------------------------------------------------------------------------
    def _collect(self, ray, launch: _Launch) -> RunRecord:
        try:
            ray.get(launch.ref)
            error = None
        except ray.exceptions.RayError as err:
            error = _describe(ray, err)
        record = read_back(launch.spec, launch.run_json, wait=SHARED_STORAGE_GRACE_S if error is None else 0)
        if record is not None:
            return record
        if error is None:
            error = (f"RunMissing: the run finished on a Ray worker but {launch.run_json} is not there; the results "
                     f"folder must be on storage every node shares")
        return self._record(launch, error, timed_out=False)

    def _timed_out(self, launches) -> list:
        if not self.run_timeout:
            return []
        now = time.perf_counter()
        late = []
        for launch in launches:
            if launch.started is None and launch.log.exists():
                launch.started = now
            if launch.started is not None and now - launch.started > self.run_timeout:
                late.append(launch.ref)
        return late

    def _record_timeout(self, launch: _Launch) -> RunRecord:
        error = f"RunTimeout: the run exceeded --run-timeout {self.run_timeout:g} s and was cancelled"
        return self._record(launch, error, timed_out=True)

    def _record(self, launch: _Launch, error: str, *, timed_out: bool) -> RunRecord:
        return record_death(launch.spec, self.session, error, started_at=launch.started_at,
                            wall=time.perf_counter() - launch.submitted, log=launch.log,
                            details={"executor": "ray", "exit_code": None, "timed_out": timed_out})


class _Launch:
    """One submitted run: its task's reference and where its files go."""

    def __init__(self, spec: RunSpec, ref, run_json: Path, log: Path, submitted: float):
        self.spec, self.ref, self.run_json, self.log, self.submitted = spec, ref, run_json, log, submitted
        self.started: float | None = None
        self.started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _describe(ray, err: Exception) -> str:
    """One line for a task that ended in a Ray error."""
    if isinstance(err, ray.exceptions.RayTaskError):  # the job raised outside the run (a plugin failed to import…)
        cause = err.cause if err.cause is not None else err
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    if isinstance(err, ray.exceptions.OutOfMemoryError):
        return "WorkerKilled: Ray's memory monitor killed the worker (out of memory)"
    if isinstance(err, ray.exceptions.WorkerCrashedError):
        return "WorkerCrashed: the Ray worker process died before recording the run (os._exit, a crash or a kill)"
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first}".rstrip(": ")

"""``--executor slurm``: each wave of runs one Slurm job array, submitted with submitit.

Each array task gets its run's job as a JSON string and calls :func:`bench.exec.worker.execute_job`, which writes the run
directory itself; the driver polls the jobs and reads each ``run.json`` back as it appears. So the results folder
must be on storage that the submitting machine and every compute node mount at the same path (and the stage cache
should be, or each node builds its own stages). submitit's own files — the pickled calls, each task's stdout and
stderr (``<array id>_<index>_0_log.out``/``.err``) — go to ``<results>/.submitit/``.

A job that ends without writing its run (``os._exit``, a crash, Slurm's time limit or out-of-memory kill, a
cancellation) becomes a ``failed`` run with the job's state and the last lines of its log. Tests use submitit's
``local`` cluster, which runs the same jobs as local processes.

It has no ``prepare`` (see :mod:`bench.exec.executors`): the sweep's own process builds a wave's defended stages, one
after another, before the job array is submitted.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from bench.core.spec import RunSpec
from bench.errors import ConfigError
from bench.exec.shared import SHARED_STORAGE_GRACE_S, clear_previous, portable, read_back, record_death
from bench.exec.worker import WorkerOptions, job_of
from bench.plan.planner import RunRecord

POLL_S = 1.0
"""How often the driver looks for finished jobs (submitit itself rate-limits its ``sacct`` calls)."""

DEFAULT_TIME_LIMIT_MIN = 120
"""Slurm time limit of a run when neither ``--time-limit`` nor ``--run-timeout`` is given (submitit's own default,
5 minutes, would kill most real-tier runs)."""


def run_in_slurm_job(job_json: str) -> str:
    """The array task: one run."""
    import os

    from bench.exec.worker import execute_job

    os.environ["TQDM_DISABLE"] = "1"
    return execute_job(json.loads(job_json))


class SlurmExecutor:
    """Runs each wave of specs as one submitit job array (see the module docstring)."""

    computes_in_workers = True
    """The sweep's own process (often a login node) loads no model: the first job that needs a stage builds it
    under the shared cache's lock, the others wait and read it."""

    def __init__(self, session, options: WorkerOptions, *, cluster: str = "slurm", partition: str | None = None,
                 gpus_per_run: int = 0, cpus_per_run: int = 1, time_limit: float = DEFAULT_TIME_LIMIT_MIN,
                 mem_gb: float | None = None, slurm_params: Mapping[str, str] | None = None,
                 max_in_flight: int | None = None):
        """``cluster``: ``"slurm"``, or ``"local"`` to run the jobs as local processes (tests).
        ``time_limit`` in minutes; ``max_in_flight`` caps the array's running tasks (Slurm's ``%N``)."""
        self.session, self.options, self.cluster = session, portable(options), cluster
        self.partition, self.gpus_per_run, self.cpus_per_run = partition, gpus_per_run, cpus_per_run
        self.time_limit, self.mem_gb, self.max_in_flight = time_limit, mem_gb, max_in_flight
        self.slurm_params = dict(slurm_params or {})
        self.folder = Path(self.options.results_dir) / ".submitit"

    def submit(self, specs: Sequence[RunSpec]) -> Iterator[RunRecord]:
        if not specs:
            return
        run_jsons = [clear_previous(spec, self.options) for spec in specs]
        started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        start = time.perf_counter()
        jobs = self._executor().map_array(run_in_slurm_job, [json.dumps(job_of(s, self.options)) for s in specs])
        pending = dict(enumerate(zip(specs, jobs, run_jsons)))
        try:
            while pending:
                for key, (spec, job, run_json) in list(pending.items()):
                    if job.done():
                        del pending[key]
                        yield self._collect(spec, job, run_json, started_at, time.perf_counter() - start)
                if pending:
                    time.sleep(POLL_S)
        finally:  # interrupted (or the caller stopped early): cancel what is still queued or running
            for _, job, _ in pending.values():
                try:
                    job.cancel(check=False)
                except OSError:  # scancel missing or failing must not hide the interruption
                    pass

    def _executor(self):
        import submitit

        try:
            executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        except RuntimeError as err:  # submitit found no srun: this machine cannot submit to Slurm
            raise ConfigError(f"--executor slurm: {err}") from None
        params = {"name": "bench", "nodes": 1, "tasks_per_node": 1, "timeout_min": math.ceil(self.time_limit),
                  "gpus_per_node": self.gpus_per_run, "cpus_per_task": self.cpus_per_run}
        if self.mem_gb:
            params["mem_gb"] = self.mem_gb
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.slurm_params:
            params["slurm_additional_parameters"] = self.slurm_params
        if self.max_in_flight:
            params["slurm_array_parallelism"] = self.max_in_flight
        executor.update_parameters(**params)
        return executor

    def _collect(self, spec: RunSpec, job, run_json: Path, started_at: str, wall: float) -> RunRecord:
        outcome, trace = _outcome(job)
        record = read_back(spec, run_json, wait=SHARED_STORAGE_GRACE_S if outcome == "success" else 0)
        if record is not None:
            return record
        state = _state(job)
        if outcome == "success":
            error = (f"RunMissing: the run finished in Slurm job {job.job_id} but {run_json} is not there; the "
                     f"results folder must be on storage every node shares")
        elif outcome == "error":  # the job raised outside the run (a plugin failed to import…)
            error = ([line for line in trace.strip().splitlines() if line.strip()] or ["JobFailed"])[-1]
        elif state == "TIMEOUT":
            error = (f"RunTimeout: the run exceeded the Slurm time limit ({math.ceil(self.time_limit)} min) and was "
                     f"killed")
        elif state == "OUT_OF_MEMORY":
            error = "WorkerKilled: Slurm killed the job (out of memory)"
        else:
            error = (f"JobDied: job {job.job_id} ended ({state}) before recording the run (os._exit, a crash or a "
                     f"kill; see its log)")
        stderr, stdout = Path(job.paths.stderr), Path(job.paths.stdout)
        log = stderr if stderr.is_file() and stderr.stat().st_size else stdout
        return record_death(spec, self.session, error, started_at=started_at, wall=wall, log=log,
                            details={"executor": "slurm", "job_id": str(job.job_id), "state": state,
                                     "exit_code": None, "timed_out": state == "TIMEOUT"})


def _outcome(job) -> tuple[str | None, str]:
    """("success" | "error", the result or the traceback) from the job's result file; (None, "") without one."""
    from submitit.core.utils import pickle_load

    path = Path(job.paths.result_pickle)
    if not path.is_file():
        return None, ""
    try:
        outcome, value = pickle_load(path)
    except Exception:  # noqa: BLE001 - a truncated result file is a job that died while writing it
        return None, ""
    return outcome, value if isinstance(value, str) else ""


def _state(job) -> str:
    try:
        return str(job.state)
    except Exception:  # noqa: BLE001 - sacct unavailable or slow: the state is only for the message
        return "UNKNOWN"

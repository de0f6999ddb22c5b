"""Executors: what runs a wave of :class:`~bench.spec.RunSpec` objects. The planner decides *what* runs; these decide
*where*.

An executor has one method, ``submit(specs) -> iterator of RunRecord``, yielding each run's record as it finishes
(in any order). Every executor writes the same results layout — one directory per run, written atomically by the run
itself — so a sweep can move between them and resume. Built in:

* ``inprocess`` (:class:`InProcessExecutor`): runs one after another in this process, sharing the session's stages;
* ``local`` (:class:`LocalExecutor`): ``--jobs N`` worker processes on this machine, one run each, with isolation
  (a crash, ``os._exit``, out-of-memory kill or ``--run-timeout`` becomes a failed run with its exit code and log);
* ``ray`` and ``slurm``: the same worker function as Ray tasks or submitit job arrays (optional extras).
"""

from __future__ import annotations

from typing import Iterator, Protocol, Sequence

from bench.planner import RunRecord
from bench.spec import RunSpec


class Executor(Protocol):
    def submit(self, specs: Sequence[RunSpec]) -> Iterator[RunRecord]:
        """Run every spec; yield each one's record as it finishes."""


class InProcessExecutor:
    """Runs specs one after another in this process through ``session`` (stages shared in memory)."""

    def __init__(self, session):
        self.session = session

    def submit(self, specs: Sequence[RunSpec]) -> Iterator[RunRecord]:
        from bench.runner import run

        for spec in specs:
            result = run(spec, self.session)
            yield RunRecord(spec, result.status, result.summary, result.error)


EXECUTORS = ("local", "ray", "slurm")


def auto_jobs(tier: str) -> int:
    """``--jobs auto``: one run per core on the tiny tier, one per GPU on the real tier (one when there is none)."""
    import os

    if tier == "tiny":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    import torch

    return max(1, torch.cuda.device_count())


def make_executor(name: str, session, options, *, tier: str, jobs: int | str = "auto", isolation: str | None = None,
                  run_timeout: float | None = None) -> Executor:
    """The executor ``bench run``/``bench sweep`` use: ``local`` (in this process, or ``jobs`` worker processes),
    ``ray`` or ``slurm``. ``options`` is the :class:`bench.worker.WorkerOptions` every worker gets."""
    from bench.errors import ConfigError

    if name not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
    n = auto_jobs(tier) if jobs == "auto" else int(jobs)
    if n < 1:
        raise ConfigError(f"--jobs must be at least 1 (or auto), got {jobs}")
    if run_timeout is not None and run_timeout <= 0:
        raise ConfigError(f"--run-timeout must be positive, got {run_timeout}")
    if name == "local":
        isolation = isolation or ("subprocess" if n > 1 or run_timeout else "none")
        if isolation not in ("none", "subprocess"):
            raise ConfigError(f"--isolation must be none or subprocess, got {isolation!r}")
        if isolation == "none":
            if n > 1 or run_timeout:
                raise ConfigError("--jobs > 1 and --run-timeout need --isolation subprocess")
            return InProcessExecutor(session)
        from bench.executors.local import LocalExecutor

        gpus = auto_jobs(tier) if tier != "tiny" and options.device in (None, "cuda") else 0
        return LocalExecutor(session, options, jobs=n, run_timeout=run_timeout, gpus=gpus)
    raise ConfigError(f"--executor {name} is not available yet")

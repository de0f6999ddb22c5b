"""Executors: what runs a wave of :class:`~bench.core.spec.RunSpec` objects. The planner decides *what* runs; these decide
*where*.

An executor has one method, ``submit(specs) -> iterator of RunRecord``, yielding each run's record as it finishes
(in any order). Every executor writes the same results layout — one directory per run, written atomically by the run
itself — so a sweep can move between them and resume. Built in:

* ``inprocess`` (:class:`InProcessExecutor`): runs one after another in this process, sharing the session's stages;
* ``local`` (:class:`LocalExecutor`): ``--jobs N`` long-lived worker processes on this machine, taking run after
  run, each isolated (a crash, ``os._exit``, out-of-memory kill or ``--run-timeout`` becomes a failed run with its
  exit code and log);
* ``ray`` (:class:`~bench.exec.ray.RayExecutor`) and ``slurm`` (:class:`~bench.exec.slurm.SlurmExecutor`):
  the same worker function as Ray tasks or submitit job arrays (optional extras ``[ray]`` and ``[slurm]``), placed
  by :class:`EngineOptions`.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from bench.config import check
from bench.core.spec import RunSpec
from bench.errors import ConfigError
from bench.plan.planner import RunRecord


class Executor(Protocol):
    def submit(self, specs: Sequence[RunSpec]) -> Iterator[RunRecord]:
        """Run every spec; yield each one's record as it finishes."""

    # Optional: ``streams = True`` and ``submit(specs, more=callback)``: before each record is yielded,
    # ``callback(record)`` returns runs that became ready because of it (an LR search's full runs, refinement), which
    # the executor runs in the same call (the in-process and local executors; the caller then has no wave barrier).

    # Optional: ``starts = True`` and ``submit(specs, more=..., start=callback, rank=callback)``: ``start(spec)``
    # returns the spec to run in its place, called as the run starts (bound pruning caps it then, :mod:`bench.run.pruning`,
    # with the bound known at that moment rather than when it was queued); among runs otherwise equal, the one with
    # the lowest ``rank(spec)`` at that moment starts first (likely fast attacks, which set the bounds).

    # Optional: ``prestart(specs)``, a hint that ``specs`` come next, called before the caller prepares their stages
    # (the local executor starts its workers then, so their startup overlaps the preparation).
    # Optional: ``prepare(specs) -> set of stage keys``, called next: build (or find) the defended stages ``specs`` need
    # in the on-disk stage cache, in the executor's own processes and in parallel, and return the keys of those it
    # prepared when done; the caller builds (and reports) the others itself. The local executor implements it;
    # without it the caller builds them all.


class InProcessExecutor:
    """Runs specs one after another in this process through ``session`` (stages shared in memory)."""

    streams = True
    starts = True

    def __init__(self, session):
        self.session = session

    def submit(self, specs: Sequence[RunSpec], more: Callable[[RunRecord], Sequence[RunSpec]] | None = None,
               start: Callable[[RunSpec], RunSpec] | None = None,
               rank: Callable[[RunSpec], tuple] | None = None) -> Iterator[RunRecord]:
        from bench.run.runner import run

        todo = collections.deque(specs)
        while todo:
            if rank is not None:  # the lowest rank now, the earliest among equals
                todo.rotate(-min(range(len(todo)), key=lambda i: (rank(todo[i]), i)))
            spec = todo.popleft()
            if start is not None:
                spec = start(spec)
            result = run(spec, self.session)
            record = RunRecord(spec, result.status, result.summary, result.error)
            if more is not None:
                todo.extend(more(record))
            yield record


EXECUTORS = ("local", "ray", "slurm")

INSTALL_HINT = "pip install 'training-resistance-bench[{extra}]'"


@dataclass(frozen=True)
class EngineOptions:
    """Where and with what the ``ray`` and ``slurm`` executors place each run (``bench run --address`` etc.)."""

    address: str | None = None
    """ray: the cluster to join (``auto``: the one ``ray start`` runs on this machine; ``ray://host:10001``: a
    remote one); None starts a local Ray instance for the sweep."""
    partition: str | None = None
    """slurm: the partition to queue the runs in (None: the cluster's default)."""
    gpus_per_run: float | None = None
    """GPUs each run reserves (None: 1 on the real tier with a CUDA device — with Ray, only when the cluster has
    GPUs — else 0)."""
    cpus_per_run: float | None = None
    """CPU cores each run reserves (None: 1)."""
    time_limit: float | None = None
    """slurm: each run's time limit in minutes (None: ``--run-timeout`` rounded up to minutes, else 120)."""
    mem_gb: float | None = None
    """Memory each run reserves, in GB (None: the engine's default)."""
    slurm_params: tuple[tuple[str, str], ...] = ()
    """slurm: extra ``#SBATCH`` options as (key, value) pairs, e.g. (("account", "lab"), ("qos", "high"))."""

    def __post_init__(self):
        check(self.address is None or bool(self.address.strip()), "--address must not be empty")
        check(self.gpus_per_run is None or self.gpus_per_run >= 0,
              f"--gpus-per-run must be at least 0, got {self.gpus_per_run}")
        for flag, value in (("--cpus-per-run", self.cpus_per_run), ("--time-limit", self.time_limit),
                            ("--mem", self.mem_gb)):
            check(value is None or value > 0, f"{flag} must be positive, got {value}")

    def used(self) -> dict[str, str]:
        """The options set, by the command-line flag that sets them."""
        flags = {"address": "--address", "partition": "--partition", "gpus_per_run": "--gpus-per-run",
                 "cpus_per_run": "--cpus-per-run", "time_limit": "--time-limit", "mem_gb": "--mem",
                 "slurm_params": "--slurm-param"}
        return {name: flag for name, flag in flags.items() if getattr(self, name) not in (None, ())}


APPLIES_TO = {"address": ("ray",), "partition": ("slurm",), "gpus_per_run": ("ray", "slurm"),
              "cpus_per_run": ("ray", "slurm"), "time_limit": ("slurm",), "mem_gb": ("ray", "slurm"),
              "slurm_params": ("slurm",)}
"""Which executors each engine option means something to (any other use is an error, not silently ignored)."""


def auto_jobs(tier: str) -> int:
    """``--jobs auto``: one run per core on the tiny tier, one per GPU on the real tier (one when there is none)."""
    import os

    if tier == "tiny":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    import torch

    return max(1, torch.cuda.device_count())


def make_executor(name: str, session, options, *, tier: str, jobs: int | str = "auto", isolation: str | None = None,
                  run_timeout: float | None = None, engine: EngineOptions | None = None) -> Executor:
    """The executor ``bench run``/``bench sweep`` use: ``local`` (in this process, or ``jobs`` worker processes),
    ``ray`` or ``slurm`` (``jobs``: the most runs in flight; auto leaves it to the engine's scheduler).
    ``options`` is the :class:`bench.exec.worker.WorkerOptions` every worker gets."""
    engine = engine or EngineOptions()
    if name not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
    for field_name, flag in engine.used().items():
        if name not in APPLIES_TO[field_name]:
            raise ConfigError(f"{flag} applies to --executor {' or '.join(APPLIES_TO[field_name])}, not {name}")
    n = None if jobs == "auto" and name != "local" else auto_jobs(tier) if jobs == "auto" else _jobs(jobs)
    if n is not None and n < 1:
        raise ConfigError(f"--jobs must be at least 1 (or auto), got {jobs}")
    if run_timeout is not None and run_timeout <= 0:
        raise ConfigError(f"--run-timeout must be positive, got {run_timeout}")
    if name == "local":
        assert n is not None  # the local executor always resolves its job count
        isolation = isolation or ("subprocess" if n > 1 or run_timeout else "none")
        if isolation not in ("none", "subprocess"):
            raise ConfigError(f"--isolation must be none or subprocess, got {isolation!r}")
        if isolation == "none":
            if n > 1 or run_timeout:
                raise ConfigError("--jobs > 1 and --run-timeout need --isolation subprocess")
            return InProcessExecutor(session)
        from bench.exec.local import LocalExecutor

        gpus = auto_jobs(tier) if tier != "tiny" and options.device in (None, "cuda") else 0
        return LocalExecutor(session, options, jobs=n, run_timeout=run_timeout, gpus=gpus)
    if isolation == "none":
        raise ConfigError(f"--executor {name} always isolates runs (each in its own worker); drop --isolation none")
    wants_gpu = tier != "tiny" and (options.device is None or options.device.startswith("cuda"))
    return _engine_executor(name, session, options, engine, max_in_flight=n, run_timeout=run_timeout,
                            wants_gpu=wants_gpu)


def _jobs(jobs: int | str) -> int:
    try:
        return int(jobs)
    except ValueError:
        raise ConfigError(f"--jobs must be a number or auto, got {jobs!r}") from None


def _engine_executor(name: str, session, options, engine: EngineOptions, *, max_in_flight: int | None,
                     run_timeout: float | None, wants_gpu: bool) -> Executor:
    """A :class:`~bench.exec.ray.RayExecutor` or :class:`~bench.exec.slurm.SlurmExecutor`; a missing
    optional dependency is a one-line error naming the extra that installs it."""
    import importlib.util

    module = {"ray": "ray", "slurm": "submitit"}[name]
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"--executor {name} needs {module}, which is not installed: "
                          f"{INSTALL_HINT.format(extra=name)}")
    cpus = engine.cpus_per_run or 1
    if name == "ray":
        from bench.exec.ray import RayExecutor

        return RayExecutor(session, options, address=engine.address, cpus_per_run=cpus,
                           gpus_per_run=engine.gpus_per_run, mem_gb=engine.mem_gb, max_in_flight=max_in_flight,
                           run_timeout=run_timeout, wants_gpu=wants_gpu)
    import shutil

    from bench.exec.slurm import DEFAULT_TIME_LIMIT_MIN, SlurmExecutor

    if shutil.which("sbatch") is None:  # (submitit would quietly fall back to running every job on this machine)
        raise ConfigError("--executor slurm needs Slurm's sbatch on PATH: run bench on a machine that submits to the "
                          "cluster (a login node)")
    time_limit = engine.time_limit or (run_timeout / 60 if run_timeout else DEFAULT_TIME_LIMIT_MIN)
    gpus = engine.gpus_per_run if engine.gpus_per_run is not None else int(wants_gpu)
    return SlurmExecutor(session, options, partition=engine.partition, gpus_per_run=int(math.ceil(gpus)),
                         cpus_per_run=int(math.ceil(cpus)), time_limit=time_limit, mem_gb=engine.mem_gb,
                         slurm_params=dict(engine.slurm_params), max_in_flight=max_in_flight)

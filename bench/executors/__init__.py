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

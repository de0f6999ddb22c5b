"""Running a planned sweep (one :func:`bench.suite.run_suite` call per request) and the run states a dry run shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from bench.errors import BenchError, DataError
from bench.executors import Executor
from bench.results import RUN_JSON, completed_run_ids, read_run_json
from bench.runner import Session
from bench.suite import RunRecord, SuiteReport, run_suite
from bench.sweep import Plan, Planned


@dataclass
class SweepReport:
    """The suites of a sweep, and the requests that stopped on bad input found while building their stages."""

    suites: list[SuiteReport] = field(default_factory=list)
    stopped: list[tuple[Planned, BenchError]] = field(default_factory=list)

    @property
    def records(self) -> list[RunRecord]:
        """Every run once (a run shared by two suites, e.g. a resumed baseline, counts once)."""
        unique: dict[str, RunRecord] = {}
        for suite in self.suites:
            for record in suite.records:
                unique.setdefault(record.spec.run_id, record)
        return list(unique.values())

    @property
    def run_ids(self) -> list[str]:
        return [r.spec.run_id for r in self.records]

    @property
    def failed(self) -> list[RunRecord]:
        return [r for r in self.records if r.status != "success"]


def run_sweep(
    plan: Plan,
    make_session: Callable[[], Session],
    *,
    on_suite: Callable[[int, Planned], None] | None = None,
    make_executor: Callable[[Session, str], Executor] | None = None,
) -> SweepReport:
    """Run every request of ``plan`` in order through ``run_suite(request, session, resume=True)``.

    Runs already completed in the results directory (by an earlier sweep, or an earlier request of this one) are
    not run again. Consecutive requests of one task (same task args, tier and model) share a session, so its
    released and defended stages are built once; a new task gets a fresh session and the previous one's models are
    released. ``make_executor(session, tier)`` gives each request its executor (default: in this process). A request that stops on bad input found while building (e.g. a defense config that matches no layer
    of this task) is recorded in ``stopped`` and the sweep goes on with the next.
    """
    report = SweepReport()
    session, key = None, None
    for index, planned in enumerate(plan.suites):
        request = planned.request
        task_key = (request.task, sorted(request.task_args.items()), request.tier, request.model)
        if session is None or task_key != key:
            session, key = make_session(), task_key
        if on_suite is not None:
            on_suite(index, planned)
        try:
            executor = make_executor(session, request.tier) if make_executor is not None else None
            report.suites.append(run_suite(request, session, executor=executor, resume=True))
        except BenchError as err:
            report.stopped.append((planned, err))
    return report


def run_states(results_dir: str | Path, run_ids: Iterable[str]) -> dict[str, str]:
    """``done`` (completed: a sweep skips it), ``failed`` (recorded as failed: a sweep runs it again) or ``todo``."""
    results_dir = Path(results_dir)
    done = completed_run_ids(results_dir)
    states = {}
    for run_id in run_ids:
        if run_id in done:
            states[run_id] = "done"
        elif (results_dir / run_id / RUN_JSON).is_file() and _recorded_failed(results_dir / run_id):
            states[run_id] = "failed"
        else:
            states[run_id] = "todo"
    return states


def _recorded_failed(directory: Path) -> bool:
    try:
        return read_run_json(directory).get("status") != "success"
    except DataError:
        return False


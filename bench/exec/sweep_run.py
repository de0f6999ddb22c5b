"""Running a planned sweep (one :func:`bench.exec.suite_run.run_suites` pool per task) and the run states a dry run shows."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.core.spec import RunSpec
from bench.errors import BenchError, DataError
from bench.exec.executors import Executor
from bench.exec.suite_run import SuiteReport, run_suites
from bench.plan.planner import RunRecord
from bench.plan.sweep import Plan, Planned
from bench.run.results import RUN_JSON, completed_run_ids, read_run_json
from bench.run.stages import Session
from bench.run.summary import RunSummary


@dataclass
class SweepReport:
    """The suites of a sweep, and the requests that stopped on bad input found while building their stages."""

    suites: list[SuiteReport] = field(default_factory=list)
    stopped: list[tuple[Planned, BenchError]] = field(default_factory=list)

    @property
    def rerun(self) -> dict[str, list[str]]:
        """Completed runs run again because their code changed, with the reasons."""
        return {run_id: why for suite in self.suites for run_id, why in suite.rerun.items()}

    @property
    def kept_stale(self) -> dict[str, list[str]]:
        """Completed runs kept (``allow_stale``) although their code changed, with the reasons."""
        return {run_id: why for suite in self.suites for run_id, why in suite.kept_stale.items()}

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
    allow_stale: bool = False,
) -> SweepReport:
    """Run every request of ``plan``; runs already completed in the results directory (by an earlier sweep, or an
    earlier request of this one) are not run again.

    Consecutive requests of one task (same task args, tier and model) run together as one pool of runs
    (:func:`bench.exec.suite_run.run_suites`), on one session and one executor: their released and defended stages are built
    once, their shared runs (the ``none`` baseline) run once, and no worker waits for one suite to end before the
    next starts. A new task gets a fresh session and the previous one's models are released. ``make_executor(session,
    tier)`` gives each task its executor (default: in this process); ``on_suite(index, planned)`` is called for each
    request as its task starts. A request that stops on bad input found while building (e.g. a defense config that
    matches no layer of this task) is recorded in ``stopped`` and the others go on. A completed run whose code
    changed runs again, or with ``allow_stale`` is kept and marked stale (:func:`bench.exec.suite_run.run_suites`).
    """
    report = SweepReport()
    for group in _task_groups(plan):
        session = make_session()
        if on_suite is not None:
            for index, planned in group:
                on_suite(index, planned)
        try:
            executor = make_executor(session, group[0][1].request.tier) if make_executor is not None else None
            outcomes = run_suites([planned.request for _, planned in group], session, executor=executor, resume=True,
                                   allow_stale=allow_stale)
        except BenchError as err:  # (no executor, or the results folder is unusable: the group's requests stop)
            outcomes = [err] * len(group)
        for (_, planned), outcome in zip(group, outcomes):
            if isinstance(outcome, BenchError):
                report.stopped.append((planned, outcome))
            else:
                report.suites.append(outcome)
    return report


def _task_groups(plan: Plan) -> list[list[tuple[int, Planned]]]:
    """The plan's requests as (index, planned), consecutive requests of one task (same args, tier, model) together."""
    groups: list[list[tuple[int, Planned]]] = []
    for index, planned in enumerate(plan.suites):
        if groups and _task_key(groups[-1][0][1]) == _task_key(planned):
            groups[-1].append((index, planned))
        else:
            groups.append([(index, planned)])
    return groups


def _task_key(planned: Planned) -> tuple:
    request = planned.request
    return request.task, sorted(request.task_args.items()), request.tier, request.model


def sweep_run_ids(plan: Plan, results_dir: str | Path) -> tuple[list[str], int]:
    """The runs of ``plan`` recorded in ``results_dir`` (completed or failed), and how many of the runs known from
    those are not there yet. Replays the planner on the recorded results, so it finds the LR search's full runs and
    the refinement points a finished sweep chose, and nothing else the folder holds (another sweep's runs)."""
    from bench.plan.planner import Planner

    results_dir = Path(results_dir)
    found: list[str] = []
    missing = 0
    for group in _task_groups(plan):
        planner = Planner(*(planned.request for _, planned in group))
        ready = planner.start()
        while ready:
            family, spec = ready.pop(0)
            try:
                info = read_run_json(results_dir / spec.run_id) if (results_dir / spec.run_id / RUN_JSON).is_file() \
                    else None
            except DataError:
                info = None
            if info is None:
                missing += 1
                continue
            found.append(spec.run_id)
            ready += planner.feed(RunRecord(spec, info.get("status", "failed"), RunSummary.from_json(info.get("summary")),
                                            info.get("error"), True, family))
    return found, missing


def run_states(results_dir: str | Path, run_ids: Iterable[str], specs: Mapping[str, RunSpec] = {}, *,
               exhaustive: bool = False) -> dict[str, str]:
    """``done`` (completed: a sweep skips it), ``stale`` (completed by code other than the current: a sweep runs it
    again, unless --allow-stale; known for the runs whose spec is in ``specs``), ``pruned`` (with ``exhaustive``
    only: completed but stopped at the bound, so an exhaustive sweep runs it in full), ``failed`` (recorded as
    failed: a sweep runs it again) or ``todo``."""
    from bench.run.fingerprint import changes, code_fingerprint
    from bench.run.pruning import pruned

    results_dir = Path(results_dir)
    done = completed_run_ids(results_dir)
    states = {}
    for run_id in run_ids:
        if run_id in done and run_id in specs and changes(read_run_json(results_dir / run_id).get("fingerprint"),
                                                          code_fingerprint(specs[run_id])):
            states[run_id] = "stale"
        elif run_id in done and exhaustive and pruned(RunSummary.from_json(read_run_json(results_dir / run_id).get("summary"))):
            states[run_id] = "pruned"
        elif run_id in done:
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


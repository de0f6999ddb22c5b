"""Running a defense against an attack suite: the planner's waves through an executor, a baseline, seeds, resume.

``run_suite`` turns a :class:`SuiteRequest` into waves of :class:`~bench.spec.RunSpec` objects with the pure
:class:`~bench.planner.Planner` (LR grids, LR search, half-decade refinement) and hands each wave to an
:class:`~bench.executors.Executor` (in this process by default; local worker processes, Ray or Slurm at scale).
Runs already completed in the results directory are skipped (resume) and cost nothing: stages are built only for
runs that still have work. An executor with worker processes of its own may build a wave's defended stages there
first, in parallel (``prepare``); this process then reads them from the on-disk stage cache. Failed runs are recorded
and the suite goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from bench.errors import BenchError
from bench.executors import Executor, InProcessExecutor
from bench.planner import (  # noqa: F401 - re-exported: the suite's public vocabulary
    Planner, RunRecord, attack_sweeps, best_probe_lrs, decades, defenses_of, probe_score, refinement, spec_of,
)
from bench.results import check_writable, completed_run_ids, read_run_json
from bench.runner import Session
from bench.spec import RunSpec


@dataclass
class SuiteReport:
    records: list[RunRecord] = field(default_factory=list)

    @property
    def failed(self) -> list[RunRecord]:
        return [r for r in self.records if r.status != "success"]

    @property
    def run_ids(self) -> list[str]:
        return [r.spec.run_id for r in self.records]


@dataclass(frozen=True)
class SuiteRequest:
    """What to run: one defense (plus the ``none`` baseline) on one task, over seeds, against an attack or the suite."""

    task: str
    defense: str
    tier: str = "tiny"
    model: str | None = None
    seeds: Sequence[int] = (0,)
    attack: str | None = None
    task_args: Mapping[str, Any] = field(default_factory=dict)
    defense_args: Mapping[str, Any] = field(default_factory=dict)
    attack_args: Mapping[str, Any] = field(default_factory=dict)
    baseline: bool = True
    refine: bool = True
    search: str | None = None
    """Override every family's LR strategy ("grid" or "lr-search"); None keeps the task's choice."""


def validate_request(request: SuiteRequest) -> list[RunSpec]:
    """Build the first spec of every sweep, defense and seed, so configuration errors surface before any run."""
    specs = []
    for defense, defense_args in defenses_of(request):
        for sweep in attack_sweeps(request):
            args = dict(sweep.args)
            if sweep.lrs:
                args["lr"] = sweep.lrs[0]
            for seed in request.seeds:
                specs.append(spec_of(request, defense, defense_args, sweep.attack, args, seed=seed))
    return specs


def run_suite(
    request: SuiteRequest,
    session: Session,
    *,
    executor: Executor | None = None,
    resume: bool = True,
    on_run: Callable[[RunRecord], None] | None = None,
) -> SuiteReport:
    """Run every (defense, seed, sweep point) of ``request``; see the module docstring."""
    from tqdm.auto import tqdm

    validate_request(request)
    check_writable(session.results_dir)
    executor = executor or InProcessExecutor(session)
    planner = Planner(request)
    done = completed_run_ids(session.results_dir) if resume else set()
    report = SuiteReport()
    bar = tqdm(total=planner.estimate(), desc=f"{request.task} runs", unit="run", disable=not session.progress)

    def finished(record: RunRecord) -> None:
        report.records.append(record)
        bar.update(1)
        bar.set_postfix_str(f"{record.spec.defense_label} {record.spec.attack_label}"[:60])
        if on_run is not None:
            on_run(record)

    try:
        while not planner.done:
            records: dict[str, RunRecord] = {}
            todo: list[RunSpec] = []
            family_of: dict[str, str] = {}
            for family, spec in planner.wave():
                family_of[spec.run_id] = family
                if spec.run_id in done:
                    info = read_run_json(session.results_dir / spec.run_id)
                    records[spec.run_id] = RunRecord(spec, "success", info.get("summary", {}), None, True, family)
                    finished(records[spec.run_id])
                else:
                    todo.append(spec)
            if todo and hasattr(executor, "prestart"):
                executor.prestart(todo)
            if todo and hasattr(executor, "prepare"):
                executor.prepare(todo)  # (whatever it could not build, _prepare builds here and reports)
            _prepare(todo, session)
            for record in executor.submit(todo):
                record.family = family_of[record.spec.run_id]
                records[record.spec.run_id] = record
                finished(record)
            planner.finish(records)
    finally:
        bar.close()
    return report


def _prepare(specs: list[RunSpec], session: Session) -> None:
    """Build the released and defended stages of ``specs`` before their runs (each once: the session memoises),
    so bad input (a missing model or dataset, a defense config that matches no layer, a defense that breaks the
    function it claims to keep) stops the suite with its clear error instead of filling the results with failed
    runs. Any other exception is left for the runs to record as failures.
    """
    for spec in specs:
        try:
            session.defended(spec)
        except BenchError:
            raise
        except Exception:  # noqa: BLE001 - recorded by each run that needs this stage
            pass

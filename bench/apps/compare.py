"""``bench compare``: a new defense next to the baselines under the same attacks, runs reused from the results folder.

:func:`plan_comparison` turns one :class:`~bench.exec.suite_run.SuiteRequest` (the new defense on a task) into a sweep of
that defense and the baselines (default: every built-in defense, :func:`default_baselines`) with the same task,
tier, seeds and attacks, planned by :func:`bench.plan.sweep.plan` (duplicates collapse, every error reported at once).
:func:`compare` runs it with :func:`bench.exec.sweep_run.run_sweep` — completed runs in the results folder are reused,
so a second call runs nothing — then aggregates exactly the compared runs into the task's table, with the new
defense highlighted, and writes the leaderboard of the whole results folder (:func:`leaderboard.publish.write_outputs`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.core.spec import resolve_plugin
from bench.errors import ConfigError
from bench.exec.executors import Executor
from bench.exec.sweep_run import SweepReport, run_sweep
from bench.plan.request import SuiteRequest
from bench.plan.sweep import DEFAULT_SUITE, Entry, Plan, Planned, Sweep, plan
from bench.registry import DEFENSES, TASKS
from bench.run.stages import Session
from leaderboard.aggregate import build  # the leaderboard reads results only (tests/test_layers.py)
from leaderboard.publish import write_outputs
from leaderboard.render import markdown

SITE_FOLDER = "site"
"""Where :func:`compare` writes the leaderboard by default: ``<results>/site/``."""


def default_baselines(task: str | None = None) -> tuple[str, ...]:
    """Every built-in defense (that applies to ``task``, when given: :mod:`bench.core.applicability`), in registration
    order (composites ``a+b`` are combinations, not baselines)."""
    from bench.core.applicability import applies
    from bench.core.builtins import BUILTINS

    names = [name for kind, name, _, _ in BUILTINS if kind == "defense" and "+" not in name]
    if task is None:
        return tuple(names)
    task_cls = TASKS.get(task.partition(".")[0])
    return tuple(name for name in names if applies(DEFENSES.get(name), task_cls))


@dataclass(frozen=True)
class Comparison:
    """The new defense's request, the baselines it is compared with, and the planned sweep of all of them."""

    request: SuiteRequest
    baselines: tuple[str, ...]
    plan: Plan
    defense_hash: str
    """The compared defense's config hash (``defense_hash`` of its rows), to tell them from the baselines'."""

    @property
    def run_ids(self) -> list[str]:
        """Every run known before any result (the first waves), each once: a dry run from Python is
        ``bench.exec.sweep_run.run_states(results_dir, comparison.run_ids)``."""
        return list(dict.fromkeys(spec.run_id for planned in self.plan.suites for spec in planned.runs))


def plan_comparison(request: SuiteRequest, baselines: Sequence[str] | None = None) -> Comparison:
    """Plan ``request``'s defense and ``baselines`` (default :func:`default_baselines`) on its task, tier, model,
    seeds and attacks (its attack, or the task's default suite with its attack args). ``none`` always runs: it is
    the resistance ratio's reference. Raises one ConfigError listing every bad name or value."""
    names = default_baselines(request.task) if baselines is None else tuple(baselines)
    blank = [i for i, name in enumerate(names) if not name.strip()]
    if blank:
        raise ConfigError(f"--baselines has an empty name at position {blank[0] + 1}: write names separated by commas")
    defense = Entry(name=request.defense, args=dict(request.defense_args), where="--defense")
    # none runs as the sweep's baseline; a baseline equal to the defense (same runs) collapses in plan()
    others = tuple(Entry(name=name.strip(), where=f"--baselines {name.strip()}") for name in names
                   if name.strip() != "none")
    sweep = Sweep(
        tasks=(Entry(name=request.task, args=dict(request.task_args), model=request.model, where="--task"),),
        defenses=(defense, *others),
        attacks=(Entry(name=request.attack or DEFAULT_SUITE, args=dict(request.attack_args), where="--attack"),),
        tiers=(request.tier,), seeds=tuple(request.seeds), baseline=True, refine=request.refine,
        search=request.search)
    sweep_plan = plan(sweep)  # every bad name or value, the defense's included, is reported here
    defense_spec, _ = resolve_plugin(DEFENSES, request.defense, request.defense_args)
    return Comparison(request, tuple(name.strip() for name in names), sweep_plan, defense_spec.hash())


@dataclass
class CompareReport:
    """What :func:`compare` ran and found."""

    comparison: Comparison
    sweep: SweepReport
    board: pd.DataFrame
    """The aggregated rows of the compared runs (one per defense config), :func:`leaderboard.aggregate.build`."""
    table: str
    """The Markdown table of the task, the compared defense in bold."""
    site: list[Path] = field(default_factory=list)
    """The leaderboard files written for the whole results folder."""

    @property
    def resumed(self) -> int:
        return sum(record.resumed for record in self.sweep.records)


def compare(
    comparison: Comparison,
    results_dir: str | Path = "results",
    *,
    make_session: Callable[[], Session] | None = None,
    make_executor: Callable[[Session, str], Executor] | None = None,
    on_suite: Callable[[int, Planned], None] | None = None,
    site_dir: str | Path | None = None,
    allow_stale: bool = False,
) -> CompareReport:
    """Run what is missing of ``comparison`` (:func:`plan_comparison`), aggregate its runs and write the leaderboard.

    ``make_session()`` gives the sessions the runs use (default: ``Session(results_dir=results_dir)``; give one
    with the same ``results_dir``); ``make_executor`` and ``on_suite`` are :func:`bench.exec.sweep_run.run_sweep`'s. The
    leaderboard of the whole results folder goes to ``site_dir`` (default ``<results>/site``).
    """
    results_dir = Path(results_dir)
    session = make_session or (lambda: Session(results_dir=results_dir))
    report = run_sweep(comparison.plan, session, on_suite=on_suite, make_executor=make_executor,
                       allow_stale=allow_stale)
    board = build(results_dir, report.run_ids).board
    site = write_outputs(results_dir, site_dir or results_dir / SITE_FOLDER) if report.records else []
    return CompareReport(comparison, report, board, comparison_table(board, comparison.defense_hash), site)


def comparison_table(board: pd.DataFrame, highlight: str) -> str:
    """The leaderboard's Markdown for ``board``, the rows whose ``defense_hash`` is ``highlight`` in bold."""
    if board.empty:
        return markdown(board)
    marked = board.copy()
    labels = marked["defense_label"].astype(str)
    marked["defense_label"] = labels.where(marked["defense_hash"] != highlight, "**" + labels + "**")
    return markdown(marked)

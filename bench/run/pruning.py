"""Bound pruning (issue 23, lever 1): stop an attack run once it can no longer change any worst case reported.

Every worst case the leaderboard reports for a (task, defense config, seed, suite) is a minimum of steps-to-harm over
a subset of its attack runs: all of them, the white-box (adaptive) or the blind ones, the runs whose attacked model
kept ≥ 1 − L/100 of its primary utility (``bounded{L}``), the runs within the task's utility bound (``bounded``) —
and the planner's half-decade refinement picks the best learning rate of each family, a minimum over the family. Once
a run of a subset harmed at step ``s``, no run can lower that subset's minimum by harming after ``s``.

So a run that starts while :class:`Bounds` knows a bound for *every* subset it may belong to gets a step cap
(:attr:`~bench.core.spec.RunSpec.stop_at`) at the largest of those bounds. Which knowledge subset and family a run joins
is known from its spec; whether it will keep its utility is not, so a run is capped only when every utility-bounded
subset has a bound too. The monitor stops the run at the first probe step at or past the cap where no harmful streak
is under way (:meth:`bench.run.monitor.ProbeMonitor._past_bound`); a crossing still to come would lie strictly past every
bound that applies to it, so every reported worst case — its value, its run and that run's harm AUC — and every
refinement the planner chooses are those of the exhaustive sweep. The run is recorded censored at the step it stopped
(``pruned_at_bound``), outcome ``pruned``, with the bound (``prune_bound``) and the runs that set it (``bound_by``).

What pruning does change, and the leaderboard says so: a pruned run's own outcome, steps-to-harm and harm AUC (it
counts as ``pruned``, not in harmed/broken/resisted), the largest harm AUC over runs, and the attacker's trials to
break (a pruned run might have harmed later). ``--exhaustive`` turns pruning off.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

from bench.core.metrics import UTILITY_LIMITS
from bench.core.spec import RunSpec
from bench.run.summary import RunSummary, UtilityStanding

ALL = "all"
TASK_BOUND = "bounded"


def _utility_limits() -> tuple[int, ...]:
    return tuple(UTILITY_LIMITS)  # the leaderboard's limits: one definition, in core


def utility_tables() -> tuple[str, ...]:
    """The utility-bounded subsets: ``bounded{L}`` for each of the leaderboard's limits, and the task's bound."""
    return (*(f"bounded{limit}" for limit in _utility_limits()), TASK_BOUND)


def utility_standing(retained_rows: Sequence[Mapping[str, Any]], released, post, bound) -> UtilityStanding:
    """What an attack run records for the utility-bounded subsets (as :mod:`leaderboard.utility` judges them from
    the same rows): ``retained_after_attack``, the retained primary utility, and ``within_utility_bound``, whether
    the attacked model is within the task's :class:`~bench.contracts.UtilityBound` (None when not measured)."""
    retained = {row["split"]: row["value"] for row in retained_rows if row.get("metric") == "retained_utility"}
    primary = released.task.utility_metric
    metric = bound.judged_on({m for m, v in retained.items() if _finite(v)}, primary)
    value = retained.get(metric)
    within: bool | None = None
    if _finite(value):
        before, now = released.evaluation.utility.get(metric), post.utility.get(metric)
        within = bound.holds(float(value), before.value if before is not None else None,
                             now.value if now is not None else None)
    primary_value = retained.get(primary)
    return UtilityStanding(retained_after_attack=float(primary_value) if _finite(primary_value) else None,
                           within_utility_bound=within)


def _finite(value: Any) -> TypeGuard[float]:
    return value is not None and math.isfinite(float(value))


def group_of(spec: RunSpec) -> tuple[str, str]:
    """What a worst case is taken over: one defended model (task config, tier, model, defense config, seed) and one
    attack suite."""
    return spec.stage_key("defended"), spec.suite


def knowledge_table(spec: RunSpec) -> str:
    """``adaptive`` for a white-box attack, else ``blind`` (the leaderboard's two knowledge subsets, as the runner
    records ``knowledge``)."""
    from bench.registry import ATTACKS

    return "adaptive" if ATTACKS.get(spec.attack.name).knowledge_of(spec.configs()[2]) == "white-box" else "blind"


@dataclasses.dataclass
class _Bound:
    steps: int
    run_id: str


class Bounds:
    """The best (fewest steps) harmed run found so far in each subset of each group; caps for runs about to start.

    Feed it every finished run (:meth:`feed`); ask it for a run's cap when the run starts (:meth:`capped`). With
    ``exhaustive`` it caps nothing.
    """

    def __init__(self, *, exhaustive: bool = False):
        self.exhaustive = exhaustive
        self._best: dict[tuple, dict[str, _Bound]] = {}
        self._seen: set[str] = set()
        self._knowledge: dict[tuple[str, str], str] = {}
        self._undefended: dict[tuple, int] = {}  # (task, seed, suite, family, attack config) -> none's steps
        self._lock = threading.Lock()  # fed in the caller's thread, asked in a local executor's slot threads

    def _table(self, spec: RunSpec) -> str:
        key = (spec.attack.name, spec.attack.hash())
        if key not in self._knowledge:
            self._knowledge[key] = knowledge_table(spec)
        return self._knowledge[key]

    def feed(self, record, family: str) -> None:
        """One finished run (its :class:`~bench.plan.planner.RunRecord`) of attack family ``family``."""
        with self._lock:
            self._feed(record, family)

    def _feed(self, record, family: str) -> None:
        spec, summary = record.spec, record.summary
        if spec.purpose != "attack" or record.status != "success" or spec.run_id in self._seen:
            return
        self._seen.add(spec.run_id)
        if summary.censored is not False or summary.steps_to_harm is None:
            return
        steps = int(summary.steps_to_harm)
        if spec.defense.name == "none":
            self._undefended[_config_key(spec, family)] = steps
        tables = [ALL, self._table(spec), f"family:{family}"]
        standing = summary.utility or UtilityStanding()
        retained = standing.retained_after_attack
        if _finite(retained):
            tables += [f"bounded{limit}" for limit in _utility_limits() if float(retained) >= 1.0 - limit / 100.0]
        if standing.within_utility_bound is True:
            tables.append(TASK_BOUND)
        best = self._best.setdefault(group_of(spec), {})
        for table in tables:
            if table not in best or steps < best[table].steps:
                best[table] = _Bound(steps, spec.run_id)

    def bound(self, spec: RunSpec, family: str) -> tuple[int, tuple[str, ...]] | None:
        """The cap for ``spec`` and the runs that set it: the largest bound over the subsets it may join (its
        knowledge subset, every utility-bounded subset, its family); None while any of them has no harmed run."""
        with self._lock:
            best = dict(self._best.get(group_of(spec), {}))
        tables = (ALL, self._table(spec), *utility_tables(), f"family:{family}")
        if any(t not in best for t in tables):
            return None
        steps = max(best[t].steps for t in tables)
        return steps, tuple(sorted({best[t].run_id for t in tables}))

    def rank(self, spec: RunSpec, family: str) -> tuple[bool, float]:
        """The order to start runs in, lowest first (ties keep the planner's order): the undefended model's runs
        first (they are the prior of every other defense's), then the steps at which the undefended model, attacked
        with the same config (family, learning rate) on the same task and seed, harmed: a run likely to harm fast
        sets bounds early, and the runs after it are capped sooner (unknown: inf)."""
        with self._lock:
            steps = float(self._undefended.get(_config_key(spec, family), math.inf))
        return spec.defense.name != "none", steps

    def capped(self, spec: RunSpec, family: str) -> RunSpec:
        """``spec`` with the cap it gets if it starts now (unchanged when nothing bounds it, when its budget comes
        first, for LR-search probes, and with ``exhaustive``)."""
        if self.exhaustive or spec.purpose != "attack":
            return spec
        found = self.bound(spec, family)
        budget = spec.attack.kwargs.get("budget")
        if found is None or (isinstance(budget, (int, float)) and found[0] >= budget):
            return dataclasses.replace(spec, stop_at=None, bound_by=())
        return dataclasses.replace(spec, stop_at=found[0], bound_by=found[1])


def _config_key(spec: RunSpec, family: str) -> tuple:
    return spec.stage_key("released"), spec.seed, spec.suite, family, spec.attack.hash()


def pruned(summary: RunSummary) -> bool:
    """Whether a run's summary says it was stopped at the bound."""
    return summary.pruned_at_bound is not None

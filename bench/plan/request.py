"""What to run: a :class:`SuiteRequest` (one defense and the ``none`` baseline on one task, over seeds, against an
attack or the task's suite), and its validation before anything runs (every first spec built, so configuration
errors surface at once).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.core.spec import RunSpec
from bench.plan.planner import attack_families, defenses_of, spec_of


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
    families: tuple[str, ...] = ()
    """Only these families of the task's default suite (by :attr:`AttackFamily.family`); empty: every family."""
    exhaustive: bool = False
    """Run every attack run to its end: no bound pruning (:mod:`bench.run.pruning`), so each family's and each run's
    own figures are exact, not only the worst cases."""


def validate_request(request: SuiteRequest) -> list[RunSpec]:
    """Build the first spec of every attack family, defense and seed, so configuration errors surface before any run."""
    specs = []
    for defense, defense_args in defenses_of(request):
        for family in attack_families(request):
            args = dict(family.args)
            if family.lrs:
                args["lr"] = family.lrs[0]
            for seed in request.seeds:
                specs.append(spec_of(request, defense, defense_args, family.attack, args, seed=seed))
    return specs

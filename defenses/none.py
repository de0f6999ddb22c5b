"""``none``: the undefended baseline. Every leaderboard ratio is relative to it."""

from __future__ import annotations

from dataclasses import dataclass

from bench.contracts import Defense, DefenseResult
from bench.registry import DEFENSES


@dataclass(frozen=True, kw_only=True)
class NoDefenseConfig:
    """No options."""


@DEFENSES.register("none")
class NoDefense(Defense):
    """No defense: the released model, unchanged (the baseline)."""

    Config = NoDefenseConfig
    preservation_tol = 0.0
    changes_weights = False

    def apply(self, model, view, cfg, *, generator):
        return DefenseResult(model=model)

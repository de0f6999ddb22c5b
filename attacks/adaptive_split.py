"""``adaptive-split``: replace each chain's first (inflated) map by ``pieces`` factors sharing its spectrum.

``W̃ = U Σ̃ Vᵀ`` becomes ``(U Σ̃^(1/j)) · Σ̃^(1/j) ⋯ (Σ̃^(1/j) Vᵀ)``: each factor carries α^(1/j) of the inflation
(DESIGN §9), so no single block of the Hessian sees the full α. The compensation map stays as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from attacks._adaptive import AdaptiveAttack
from attacks._structure import split_first
from attacks._training import FineTuneConfig
from bench.config import check
from bench.registry import ATTACKS


@dataclass(frozen=True, kw_only=True)
class SplitConfig(FineTuneConfig):
    pieces: int = 2
    """Number of factors j that replace the inflated map."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.pieces >= 2, f"pieces must be at least 2, got {self.pieces}")


@ATTACKS.register("adaptive-split")
class AdaptiveSplit(AdaptiveAttack):
    """Adaptive: split each inflated map into j factors sharing its spectrum, then fine-tune."""

    Config = SplitConfig

    def rewrite(self, model, chain, cfg: SplitConfig):
        return split_first(model, chain, cfg.pieces)

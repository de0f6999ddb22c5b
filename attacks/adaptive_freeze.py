"""``adaptive-freeze``: keep the defended structure but freeze every map after a chain's first (DESIGN §9).

On SpecDef this freezes the compensation map C, which removes the C block (and its α² curvature) from the Hessian
the optimizer sees, at no change in model size.
"""

from __future__ import annotations

from dataclasses import dataclass

from attacks._adaptive import AdaptiveAttack
from attacks._structure import freeze_tail
from attacks._training import FineTuneConfig
from bench.registry import ATTACKS


@dataclass(frozen=True, kw_only=True)
class FreezeConfig(FineTuneConfig):
    """The shared fine-tuning recipe, applied to every parameter left trainable."""


@ATTACKS.register("adaptive-freeze")
class AdaptiveFreeze(AdaptiveAttack):
    """Adaptive: freeze the compensation side of each chain of linear maps, then fine-tune."""

    Config = FreezeConfig

    def rewrite(self, model, chain, cfg):
        return freeze_tail(model, chain)

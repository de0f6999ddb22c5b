"""``adaptive-collapse``: fuse every chain of linear maps back into one map, then fine-tune (DESIGN §9).

The informed attacker's cheapest move against a reparameterization defense: ``C W̃`` becomes ``W`` again, the
inflated curvature disappears, and the model size returns to the original. Works from structure, not names.
"""

from __future__ import annotations

from dataclasses import dataclass

from attacks._adaptive import AdaptiveAttack
from attacks._structure import collapse
from attacks._training import FineTuneConfig
from bench.registry import ATTACKS


@dataclass(frozen=True, kw_only=True)
class CollapseConfig(FineTuneConfig):
    """The shared fine-tuning recipe, applied after fusing."""


@ATTACKS.register("adaptive-collapse")
class AdaptiveCollapse(AdaptiveAttack):
    """Adaptive: fuse each chain of adjacent linear maps into one, then fine-tune."""

    Config = CollapseConfig

    def rewrite(self, model, chain, cfg):
        return collapse(model, chain)

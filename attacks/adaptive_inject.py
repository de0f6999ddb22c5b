"""``adaptive-inject``: freeze each fused chain and train a new identity-initialised square map after it (DESIGN §9).

The limit theorem's construction: the attacker freezes the (fused) defended map and inserts a fresh trainable m × m
layer with a trainable bias, initialised to the identity, so the function is unchanged and the new layer sees
ordinary curvature. The model grows by m² + m parameters per chain — linear in model size.
"""

from __future__ import annotations

from dataclasses import dataclass

from attacks._adaptive import AdaptiveAttack
from attacks._structure import inject
from attacks._training import FineTuneConfig
from bench.registry import ATTACKS


@dataclass(frozen=True, kw_only=True)
class InjectConfig(FineTuneConfig):
    """The shared fine-tuning recipe, applied to the injected maps and every other trainable layer."""


@ATTACKS.register("adaptive-inject")
class AdaptiveInject(AdaptiveAttack):
    """Adaptive: freeze each fused chain, insert an identity-initialised trainable square layer, fine-tune."""

    Config = InjectConfig

    def rewrite(self, model, chain, cfg):
        return inject(model, chain)

"""``full-ft``: full fine-tuning of every trainable parameter (SGD, Adam, AdamW, Muon or AdaHessian).

The standard, defense-unaware (blind) recipe. Its learning rate is what the default suite sweeps: a
reparameterization defense rescales the usable learning rate (≈ lr/alpha for Adam, lr/alpha² for SGD), so a
narrow grid makes such a defense look unbreakable.
"""

from __future__ import annotations

from dataclasses import dataclass

from attacks._training import FineTuneConfig, fine_tune
from bench.contracts import Attack
from bench.registry import ATTACKS


@dataclass(frozen=True, kw_only=True)
class FullFineTuneConfig(FineTuneConfig):
    """Every field is the shared fine-tuning recipe (optimizer, lr, weight decay, clipping, warm-up)."""


@ATTACKS.register("full-ft")
class FullFineTune(Attack):
    """Full fine-tuning of every parameter with SGD, Adam, AdamW, Muon or AdaHessian."""

    Config = FullFineTuneConfig

    def run(self, model, task, cfg: FullFineTuneConfig, *, generator, monitor):
        return fine_tune(model, task, cfg, generator=generator, monitor=monitor)

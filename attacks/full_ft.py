"""``full-ft``: full fine-tuning of every trainable parameter with SGD, Adam or AdamW.

The standard, defense-unaware (blind) recipe. Its learning rate is what the default suite sweeps: a
reparameterization defense rescales the usable learning rate (≈ lr/alpha for Adam, lr/alpha² for SGD), so a
narrow grid makes such a defense look unbreakable.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.config import check
from bench.contracts import Attack, AttackConfig
from bench.registry import ATTACKS
from attacks._training import OptimizerName, build_optimizer, train


@dataclass(frozen=True, kw_only=True)
class FullFineTuneConfig(AttackConfig):
    optimizer: OptimizerName = "adam"
    """sgd, adam or adamw."""
    lr: float = 1e-3
    """Learning rate."""
    weight_decay: float = 0.0
    """Weight decay (decoupled for adamw, L2 for sgd and adam)."""
    momentum: float = 0.0
    """SGD momentum (ignored by adam and adamw)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.lr > 0, f"lr must be positive, got {self.lr}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")


@ATTACKS.register("full-ft")
class FullFineTune(Attack):
    """Full fine-tuning of every parameter with SGD, Adam or AdamW."""

    Config = FullFineTuneConfig

    def run(self, model, task, cfg: FullFineTuneConfig, *, generator, monitor):
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = build_optimizer(cfg.optimizer, params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
        return train(model, task, optimizer, budget=cfg.budget, batch_size=cfg.batch_size, generator=generator, monitor=monitor)

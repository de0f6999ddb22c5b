"""``sign-sgd``: a complete minimal attack with its own training loop (docs/plugins.md walks through it).

Fine-tunes every trainable parameter with signSGD (each step moves every weight by ``lr`` times the sign of its
gradient) on the task's attacker batches, reporting every optimizer step to the runner's monitor.

Run it: ``bench run --plugin docs/examples/my_attack.py --attack sign-sgd lr=1e-3 --defense specdef
--task vision-digits``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench.config import check
from bench.contracts import Attack, AttackConfig, AttackReport, Monitor, TaskInstance
from bench.registry import ATTACKS


@dataclass(frozen=True, kw_only=True)
class SignSGDConfig(AttackConfig):
    """budget, eval_every and batch_size come from AttackConfig (None: the task's default, filled in for you)."""

    lr: float = 1e-3
    """Step size: every weight moves by lr per step."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.lr > 0, f"lr must be positive, got {self.lr}")


@ATTACKS.register("sign-sgd")
class SignSGD(Attack):
    """signSGD fine-tuning of every parameter: each weight moves by lr times the sign of its gradient."""

    Config = SignSGDConfig
    knowledge = "blind"  # a standard recipe; "white-box" for attacks that inspect the defense's structure

    def run(self, model, task: TaskInstance, cfg: SignSGDConfig, *, generator: torch.Generator,
            monitor: Monitor) -> AttackReport:
        params = [p for p in model.parameters() if p.requires_grad]
        batches = task.attack_batches(cfg.batch_size, generator)  # the run's generator: reproducible batches
        monitor.begin(model)  # once, before the first step: the runner probes step 0
        for step in range(1, cfg.budget + 1):
            loss = task.attack_loss(model, next(batches))
            value = float(loss.detach())
            if math.isfinite(value):  # report a non-finite loss (the monitor records divergence), never step on it
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                with torch.no_grad():
                    for p, g in zip(params, grads):
                        if g is not None:
                            p.sub_(cfg.lr * g.sign())
            if monitor.after_step(model, step=step, loss=value, examples=cfg.batch_size):
                break  # the monitor decides: harm confirmed, divergence, or the budget is spent
        return AttackReport(params_trained=sum(p.numel() for p in params))

"""The one training loop every fine-tuning attack shares, and the config fields of its recipe.

Attacks differ in what they train (all weights, adapters, restructured layers); the loop that draws the attacker's
batches, applies warm-up and gradient clipping, steps the optimizer and reports to the runner's monitor is written
once here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from attacks._optim import OptimizerName, build_optimizer, clip_gradients, set_lr_scale, warmup_scale
from bench.config import check
from bench.contracts import AttackConfig, AttackReport, Monitor, TaskInstance


@dataclass(frozen=True, kw_only=True)
class FineTuneConfig(AttackConfig):
    """The optimisation recipe shared by every fine-tuning attack."""

    optimizer: OptimizerName = "adam"
    """sgd, adam, adamw, muon (2-D weights; AdamW for the rest) or adahessian (Hessian-diagonal preconditioning)."""
    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 0.0
    """Weight decay (decoupled for adamw/muon/adahessian, L2 for sgd and adam)."""
    momentum: float = 0.0
    """SGD momentum (ignored by the other optimizers)."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value (0: no clipping)."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up over this many steps (0: none)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.lr > 0, f"lr must be positive, got {self.lr}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        check(self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}")
        check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")


def fine_tune(
    model: nn.Module,
    task: TaskInstance,
    cfg: FineTuneConfig,
    *,
    generator: torch.Generator,
    monitor: Monitor,
    params_added: int = 0,
    info: dict | None = None,
    batches: Iterator[Any] | None = None,
) -> AttackReport:
    """Fine-tune the trainable parameters of ``model`` on the task's attack loss with the recipe in ``cfg``.

    ``batches``: the attacker's batches (default: :meth:`~bench.contracts.TaskInstance.attack_batches`); an attack
    on other data, e.g. benign or poisoned (:meth:`~bench.contracts.TaskInstance.mixed_batches`), passes its own.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg.optimizer, params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                                generator=torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator))))
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    create_graph = getattr(optimizer, "needs_create_graph", False)
    if batches is None:
        batches = task.attack_batches(cfg.batch_size, generator)
    model.train()
    monitor.begin(model)
    for step in range(1, cfg.budget + 1):
        batch = next(batches)
        if cfg.warmup_steps:
            set_lr_scale(optimizer, base_lrs, warmup_scale(step, cfg.warmup_steps))
        optimizer.zero_grad(set_to_none=True)
        loss = task.attack_loss(model, batch)
        value = float(loss.detach())
        if math.isfinite(value):  # a non-finite loss is reported (the monitor marks divergence), never stepped on
            if create_graph:
                grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
                for p, g in zip(params, grads):
                    p.grad = g
            else:
                loss.backward()
            clip_gradients(params, cfg.grad_clip)
            optimizer.step()
        if monitor.after_step(model, step=step, loss=value, examples=step * cfg.batch_size):
            break
    return AttackReport(params_trained=sum(p.numel() for p in params), params_added=params_added, info=info or {})

"""The one training loop every fine-tuning attack shares, and the optimizer factory.

Attacks differ in what they train (all weights, adapters, restructured layers) and with which optimizer; the loop
that draws the attacker's batches, steps the optimizer and reports to the runner's monitor is written once here.
"""

from __future__ import annotations

import math
from typing import Iterable, Literal

import torch
from torch import nn

from bench.contracts import AttackReport, Monitor, TaskInstance

OptimizerName = Literal["sgd", "adam", "adamw"]


def build_optimizer(
    name: OptimizerName,
    params: Iterable[nn.Parameter],
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
) -> torch.optim.Optimizer:
    params = list(params)
    if not params:
        raise ValueError("the attack has no trainable parameters")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def train(
    model: nn.Module,
    task: TaskInstance,
    optimizer: torch.optim.Optimizer,
    *,
    budget: int,
    batch_size: int,
    generator: torch.Generator,
    monitor: Monitor,
) -> AttackReport:
    """Minimise the task's attack loss for up to ``budget`` steps, stopping when the monitor says so."""
    trained = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    batches = task.attack_batches(batch_size, generator)
    model.train()
    monitor.begin(model)
    for step in range(1, budget + 1):
        batch = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss = task.attack_loss(model, batch)
        value = float(loss.detach())
        if math.isfinite(value):  # a non-finite loss is reported (the monitor marks divergence), never stepped on
            loss.backward()
            optimizer.step()
        if monitor.after_step(model, step=step, loss=value, examples=step * batch_size):
            break
    return AttackReport(params_trained=trained)

"""The one training loop every fine-tuning attack shares, and the config fields of its recipe.

Attacks differ in what they train (all weights, adapters, restructured layers); the loop that draws the attacker's
batches, applies warm-up and gradient clipping, steps the optimizer and reports to the runner's monitor is written
once here. It hands the monitor a :class:`~bench.contracts.Trajectory` (:class:`LoopTrajectory`), so every attack
built on it gets exact crossings (:mod:`bench.toolkit.crossing`): the loop keeps the batches the monitor may replay, and its
steps are a function of the saved state and the batch alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attacks._optim import OptimizerName, build_optimizer, clip_gradients, set_lr_scale, warmup_scale
from bench.config import check
from bench.contracts import AttackConfig, AttackReport, Monitor, TaskInstance
from bench.toolkit.crossing import TrainingState


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

    def train_step(step: int, batch: Any) -> float:
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
        return value

    trajectory = LoopTrajectory(model, optimizer, train_step, generators=[generator])
    model.train()
    monitor.begin(model, trajectory)
    for step in range(1, cfg.budget + 1):
        value = train_step(step, trajectory.draw(step, batches))
        if monitor.after_step(model, step=step, loss=value, examples=step * cfg.batch_size):
            break
    return AttackReport(params_trained=sum(p.numel() for p in params), params_added=params_added, info=info or {})


class LoopTrajectory:
    """The shared loop's :class:`~bench.contracts.Trajectory`: :class:`~bench.toolkit.crossing.TrainingState` snapshots,
    and the batches drawn since the oldest state the monitor may still replay from (the data position)."""

    def __init__(self, model: nn.Module, optimizer: Any, train_step: Callable[[int, Any], float],
                 generators: Sequence[torch.Generator] = ()):
        self.model, self.optimizer, self.train_step = model, optimizer, train_step
        self.generators = list(generators)
        self.batches: dict[int, Any] = {}
        self.windows: list[tuple[int, int | None]] | None = None
        """Steps whose batches are kept (``None`` until the monitor says: every batch)."""
        self.step_done = 0

    def draw(self, step: int, batches: Iterator[Any]) -> Any:
        """The batch of ``step`` from the stream, kept while a replay may need it."""
        batch = next(batches)
        self.step_done = step
        if self.windows is None or any(lo < step and (hi is None or step <= hi) for lo, hi in self.windows):
            self.batches[step] = batch
        return batch

    def save(self) -> TrainingState:
        return TrainingState.capture(self.step_done, self.model, self.optimizer, self.generators)

    def restore(self, state: TrainingState) -> None:
        state.restore(self.model, self.optimizer, self.generators)
        self.step_done = state.step

    def step(self, step: int) -> float:
        if step not in self.batches:
            raise RuntimeError(f"step {step} cannot be replayed: its batch was not kept")
        self.step_done = step
        return self.train_step(step, self.batches[step])

    def retain(self, windows: Sequence[tuple[int, int | None]]) -> None:
        self.windows = list(windows)
        self.batches = {s: b for s, b in self.batches.items()
                        if any(lo < s and (hi is None or s <= hi) for lo, hi in self.windows)}

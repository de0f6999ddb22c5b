"""``ga-retain``: gradient ascent on the harmful loss with a retain loss, the classic unlearning baseline (a control:
no paper of its own; BASELINES.md).

Threat model: the defender publishes weights; the attacker fine-tunes every weight on harmful data. The defender
makes the released model bad at the harmful task by raising its harmful loss on the defender's harmful split, while
keeping its benign (retain) loss on the defender's benign split. Each step, on fresh batches of both, AdamW minimises

    L = benign_loss(benign) − alpha · log(1 + harmful_loss(harmful))

The log weighs the ascent down as it succeeds (:func:`~defenses._objectives.bounded_ascent`): its gradient
−∇harmful_loss / (1 + harmful_loss) shrinks as the harmful loss grows, so the retain loss dominates once the harmful
loss is high (not a hard bound: under Adam's per-parameter normalisation the harmful loss keeps rising). It suppresses
harmful outputs rather than removing the ability to learn them, and relearning is known to recover it: the control a
trained defense should beat.

Defaults: alpha = 1; full-parameter training at constant learning rate; steps and learning rate follow the task's
attacker scale (:class:`~defenses._trained.AttackerScaledConfig`: 10 × the undefended steps-to-harm, at most 150, at
a tenth of the smallest learning rate where undefended Adam harms fastest).

Measured on vision-digits tiny at lr 1e-3, before the rule took a tenth (seed 0, default suite; the defaults'
numbers are in the README's baseline table): training 0.7 s (100 steps at lr 1e-3, 200 forward-backward
passes); the harmful loss rises 15 → ~340 (the forbidden logits are pushed far down); retained allowed accuracy
0.978; worst-case steps-to-harm 15 (Muon at lr 0.316) against 10 undefended. Per family (undefended → ga-retain):
Adam 35 → 90, SGD 60 → 210, LoRA 85 → > 500, adaptive attacks 35 → 105: the control resists more than RepNoise here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from bench.config import check
from bench.contracts import DefenderView, Defense, DefenseResult
from bench.registry import DEFENSES
from defenses._objectives import bounded_ascent
from defenses._trained import (
    AttackerScaledConfig,
    attacker_report,
    batch_size_of,
    endless,
    lr_for,
    steps_for,
    train_defense,
)


@dataclass(frozen=True, kw_only=True)
class GARetainConfig(AttackerScaledConfig):
    alpha: float = 1.0
    """Weight of the bounded ascent term −log(1 + harmful loss) against the retain loss."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.alpha >= 0, f"alpha must be >= 0, got {self.alpha}")


@DEFENSES.register("ga-retain")
class GARetain(Defense):
    """Control: bounded gradient ascent on the harmful loss while keeping the benign (retain) loss."""

    Config = GARetainConfig
    preserves_function = False
    smoke_args: ClassVar[Mapping[str, Any]] = {"steps": 3, "lr": 1e-3}
    # Defender tuning (bench tune): ascent strength and learning rate (None: the rule, a tenth of the attacker's).
    # The first space, alpha 0.5-2 and lr up to 1e-3, selected both largest values on vision-digits: an optimum at
    # the edge may lie beyond it, so the space now reaches past both.
    search_space: ClassVar[Mapping[str, tuple]] = {"alpha": (0.5, 1.0, 2.0, 4.0, 8.0), "lr": (None, 1e-3, 3e-3, 1e-2)}

    def apply(self, model: nn.Module, view: DefenderView, cfg: GARetainConfig, *,
              generator: torch.Generator) -> DefenseResult:
        steps, lr = steps_for(cfg, view), lr_for(cfg, view)
        batch_size = batch_size_of(cfg, view)
        harmful_batches = endless(view, "harmful", batch_size, generator)
        benign_batches = endless(view, "benign", batch_size, generator)

        def step(_: int) -> dict[str, torch.Tensor]:
            benign_loss = view.benign_loss(model, next(benign_batches))
            harmful_loss = view.harmful_loss(model, next(harmful_batches))
            loss = benign_loss + cfg.alpha * bounded_ascent(harmful_loss)
            loss.backward()
            return {"loss": loss, "benign_loss": benign_loss, "harmful_loss": harmful_loss}

        return train_defense(model, view, cfg, step, name="ga-retain", steps=steps, passes=2, lr=lr,
                             info={"lr": lr, "batch_size": batch_size, "alpha": cfg.alpha, "simulated_attacker": None,
                                   "scaled_by": attacker_report(view)})

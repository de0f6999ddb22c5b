"""``npo``: Negative Preference Optimization with a retain loss (Zhang et al. 2024, "Negative Preference
Optimization: From Catastrophic Collapse to Effective Unlearning", arXiv 2404.05868).

Threat model: the defender publishes weights of a language model that should not produce (chat setting) or know
(knowledge setting) the harmful answers; the attacker fine-tunes it (the relearning attack of the SpecDef paper's
stacked setting: ``--defense npo+specdef``). NPO treats the defender's harmful pairs (x, y) as dispreferred answers
only, DPO without a preferred one: each step, on fresh batches of the defender's harmful and benign splits, AdamW
minimises

    L = −(2/beta) · mean_(x,y) log σ(−beta · [log π_θ(y|x) − log π_ref(y|x)]) + retain_weight · benign_loss

with π_ref a frozen copy of the model given to the defense (the released model) and log π(y|x) the sum of the
log-probabilities of the answer's scored tokens (from the view's :class:`~bench.contracts.Predictions`). Its gradient
is gradient ascent on log π_θ(y|x) weighted by 2·σ(beta·[log π_θ − log π_ref]): the weight vanishes as the answer
becomes less likely than under the reference, which is what keeps NPO from the catastrophic collapse of plain
gradient ascent.

Defaults: beta = 0.1 and retain weight 1 (the paper's NPO+RT); full-parameter training (the paper's too). Scaled to
the tier by the rules of :class:`~defenses._trained.AttackerScaledConfig`: 10 × the undefended steps-to-harm, at most
150 steps, at a tenth of the smallest learning rate where undefended Adam harms fastest (the paper trained at 1e-5,
a tenth to a third of the relearning attacks' 3e-5-1e-4).

Cost per step: a forward-backward on a harmful and a benign batch, plus a forward of the frozen reference (which
doubles the model's memory).

Measured (tiny tier, seed 0, ``bench run --defense npo --seeds 0``, default suite; training times on a 2-core machine
under a load of about 7): llm-relearn: 150 steps at lr 3e-5 in 18 s; held-out hazard accuracy 0.31 → 0.17 before
any attack, retained benign NLL 0.97; worst-case steps-to-harm 30 (``harmful-mix`` at 3e-3; AdamW full fine-tuning
and the adaptive collapse 35) against 15 undefended (2×); benign fine-tuning does not relearn within 150 steps.
llm-harmful-qa: 150 steps at lr 1e-4 in 68 s; retained benign NLL 1.00; worst case 20 (full fine-tuning, the
adaptive collapse and ``harmful-mix`` alike) against 15 (1.3×).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from bench.config import check
from bench.contracts import DefenderView, Defense, DefenseResult
from bench.registry import DEFENSES
from defenses._objectives import sequence_logprob
from defenses._trained import (
    AttackerScaledConfig,
    attacker_report,
    batch_size_of,
    endless,
    lr_for,
    require,
    steps_for,
    train_defense,
)


@dataclass(frozen=True, kw_only=True)
class NPOConfig(AttackerScaledConfig):
    beta: float = 0.1
    """Inverse temperature of the negative preference (paper: 0.1)."""
    retain_weight: float = 1.0
    """Weight of the benign (retain) NLL (paper's NPO+RT: 1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.beta > 0, f"beta must be positive, got {self.beta}")
        check(self.retain_weight >= 0, f"retain_weight must be >= 0, got {self.retain_weight}")


def npo_loss(logp: torch.Tensor, logp_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """−(2/beta) · mean log σ(−beta · (logp − logp_ref)) over the batch's examples: (2/beta)·log 2 at the reference,
    falling toward 0 as the answers become less likely than under it."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - logp_ref)).mean()


@DEFENSES.register("npo")
class NPO(Defense):
    """NPO: lower the harmful answers' likelihood relative to the released model, keep the benign NLL (Zhang et al. 2024)."""

    Config = NPOConfig
    preserves_function = False
    settings: ClassVar[frozenset[str]] = frozenset({"chat", "knowledge"})
    smoke_args: ClassVar[Mapping[str, Any]] = {"steps": 3, "lr": 1e-3}
    # Defender tuning (bench tune): the inverse temperature β (paper: 0.1) and the retain weight.
    search_space: ClassVar[Mapping[str, tuple]] = {"beta": (0.05, 0.1, 0.5), "retain_weight": (1.0, 2.0)}

    def apply(self, model: nn.Module, view: DefenderView, cfg: NPOConfig, *,
              generator: torch.Generator) -> DefenseResult:
        require(view, "npo", "predictions")
        steps, lr = steps_for(cfg, view), lr_for(cfg, view)
        batch_size = batch_size_of(cfg, view)
        reference = copy.deepcopy(model).eval().requires_grad_(False)
        harmful_batches = endless(view, "harmful", batch_size, generator)
        benign_batches = endless(view, "benign", batch_size, generator)

        def step(_: int) -> dict[str, torch.Tensor]:
            harmful = next(harmful_batches)
            with torch.no_grad():
                logp_ref = sequence_logprob(view.predictions(reference, harmful))
            logp = sequence_logprob(view.predictions(model, harmful))
            forget = npo_loss(logp, logp_ref, cfg.beta)
            retain = view.benign_loss(model, next(benign_batches))
            loss = forget + cfg.retain_weight * retain
            loss.backward()
            return {"loss": loss, "npo_loss": forget, "retain_loss": retain,
                    "log_ratio": (logp - logp_ref).detach().mean()}

        return train_defense(model, view, cfg, step, name="npo", steps=steps, passes=2, lr=lr,
                             info={"lr": lr, "batch_size": batch_size, "beta": cfg.beta,
                                   "retain_weight": cfg.retain_weight, "simulated_attacker": None,
                                   "scaled_by": attacker_report(view)})

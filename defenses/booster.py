"""``booster``: attenuate the harmful perturbation (Huang et al. 2024, arXiv 2409.01586).

Threat model: the defender aligns the model before release; the attacker then fine-tunes it on harmful data. Booster
simulates one harmful step during alignment and penalises how much it lowers the harmful loss h::

    g = ∇f(θ) + λ [∇h(θ) − ∇h(θ − α ∇h(θ)/‖∇h(θ)‖)]

where f is the alignment loss (the view's aligned split: harmful inputs with the safe target) and h the harmful
loss on a harmful batch (the same batch at both points). Like the paper, the second term is first-order: the step
direction is treated as a constant. Cost: 3 forward-backward passes per step (4 with the retain term).

Scaling to the tiny tiers (the paper: LoRA r32 on q, k, v of 7B models, λ=5, α=0.1, AdamW lr 5e-4, wd 0.1, 20 epochs):

* full-parameter training, since the tiny models' layers are narrower than the paper's LoRA rank;
* λ = 5 as in the paper;
* α is a fraction of the trainable weight norm ‖θ‖ (measured once, before training), since an absolute distance
  is a different perturbation on every model; ``alpha_relative=False`` takes it as given. Default 0.01·‖θ‖ (the
  paper's 0.1 would be 0.007·‖θ‖ on vision-digits tiny, ‖θ‖ = 14.4). Too large a step breaks the objective: it is
  unbounded below (a model whose simulated step overshoots *raises* h), and at 0.11·‖θ‖ (one Adam step of the
  task's fastest attacker in norm) training drove h(θ′) − h(θ) to +45 and allowed accuracy to 0.64;
* no weight decay: on LoRA it pulls the adapter toward the released weights, on full parameters it would pull the
  weights toward zero;
* ``retain_weight`` (default 1) adds the benign (retain) loss to f. The paper aligned on harmful prompts with safe
  answers only and measured utility after a user's fine-tuning; this benchmark measures the released model's own
  utility, which the retain term protects for one extra pass per step;
* steps and learning rate follow the task's attacker scale (:class:`~defenses._trained.AttackerScaledConfig`:
  10 × the undefended steps-to-harm, at most 150, at a tenth of the smallest learning rate where undefended Adam
  harms fastest; the paper's lr 5e-4 trained LoRA adapters, and full parameters of the tiny LLM at 5e-4 for 150 steps
  doubled its benign NLL). Vision-digits tiny: 100 steps (the curve is nearly flat by then).

Measured on vision-digits tiny at an earlier default (lr 5e-4, 100 steps; the defaults' numbers are in the README's
baseline table; Adam attack at lr 1e-3 / 3e-3 / 1e-2 / 3e-2, steps to harm within 100):
undefended never / 66 / 27 / 40, booster 76 / 30 / 27 / 26. Booster's cheapest way to shrink the drop of a
cross-entropy that the released model saturates (h = 14.2 at release) is to lower h itself (to 2.5), which moves
the model toward the harmful solution: it does not resist here. The default suite (``bench run --defense booster
--task vision-digits --seeds 0``) agrees: worst case 10 steps (Muon) as undefended; Adam 35 → 20, LoRA 85 → 30.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from bench.config import check
from bench.contracts import Defense
from bench.registry import DEFENSES
from defenses._trained import AttackerScaledConfig, batch_size_of, endless, lr_for, require, steps_for, train_defense


@dataclass(frozen=True, kw_only=True)
class BoosterConfig(AttackerScaledConfig):
    lr: float | None = None
    """AdamW learning rate; None: the rule of :class:`~defenses._trained.AttackerScaledConfig` (the paper's 5e-4
    was for LoRA adapters on 7B models)."""
    weight_decay: float = 0.0
    """AdamW weight decay (0: see the module docstring; the paper used 0.1 on LoRA)."""
    lam: float = 5.0
    """λ: weight of the harmful-loss drop h(θ) − h(θ′) after the simulated harmful step (paper: 5)."""
    alpha: float = 0.01
    """α: length of the simulated harmful step, as a fraction of the trainable weight norm ‖θ‖ (or absolute when
    ``alpha_relative`` is False; the paper's 0.1 was absolute, on LoRA weights)."""
    alpha_relative: bool = True
    """Whether ``alpha`` is a fraction of ‖θ‖ (True) or an absolute parameter-space distance (False)."""
    retain_weight: float = 1.0
    """Weight of the benign (retain) loss added to the alignment loss f (0: the paper's alignment loss alone, and
    3 instead of 4 forward-backward passes per step)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.lam >= 0, f"lam must be >= 0, got {self.lam}")
        check(self.alpha > 0, f"alpha must be positive, got {self.alpha}")
        check(self.retain_weight >= 0, f"retain_weight must be >= 0, got {self.retain_weight}")


def _gradients(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum(t.float().pow(2).sum() for t in tensors))


@DEFENSES.register("booster")
class Booster(Defense):
    """Booster: align while penalising the harmful-loss drop of a simulated harmful step (Huang et al. 2024)."""

    Config = BoosterConfig
    preserves_function = False
    smoke_args: ClassVar[Mapping[str, Any]] = {"steps": 3}
    # Defender tuning (bench tune): λ (attenuation weight) and α (simulated step, scale-dependent: BASELINES.md).
    search_space: ClassVar[Mapping[str, tuple]] = {"lam": (1.0, 5.0, 20.0), "alpha": (0.01, 0.1)}

    def apply(self, model, view, cfg: BoosterConfig, *, generator):
        require(view, "booster", "aligned_loss")
        steps, lr = steps_for(cfg, view), lr_for(cfg, view)
        size = batch_size_of(cfg, view)
        harmful = endless(view, "harmful", size, generator)
        aligned = endless(view, "aligned", size, generator)
        benign = endless(view, "benign", size, generator) if cfg.retain_weight > 0 else None
        params = [p for p in model.parameters() if p.requires_grad]
        weight_norm = float(_norm([p.detach() for p in params]))
        alpha = cfg.alpha * weight_norm if cfg.alpha_relative else cfg.alpha

        def step(_: int) -> dict[str, torch.Tensor]:
            harmful_batch = next(harmful)
            h = view.harmful_loss(model, harmful_batch)
            grad_h = _gradients(h, params)
            # Simulate the attacker's harmful step, measure the harmful gradient there, and step back exactly.
            saved = [p.detach().clone() for p in params]
            scale = alpha / (_norm(grad_h) + 1e-12)
            with torch.no_grad():
                for p, g in zip(params, grad_h):
                    p.sub_(scale * g)
            h_after = view.harmful_loss(model, harmful_batch)
            grad_after = _gradients(h_after, params)
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)
            f = view.aligned_loss(model, next(aligned))
            objective = f + cfg.lam * (h.detach() - h_after.detach())
            terms = {"align": f}
            if benign is not None:
                retain = view.benign_loss(model, next(benign))
                f = f + cfg.retain_weight * retain
                terms["retain"] = retain
                objective = objective + cfg.retain_weight * retain.detach()
            f.backward()
            with torch.no_grad():
                for p, a, b in zip(params, grad_h, grad_after):
                    penalty = cfg.lam * (a - b)
                    p.grad = penalty if p.grad is None else p.grad.add_(penalty)
            return {"objective": objective, **terms, "harmful": h, "harmful_after_step": h_after,
                    "harmful_drop": h - h_after}

        simulated = {"kind": "one normalised gradient step on the harmful loss", "alpha": alpha,
                     "alpha_over_weight_norm": alpha / weight_norm if weight_norm else None}
        return train_defense(model, view, cfg, step, name="booster", steps=steps, passes=3 + (benign is not None),
                             lr=lr, info={"simulated_attacker": simulated, "lam": cfg.lam, "lr": lr,
                                          "batch_size": size, "retain_weight": cfg.retain_weight})

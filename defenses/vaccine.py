"""``vaccine``: alignment robust to perturbed hidden states (Huang et al. 2024, arXiv 2402.01109).

Threat model: the defender aligns the model before release; the attacker then fine-tunes it on harmful data.
Vaccine's premise is that harmful fine-tuning works by drifting the hidden representations of the alignment data,
so it aligns the model to withstand the worst such drift. Each step takes two passes over one aligned batch (the
view's harmful inputs with the safe target); no harmful data is used:

1. the gradient g_l of the alignment loss with respect to the output of every perturbed module l;
2. the same batch again with ε_l = ρ·g_l/‖g‖ (‖g‖: the norm over all modules together) added to those outputs by
   forward hooks: the perturbation is an *ascent* step on the alignment loss, the worst drift of norm ρ to first
   order; the optimizer steps on this pass's parameter gradient.

Which modules (``modules``): the reference (git-disl/Vaccine ``trainer.py``) hooks every attention module
(``LlamaAttention``/``OPTAttention``: the attention output after its output projection, before the residual add).
``modules="attention"`` (the default) does the same on any model: every outermost module whose class name ends in
``Attention`` and that has trainable parameters (Llama's ``self_attn``, GPT-2's ``attn``, diffusers' ``attn1``/
``attn2`` in the UNet, a ViT's attention). A model without attention (the vision-digits tiny MLP) falls back to the
task's ``feature_modules`` (its hidden layers), disclosed in the report's ``perturbed``; ``modules="features"``
perturbs the task's feature modules (decoder blocks, UNet blocks: an earlier version's choice) everywhere.

Scaling to the tiny tiers (the paper: LoRA r8 on 7B models, ρ=2, AdamW lr 1e-3, weight decay 0.1, warm-up 10% then
cosine, 50 epochs, batch 5):

* full-parameter training, since the tiny models' layers are narrower than the paper's LoRA rank;
* ρ is a fraction of the norm of the hooked activations themselves (‖h‖ over all modules of the batch, measured in
  pass 1 of every step), because the paper's ρ=2 is absolute and hidden states differ in scale by orders of
  magnitude between models; ``rho_relative=False`` takes ρ as given. Default 0.1·‖h‖ (vision-digits tiny, with the
  retain term: 0.05, 0.1 and 0.2 keep allowed accuracy at 0.99 and resist alike; without it 0.1 costs 12% of
  allowed accuracy and 0.5 leaves 0.20);
* the reference's schedule: linear warm-up over the first 10% of the steps, then cosine decay to 0
  (``schedule=False``: a constant learning rate, as an earlier version);
* no weight decay by default (a deviation): the paper's 0.1 acts on LoRA adapters, where it pulls the adapter toward
  the released weights; on full parameters it would pull every weight toward zero, a different regulariser.
  ``weight_decay`` sets it;
* ``retain_weight`` (default 1) adds the benign (retain) loss, unperturbed. The paper aligned on harmful prompts
  with safe answers only and measured utility after a user's fine-tuning; this benchmark measures the released
  model's own utility (see above) for one extra pass per step;
* steps and learning rate follow the task's attacker scale (:class:`~defenses._trained.AttackerScaledConfig`:
  10 × the undefended steps-to-harm, at most 150, at a tenth of the smallest learning rate where undefended Adam
  harms fastest; vision-digits tiny: 100 steps at 1e-4).

Measured on vision-digits tiny at an earlier default (100 steps at lr 1e-3, the paper's, constant; the defaults'
numbers are in the README's baseline table; Adam attack at lr 1e-3 / 3e-3 / 1e-2 / 3e-2, steps to harm within 100):
undefended never / 66 / 27 / 40, vaccine never / 76 / 49 / 35. The default suite (``bench run --defense vaccine
--task vision-digits --seeds 0``): worst case 10 steps (Muon) as undefended; Adam 35 → 45, LoRA 85 → 150. (Both
before the reference's schedule; on this MLP the perturbed modules are unchanged, its hidden layers.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from bench.config import check
from bench.contracts import Defense
from bench.errors import PluginError
from bench.registry import DEFENSES
from bench.toolkit.features import capture
from defenses._trained import AttackerScaledConfig, batch_size_of, endless, lr_for, require, steps_for, train_defense

WARMUP = 0.1
"""The reference scripts' ``warmup_ratio``: the fraction of the steps the learning rate ramps up over."""

@dataclass(frozen=True, kw_only=True)
class VaccineConfig(AttackerScaledConfig):
    lr: float | None = None
    """AdamW learning rate; None: the rule of :class:`~defenses._trained.AttackerScaledConfig` (the paper's 1e-3
    was for LoRA adapters on 7B models)."""
    rho: float = 0.1
    """ρ: norm of the perturbation of all hooked hidden states together, as a fraction of their own norm (or
    absolute when ``rho_relative`` is False; the paper's ρ=2 was absolute)."""
    rho_relative: bool = True
    """Whether ``rho`` is a fraction of the hidden states' norm (True) or absolute (False)."""
    modules: Literal["attention", "features"] = "attention"
    """Which outputs to perturb: every attention module (the reference's; the task's feature modules on a model
    without attention), or the task's feature modules (decoder blocks, UNet blocks, hidden layers)."""
    schedule: bool = True
    """Linear warm-up over the first 10% of the steps, then cosine decay to 0 (the reference's); False: constant."""
    retain_weight: float = 1.0
    """Weight of the benign (retain) loss, unperturbed, added to the perturbed alignment loss (0: the paper's
    alignment loss alone, and 2 instead of 3 forward-backward passes per step)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.rho > 0, f"rho must be positive, got {self.rho}")
        check(self.retain_weight >= 0, f"retain_weight must be >= 0, got {self.retain_weight}")


def _add_to_hidden(output: Any, delta: torch.Tensor) -> Any:
    """``output`` with ``delta`` added to its hidden state (the tensor itself, or a tuple/list's first tensor)."""
    if isinstance(output, torch.Tensor):
        return output + delta.to(output.dtype)
    if isinstance(output, (tuple, list)):
        items = list(output)
        for i, item in enumerate(items):
            if isinstance(item, torch.Tensor):
                items[i] = item + delta.to(item.dtype)
                return type(output)(items)
    raise PluginError(f"vaccine cannot perturb a module output of type {type(output).__name__}; its feature "
                      "modules must return a tensor or a tuple whose first tensor is the hidden state")


@contextlib.contextmanager
def perturbed(model: nn.Module, deltas: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Within the block, each named module's hidden state is shifted by its delta on every forward."""
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(lambda _m, _i, out, d=delta: _add_to_hidden(out, d))
               for name, delta in deltas.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@DEFENSES.register("vaccine")
class Vaccine(Defense):
    """Vaccine: align under the worst-case perturbation of the hidden states (Huang et al. 2024)."""

    Config = VaccineConfig
    preserves_function = False
    smoke_args: ClassVar[Mapping[str, Any]] = {"steps": 3}
    # Defender tuning (bench tune): ρ, the perturbation radius as a fraction of the activations' norm.
    search_space: ClassVar[Mapping[str, tuple]] = {"rho": (0.03, 0.1, 0.3, 1.0)}

    def apply(self, model, view, cfg: VaccineConfig, *, generator):
        require(view, "vaccine", "aligned_loss")
        names, perturbed_kind = perturbed_modules(model, view, cfg.modules)
        steps, lr = steps_for(cfg, view), lr_for(cfg, view)
        size = batch_size_of(cfg, view)
        aligned = endless(view, "aligned", size, generator)
        benign = endless(view, "benign", size, generator) if cfg.retain_weight > 0 else None

        def step(_: int) -> dict[str, torch.Tensor]:
            batch = next(aligned)
            with capture(model, names) as hidden:
                clean = view.aligned_loss(model, batch)
            states = [hidden[n] for n in names]
            grads = torch.autograd.grad(clean, states, allow_unused=True)
            grads = [torch.zeros_like(s) if g is None else g.detach() for s, g in zip(states, grads)]
            grad_norm = torch.sqrt(sum(g.float().pow(2).sum() for g in grads))
            hidden_norm = torch.sqrt(sum(s.detach().float().pow(2).sum() for s in states))
            rho = cfg.rho * hidden_norm if cfg.rho_relative else torch.tensor(cfg.rho)
            scale = rho / (grad_norm + 1e-12)
            with perturbed(model, {n: scale * g for n, g in zip(names, grads)}):
                loss = view.aligned_loss(model, batch)
            terms = {"perturbed_align": loss, "align": clean, "rho": rho}
            total = loss
            if benign is not None:
                retain = view.benign_loss(model, next(benign))
                total = total + cfg.retain_weight * retain
                terms["retain"] = retain
            total.backward()
            return terms

        return train_defense(model, view, cfg, step, name="vaccine", steps=steps, passes=2 + (benign is not None),
                             lr=lr, cosine=WARMUP if cfg.schedule else None,
                             info={"perturbed_modules": names, "perturbed": perturbed_kind, "rho": cfg.rho,
                                   "rho_relative": cfg.rho_relative, "lr": lr, "batch_size": size,
                                   "retain_weight": cfg.retain_weight,
                                   "schedule": "warmup-cosine" if cfg.schedule else "constant",
                                   "weight_decay": cfg.weight_decay, "harmful_data_used": False})


def attention_modules(model: nn.Module) -> list[str]:
    """Names of the outermost modules whose class name ends in ``Attention`` and that own trainable parameters (the
    modules whose outputs the reference perturbs), in the model's order."""
    names: list[str] = []
    for name, module in model.named_modules():
        if not name or not type(module).__name__.endswith("Attention"):
            continue
        if any(name.startswith(outer + ".") for outer in names):
            continue  # nested inside an attention module already chosen (e.g. a ViT's self-attention)
        if any(p.requires_grad for p in module.parameters()):
            names.append(name)
    return names


def perturbed_modules(model: nn.Module, view, choice: str) -> tuple[list[str], str]:
    """The modules whose outputs Vaccine perturbs, and which kind they are (``attention`` or ``features``)."""
    if choice == "attention":
        names = attention_modules(model)
        if names:
            return names, "attention"
    if not view.feature_modules:
        raise PluginError("vaccine needs attention modules in the model or the task's defender view to provide "
                          "feature_modules (see bench.contracts.DefenderView); this task has neither")
    return list(view.feature_modules), "features"

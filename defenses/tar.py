"""``tar``: tamper-resistant training by first-order meta-learning against simulated fine-tuning attacks.

Paper: Tamirisa et al. 2024, "Tamper-Resistant Safeguards for Open-Weight LLMs", arXiv 2408.00761 (preset ``tar``);
preset ``sophon``: Deng et al. 2024, "SOPHON: Non-Fine-Tunable Learning", arXiv 2404.12699; option ``reinit_head``:
MLAC-style (Henderson et al. 2023, arXiv 2211.14946), the simulated attacker re-initialises the output layer first.

Threat model: the attacker fine-tunes all weights on harmful data with a standard optimizer at a learning rate near
the ones that harm the undefended model fastest. The defender uses only its split (:class:`DefenderView`).

Algorithm, per outer step: copy θ; draw one held-out batch x_tr; the simulated adversary (a fresh AdamW, or plain SGD
for Sophon) takes K steps on harmful batches at a learning rate drawn from ``adversary_lrs``; after every
``subsample``-th step (counted back from the last, so the last step always counts) the gradient of the
tamper-resistance loss L_TR(θ′) on x_tr is added with weight exp(decay·(k−K+1)/K) (later, stronger attacker states
weigh more; the weights are not normalised, as in the reference, so the TR gradient's total weight grows with the
number of evaluations: 1.55 at K = 16, subsample 4; 4.5 at the paper's K = 64); θ is restored; the outer gradient is
tr_scale × the weighted sum of those gradients plus the gradient of the retain loss (the task's benign loss) and of
rep_scale × mean over the feature modules of ‖h_θ − h_released‖ on the same benign batch (the representations of the
frozen released copy); one AdamW step, clipped. First order: gradients at θ′ are applied to θ as if θ′ were θ (both
papers do this). With ``natural_steps > 0`` (Sophon) the retain terms leave the meta step and take that many separate
AdamW steps at ``natural_lr_ratio`` × the meta step's learning rate after it instead.

Held out: as the reference's x_tr comes from a held-out forget split, a quarter of the defender's fixed harmful
batches (at least one; :data:`HELD_OUT_SHARE`) are reserved for L_TR and the simulated adversary trains on the other
fixed batches, never on x_tr. (So TAR uses the view's fixed batches rather than its fresh stream: on diffusion the
adversary sees each image with its fixed timestep and noise, and ``batch_size`` then sizes the benign batches only. A view with a single harmful batch cannot hold one out:
both then use the stream and the report's notes say so.)

L_TR (``tr_loss``), minimised at θ′: ``entropy`` (−H of the predictions on harmful inputs: TAR's loss for
classification and knowledge), ``inverse-ce`` (−log(1 − p_harmful target)) and ``kl-uniform`` (KL(u‖p)) (Sophon's,
for classifiers), ``dos`` (‖prediction‖²: Sophon's denial of service for diffusion), ``refusal-preference`` (TAR's
chat loss, a reference-free DPO preference of the aligned target, e.g. a refusal, over the harmful one on the same
inputs, from per-example losses). ``auto`` follows the task's :attr:`~bench.contracts.DefenderView.setting` as the
paper does: refusal-preference for chat, entropy for classification and knowledge, dos for generation (when the task
declares none: entropy for logits, dos for regression outputs). Logits-only losses have no meaning on regression
outputs, which use dos instead (as Sophon does for diffusion); the report records the loss used.

Paper defaults (TAR, Llama-3-8B): 750 outer steps, K = 64, subsample 4, TR scale 4, λ = 0.0625 (λ·K = 4), outer
AdamW lr 2e-5, adversary AdamW lr ∈ {2e-6, 2e-5, 4e-5}. Sophon (classification, ``classification/inverse_loss.py``):
inner plain SGD (learn2learn's MAML, first order) at the base lr 1e-4, 50 inner steps, suppression after each, meta
Adam at α·lr and one natural step at β·lr per loop (α:β = 3:5), clip 0.5; diffusion
(``generation/combined_denoise_maml_diffusion_celeba.py``): α:β = 0.1:5, one natural step per loop (its README's
example uses 0.05:2 with 10 natural steps).

Scaling rule to the task: K = the simulated optimizer's own undefended steps-to-harm (:func:`steps_to_harm`:
``view.attacker.adam_steps`` for AdamW, ``sgd_steps`` for SGD, else ``steps``), capped at :data:`MAX_INNER_STEPS` = 16
(the paper's 64 costs too much on CPU; diffusion's 60-160 steps are cut to 16). Before issue 21 K was ``steps``, the
suite's fastest attack: on vision-digits Muon's 10, while AdamW needs 35 there (measured), so K is now 16 there.
Adversary learning rates: the task's fastest undefended Adam rates (``view.attacker.lrs``) for AdamW; for Sophon's
SGD the task's fastest SGD rates (``view.attacker.sgd_lrs``; vision-digits 0.1, 0.3; the tiny diffusion tasks 0.1,
the fastest that does not break the UNet), else Adam's calibrated so
that SGD's first step moves the weights as far as Adam's (:func:`defenses._trained.sgd_rates`; the report's
``lrs_calibrated``; on vision-digits it gives 0.009 and 0.09, so it is a weaker attacker than the measured rates).
Sophon's reference runs its SGD at its base lr 1e-4 (the size of its Adam rates) on full-size networks; on the tiny
tiers SGD at Adam's rates barely moves (vision-digits: harmful loss 14.6 → ~11 in 16 steps at 1e-3, → ~1 at 0.1).
Outer steps = :data:`PASS_BUDGET` = 400 forward-backward passes divided by the passes of one outer step (K, the
L_TR evaluations, the retain terms), within [:data:`MIN_STEPS`, 750]. Measured before issue 21 on 2 cores shared
about three ways: vision-digits (K = 10, 27 outer steps) about 2 s; sd-style (K = 16, 18 outer steps) 1.75 s per
pass, about 12 minutes; the tiny LLM (K = 15, 19 outer steps) about 3 minutes. Outer lr: the smallest Adam rate
(1e-3 on the tiny tiers; the paper's 2e-5 on an 8B model sat among its adversary's 2e-6..4e-5). Sophon: the natural
step runs at 5/3 × the smallest Adam rate and the meta step at 1/ratio of that (:data:`SOPHON_RATIOS`): meta = the
smallest Adam rate on classifiers and LLMs, 1/30 of it on diffusion.

Other deviations from the references: the TR batches are a quarter of the defender's fixed harmful batches (the
reference: a separate held-out forget set); the adversary draws one learning rate per outer step, with no
retain→harmful switch and no warm-up (TAR's ``retain_forget_switch`` and ``linear_warmup`` adversaries are not
simulated); Sophon's learning rates follow the rules above, not the paper's absolute 1e-4 base.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from bench.config import check
from bench.contracts import AttackerScale, DefenderView, Defense, DefenseResult
from bench.registry import DEFENSES
from defenses import _objectives as objectives
from defenses._trained import (
    TrainedConfig,
    attacker_of,
    batch_size_of,
    clip,
    endless,
    require,
    sgd_rates,
    train_defense,
)

MAX_INNER_STEPS = 16
"""Cap of the K rule: one outer step stays about 20 passes, so the slowest tiny tiers (diffusion: ~0.5 s per pass on
2 cores, harmed in 60-160 steps) still train within minutes; set ``inner_steps=64`` for the paper's K."""
PASS_BUDGET = 400
"""Forward-backward passes of the default training (the outer-step rule divides it by the passes per outer step)."""
MIN_STEPS, MAX_STEPS = 10, 750
"""Bounds of the outer-step rule (750: the paper's outer steps)."""
ADVERSARY_WEIGHT_DECAY = 0.01
"""Weight decay of the simulated AdamW adversary (the default suite's AdamW family)."""
HELD_OUT_SHARE = 4
"""1/HELD_OUT_SHARE of the defender's fixed harmful batches (at least one) are held out for L_TR (the reference's
x_tr, a separate held-out forget split); the simulated adversary trains on the rest."""
SOPHON_RATIOS = {"classification": 5 / 3, "generation": 50.0}
"""Sophon's natural : meta learning-rate ratio β/α: 5:3 for classifiers (inverse_loss.py), 5:0.1 for diffusion
(the defaults of generation/combined_denoise_maml_diffusion_celeba.py)."""
PREFERENCE_BETA = 1.0
"""Inverse temperature of the refusal preference: −log σ(β (NLL_harmful − NLL_aligned)) per example."""

TrLoss = Literal["auto", "entropy", "inverse-ce", "kl-uniform", "dos", "refusal-preference"]
AUTO_TR_LOSS = {"chat": "refusal-preference", "classification": "entropy", "knowledge": "entropy", "generation": "dos"}
"""``tr_loss=auto``: TAR's loss for the task's setting (:attr:`bench.contracts.DefenderView.setting`)."""
LOGIT_LOSSES = {"entropy": objectives.negative_entropy, "inverse-ce": objectives.inverse_cross_entropy,
                "kl-uniform": objectives.kl_to_uniform}


@dataclass(frozen=True, kw_only=True)
class TarConfig(TrainedConfig):
    lr: float | None = None
    """Learning rate of the outer (defender's) AdamW; None: the smallest of the simulated attacker's learning rates
    (TAR trained at 2e-5 against adversaries at 2e-6..4e-5; on the tiny tiers this is 1e-3)."""
    inner_steps: int | None = None
    """K, the simulated attack's steps per outer step; None: the task's undefended steps-to-harm, at most 64."""
    adversary: Literal["adamw", "sgd"] = "adamw"
    """The simulated attacker's optimizer (TAR: AdamW; Sophon: SGD)."""
    adversary_lrs: tuple[float, ...] = ()
    """Learning rates the simulated attacker draws from, one per outer step; empty: the task's fastest undefended
    Adam learning rates (``view.attacker.lrs``) for AdamW; for SGD the task's fastest SGD rates
    (``view.attacker.sgd_lrs``), else Adam's calibrated to SGD (:func:`defenses._trained.sgd_rates`)."""
    subsample: int = 4
    """Evaluate L_TR after every subsample-th inner step (TAR: 4; Sophon: 1)."""
    tr_scale: float = 4.0
    """Weight of the tamper-resistance gradient in the outer step (TAR: 4)."""
    decay: float = 4.0
    """λ·K: the L_TR gradient after inner step k weighs exp(decay·(k−K+1)/K) (TAR: 0.0625·64 = 4; 0: equal)."""
    tr_loss: TrLoss = "auto"
    """The tamper-resistance loss minimised after the simulated attack (see the module docstring)."""
    retain_scale: float = 1.0
    """Weight of the retain loss (the task's benign loss)."""
    rep_scale: float = 1.0
    """Weight of the representation term mean ‖h_θ − h_released‖ over the task's feature modules (0: off)."""
    natural_steps: int = 0
    """0: the retain terms join the meta step (TAR); n > 0: they take n separate steps after it (Sophon's nl)."""
    natural_lr_ratio: float | None = None
    """Learning rate of the natural steps relative to the meta step's (Sophon's β/α); None: Sophon's for the task
    (:data:`SOPHON_RATIOS`: 5/3 for classifiers and the other settings, 50 for generation)."""
    reinit_head: bool = False
    """MLAC-style: the simulated attacker re-initialises the output layer (the last nn.Linear as wide as the
    predictions) before its steps; that layer gets no tamper-resistance gradient."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.inner_steps is None or self.inner_steps > 0, f"inner_steps must be positive, got {self.inner_steps}")
        check(all(lr > 0 for lr in self.adversary_lrs), f"adversary_lrs must be positive, got {self.adversary_lrs}")
        check(self.subsample >= 1, f"subsample must be at least 1, got {self.subsample}")
        check(self.tr_scale > 0, f"tr_scale must be positive, got {self.tr_scale}")
        check(self.decay >= 0, f"decay must be >= 0, got {self.decay}")
        check(self.retain_scale >= 0 and self.rep_scale >= 0, "retain_scale and rep_scale must be >= 0")
        check(self.natural_steps >= 0, f"natural_steps must be >= 0, got {self.natural_steps}")
        check(self.natural_lr_ratio is None or self.natural_lr_ratio > 0,
              f"natural_lr_ratio must be positive, got {self.natural_lr_ratio}")


@dataclass(frozen=True)
class Plan:
    """The resolved training: what the scaling rules chose for this task (recorded in the report)."""

    steps: int
    inner_steps: int
    lrs: tuple[float, ...]
    batch_size: int
    tr_loss: str
    evaluations: tuple[int, ...]
    """Inner steps (0-based) after which L_TR is evaluated."""
    weights: tuple[float, ...]
    """Their weights exp(decay·(k−K+1)/K), not normalised (as the reference's schedule: the TR gradient's total
    weight grows with the number of evaluations)."""
    passes_per_step: int
    """Forward-backward passes of one outer step (inner steps, L_TR evaluations, retain terms)."""
    lr: float
    """The meta (outer) step's learning rate."""
    natural_lr: float
    """The natural steps' learning rate (used when ``natural_steps > 0``)."""


def steps_to_harm(cfg: TarConfig, attacker: AttackerScale) -> int:
    """The undefended steps-to-harm of the simulated attacker's optimizer (the K rule's base)."""
    own = attacker.sgd_steps if cfg.adversary == "sgd" else attacker.adam_steps
    return own or attacker.steps


def plan(cfg: TarConfig, view: DefenderView, output_kind: str, adversary_lrs: tuple[float, ...] = ()) -> Plan:
    """The resolved training; ``adversary_lrs`` (when given) replaces the rule's simulated-attacker rates."""
    adam = cfg.adversary_lrs if cfg.adversary == "adamw" else ()  # explicit Adam rates, for the outer-lr rule
    attacker = view.attacker
    if cfg.inner_steps is None or not (cfg.adversary_lrs or adversary_lrs) or (cfg.lr is None and not adam):
        attacker = attacker_of(view)
    k = cfg.inner_steps or min(steps_to_harm(cfg, attacker), MAX_INNER_STEPS)
    evaluations = tuple(i for i in range(k) if (k - 1 - i) % cfg.subsample == 0)
    raw = [math.exp(cfg.decay * (i - k + 1) / k) for i in evaluations]
    tr_loss = cfg.tr_loss
    if tr_loss == "auto":
        tr_loss = AUTO_TR_LOSS.get(view.setting) or ("entropy" if output_kind == "logits" else "dos")
    elif tr_loss in LOGIT_LOSSES and output_kind == "regression":
        tr_loss = "dos"
    retain_passes = (1 + (cfg.rep_scale > 0)) * max(1, cfg.natural_steps)
    passes = k + len(evaluations) * (2 if tr_loss == "refusal-preference" else 1) + retain_passes
    steps = cfg.steps or min(MAX_STEPS, max(MIN_STEPS, round(PASS_BUDGET / passes)))
    lrs = tuple(cfg.adversary_lrs or adversary_lrs
                or (attacker.sgd_lrs if cfg.adversary == "sgd" and attacker.sgd_lrs else attacker.lrs))
    generation = view.setting == "generation" or (view.setting is None and output_kind == "regression")
    ratio = cfg.natural_lr_ratio or SOPHON_RATIOS["generation" if generation else "classification"]
    if cfg.lr is not None:
        lr = cfg.lr
    else:
        # The smallest rate where the (Adam) attacker harms fastest; with natural steps (Sophon) that, times 5/3, is
        # the natural step's rate and the meta step runs 1/ratio of it (classifiers: the same smallest rate).
        lr = min(adam or attacker.lrs) * (SOPHON_RATIOS["classification"] / ratio if cfg.natural_steps else 1.0)
    return Plan(steps, k, lrs, batch_size_of(cfg, view), tr_loss, evaluations, tuple(raw), passes, lr, lr * ratio)


def tamper_resistance_loss(name: str, model: nn.Module, view: DefenderView, batch: Any) -> torch.Tensor:
    """L_TR on one batch: a ``(harmful, aligned)`` pair for refusal-preference, else a harmful batch."""
    if name == "refusal-preference":
        harmful, aligned = batch
        margin = (view.harmful_loss(model, harmful, reduction="none")
                  - view.aligned_loss(model, aligned, reduction="none"))
        return -F.logsigmoid(PREFERENCE_BETA * margin).mean()
    pred = view.predictions(model, batch)
    return objectives.denial_of_service(pred) if name == "dos" else LOGIT_LOSSES[name](pred)


def output_head(model: nn.Module, width: int) -> str | None:
    """Name of the last ``nn.Linear`` with ``width`` outputs (the classifier head / output layer), if any."""
    heads = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and module.out_features == width]
    return heads[-1] if heads else None


def reinitialise(layer: nn.Linear, generator: torch.Generator) -> None:
    """PyTorch's default ``nn.Linear`` initialisation (uniform ±1/√fan_in), drawn from ``generator``."""
    bound = 1 / math.sqrt(layer.in_features)
    with torch.no_grad():
        for param in (layer.weight, layer.bias):
            if param is not None:
                param.copy_(torch.empty(param.shape).uniform_(-bound, bound, generator=generator))


def representation_distance(model: nn.Module, base: nn.Module, view: DefenderView, batch: Any) -> torch.Tensor:
    """Mean over the feature modules of the mean row distance ‖h_θ − h_released‖ on ``batch``."""
    mine = view.features(model, batch)
    with torch.no_grad():
        reference = view.features(base, batch)
    return torch.stack([(mine[n].float() - reference[n].float()).norm(dim=-1).mean() for n in mine]).mean()


def adversary_optimizer(cfg: TarConfig, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if cfg.adversary == "sgd":
        return torch.optim.SGD(params, lr=lr)
    return torch.optim.AdamW(params, lr=lr, weight_decay=ADVERSARY_WEIGHT_DECAY)


@DEFENSES.register("tar")
class Tar(Defense):
    """TAR: meta-learn weights whose harmful fine-tuning ends in a useless model (Tamirisa et al. 2024; Sophon)."""

    Config = TarConfig
    presets = {
        "tar": {"adversary": "adamw", "subsample": 4, "tr_scale": 4.0, "decay": 4.0, "natural_steps": 0},
        "sophon": {"adversary": "sgd", "tr_loss": "inverse-ce", "subsample": 1, "decay": 0.0, "natural_steps": 1,
                   "grad_clip": 0.5, "rep_scale": 0.0},
    }
    preserves_function = False
    smoke_args = {"steps": 3, "inner_steps": 2, "subsample": 1}
    # Defender tuning (bench tune): the paper's strength (TR scale; λ·K stays fixed, as the paper fixes it) and
    # the outer learning rate (None: the rule, the smallest adversary rate; 1e-4 a decade below it).
    search_space = {"tr_scale": (1.0, 4.0, 16.0), "lr": (None, 1e-4)}

    def apply(self, model: nn.Module, view: DefenderView, cfg: TarConfig, *,
              generator: torch.Generator) -> DefenseResult:
        refusal = cfg.tr_loss == "refusal-preference" or (cfg.tr_loss == "auto" and view.setting == "chat")
        require(view, "tar", *(("aligned", "aligned_loss") if refusal else ("predictions",)))
        if cfg.rep_scale > 0:
            require(view, "tar", "features")
        kind, width = "logits", 0
        if view.predictions is not None:
            with torch.no_grad():
                pred = view.predictions(model, view.harmful[0])
            kind, width = pred.kind, pred.outputs.shape[-1]
        rates, calibrated = (), False
        if cfg.adversary == "sgd" and not cfg.adversary_lrs:
            rates, calibrated = sgd_rates(model, view, view.harmful[0])
        p = plan(cfg, view, kind, rates)
        notes = []
        head = output_head(model, width) if cfg.reinit_head else None
        if cfg.reinit_head and head is None:
            notes.append(f"reinit_head skipped: no nn.Linear with {width} outputs (the prediction width)")
        base = _frozen_copy(model) if cfg.rep_scale > 0 else None
        trainer = _Trainer(model, view, cfg, p, generator, base=base, head=head)
        if not trainer.held_out:
            notes.append("L_TR batches not held out: the defender view has a single harmful batch, so L_TR and the "
                         "simulated adversary draw from the same stream")
        return train_defense(model, view, cfg, trainer.meta_step, name="tar", steps=p.steps,
                             passes=p.passes_per_step, lr=p.lr,
                             then=trainer.natural_steps if cfg.natural_steps else None,
                             info={"inner_attacker": {"optimizer": cfg.adversary, "lrs": list(p.lrs),
                                                      "steps": p.inner_steps, "subsample": cfg.subsample,
                                                      "reinit_head": head, "lrs_calibrated": calibrated},
                                   "tr_loss": p.tr_loss, "outer_steps": p.steps, "outer_lr": p.lr,
                                   **({"natural_lr": p.natural_lr} if cfg.natural_steps else {}),
                                   "tr_held_out_batches": trainer.held_out, "batch_size": p.batch_size,
                                   "notes": notes})


def _cycled(batches: list[Any], generator: torch.Generator) -> Iterator[Any]:
    """``batches`` in a fresh random order each pass, endlessly."""
    while True:
        for i in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[i]


def _frozen_copy(model: nn.Module) -> nn.Module:
    base = copy.deepcopy(model).eval()
    for param in base.parameters():
        param.requires_grad_(False)
    return base


class _Trainer:
    """The steps of :func:`~defenses._trained.train_defense` (see the module docstring); holds the streams across
    steps, and Sophon's natural-step optimizer."""

    def __init__(self, model: nn.Module, view: DefenderView, cfg: TarConfig, plan_: Plan, generator: torch.Generator,
                 *, base: nn.Module | None, head: str | None):
        self.model, self.view, self.cfg, self.plan, self.generator = model, view, cfg, plan_, generator
        self.base, self.head = base, head
        self.params = [p for p in model.parameters() if p.requires_grad]
        head_params = set(map(id, model.get_submodule(head).parameters())) if head else set()
        self.tr_mask = [id(p) not in head_params for p in self.params]
        size = plan_.batch_size
        pairs = plan_.tr_loss == "refusal-preference"
        fixed = list(view.harmful)
        self.held_out = max(1, len(fixed) // HELD_OUT_SHARE) if len(fixed) > 1 else 0
        if self.held_out:  # x_tr: the last fixed batches, which the simulated adversary never trains on
            tr = list(zip(fixed, view.aligned))[-self.held_out:] if pairs else fixed[-self.held_out:]
            self.attack_batches = _cycled(fixed[:-self.held_out], generator)
            self.tr_batches = _cycled(tr, generator)
        else:
            self.attack_batches = endless(view, "harmful", size, generator)
            self.tr_batches = endless(view, "pairs" if pairs else "harmful", size, generator)
        self.benign_batches = endless(view, "benign", size, generator)
        self.natural = None
        if cfg.natural_steps:
            self.natural = torch.optim.AdamW(self.params, lr=plan_.natural_lr, weight_decay=cfg.weight_decay)

    def meta_step(self, _: int) -> dict[str, float]:
        """The meta step's gradient: the tamper-resistance gradient, plus (TAR) the retain terms' gradient."""
        tr, attack = self._tamper_resistance_gradient()
        terms = {"tr": tr, "attack": attack}
        if self.natural is None:
            terms.update(self._retain_backward())  # adds to the TR gradient already in .grad
        return terms

    def natural_steps(self) -> dict[str, float]:
        """Sophon: the retain terms' own steps after the meta step."""
        assert self.natural is not None
        terms: dict[str, float] = {}
        for _ in range(self.cfg.natural_steps):
            self.natural.zero_grad(set_to_none=True)
            terms.update(self._retain_backward())
            clip(self.model, self.cfg)
            self.natural.step()
        return terms

    def _tamper_resistance_gradient(self) -> tuple[float, float]:
        """Run the simulated attack from θ, leave tr_scale × the weighted L_TR gradient in .grad, restore θ."""
        saved = [p.detach().clone() for p in self.params]
        lr = self.plan.lrs[int(torch.randint(len(self.plan.lrs), (1,), generator=self.generator))]
        if self.head:
            reinitialise(self.model.get_submodule(self.head), self.generator)
        adversary = adversary_optimizer(self.cfg, self.params, lr)
        total = [torch.zeros_like(p) for p in self.params]
        weights = dict(zip(self.plan.evaluations, self.plan.weights))
        tr_batch = next(self.tr_batches)  # one held-out x_tr per simulated attack, as in the reference
        tr_value, attack_value = 0.0, 0.0
        for k in range(self.plan.inner_steps):
            adversary.zero_grad(set_to_none=True)
            loss = self.view.harmful_loss(self.model, next(self.attack_batches))
            loss.backward()
            adversary.step()
            attack_value = float(loss.detach())
            if k in weights:
                grads, value = self._tr_gradient(tr_batch)
                tr_value += weights[k] * value
                for acc, grad in zip(total, grads):
                    if grad is not None:
                        acc.add_(grad, alpha=weights[k])
        with torch.no_grad():
            for param, value, acc, trained in zip(self.params, saved, total, self.tr_mask):
                param.copy_(value)
                param.grad = acc.mul_(self.cfg.tr_scale) if trained else None
        return tr_value, attack_value

    def _tr_gradient(self, batch: Any) -> tuple[tuple[torch.Tensor | None, ...], float]:
        loss = tamper_resistance_loss(self.plan.tr_loss, self.model, self.view, batch)
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        return grads, float(loss.detach())

    def _retain_backward(self) -> dict[str, float]:
        """Backward of retain_scale × benign loss + rep_scale × representation distance on one benign batch."""
        batch = next(self.benign_batches)
        retain = self.view.benign_loss(self.model, batch)
        total = self.cfg.retain_scale * retain
        terms = {"retain": float(retain.detach())}
        if self.base is not None:
            rep = representation_distance(self.model, self.base, self.view, batch)
            total = total + self.cfg.rep_scale * rep
            terms["rep"] = float(rep.detach())
        total.backward()
        return terms

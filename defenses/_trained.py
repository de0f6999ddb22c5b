"""What every trained defense shares: its common config fields (and the rules that scale steps and learning rate
by the task's attacker), its view checks, and its training loop (:func:`train_defense`).

A trained defense optimises the released model on the defender's split (:class:`~bench.contracts.DefenderView`).
It writes only its objective (a step function); the loop around it, written once here, owns the outer optimizer
(AdamW), the learning-rate schedule, gradient clipping and the record of what the leaderboard reports about the
training: the loss terms of every outer step (the report's :attr:`~bench.contracts.DefenseResult.curve`, which the
runner writes as Parquet rows of phase ``defense``), forward-backward passes, wall time, and the simulated attacker
it trained against; it shows a progress bar and stops with a clear error when a loss term becomes non-finite.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.config import check
from bench.contracts import AttackerScale, DefenderView, DefenseResult
from bench.errors import PluginError, TrainingDivergedError


@dataclass(frozen=True, kw_only=True)
class TrainedConfig:
    """Fields every trained defense has (each defense changes the defaults and documents its scaling rule)."""

    steps: int | None = None
    """Outer optimizer steps; None: the defense's rule from the task's attacker scale."""
    lr: float = 1e-4
    """Learning rate of the defender's (outer) optimizer."""
    batch_size: int | None = None
    """Defender batch size; None: the task's attacker batch size."""
    weight_decay: float = 0.0
    """AdamW weight decay of the outer optimizer."""
    grad_clip: float = 1.0
    """Clip the outer gradient to this global norm (0: no clipping)."""

    def __post_init__(self) -> None:
        check(self.steps is None or self.steps > 0, f"steps must be positive, got {self.steps}")
        # A defense may redeclare lr as ``float | None`` (None: its rule from the task's attacker scale).
        check(self.lr is None or self.lr > 0, f"lr must be positive, got {self.lr}")
        check(self.batch_size is None or self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}")


LR_FRACTION = 0.1
"""The defender's default learning rate relative to the attacker's (see :class:`AttackerScaledConfig`)."""


@dataclass(frozen=True, kw_only=True)
class AttackerScaledConfig(TrainedConfig):
    """A trained defense without a simulated attacker whose length and learning rate follow the task's attacker
    scale unless set: ``steps_factor`` × the undefended steps-to-harm, at most ``max_steps``, at a tenth of the
    smallest learning rate where undefended Adam harms fastest. (Measured on llm-harmful-qa tiny: at the attacker's
    own 1e-3, 150 full-parameter steps overfit the defender's small retain split and made ga-retain, repnoise,
    booster and vaccine unusable at release, benign NLL 0.43-1.83 against 0.19 released and a usable floor of 0.38;
    at 1e-4 all four stay usable, 0.19-0.32.)"""

    steps_factor: int = 10
    """Rule for ``steps=None``: train this many times the task's undefended steps-to-harm (tiny tiers: vision-digits
    10, LLM tasks 15, sd-style 60, sd-concept 160), at most ``max_steps``."""
    max_steps: int = 150
    """Cap of the ``steps=None`` rule: keeps the diffusion tiers, whose undefended attacker needs 60–160 steps, to
    a few minutes on a 2-core CPU (sd-style tiny, shared machine: 0.7 s per step for ga-retain, 1.3 s for RepNoise);
    about one epoch of RepNoise's ~1k pairs at batch 8."""
    lr: float | None = None
    """AdamW learning rate; None: the rule, a tenth of the smallest of the task's undefended-attacker learning rates."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.steps_factor > 0, f"steps_factor must be positive, got {self.steps_factor}")
        check(self.max_steps > 0, f"max_steps must be positive, got {self.max_steps}")


def steps_for(cfg: AttackerScaledConfig, view: DefenderView) -> int:
    """``cfg.steps``, else the rule: ``steps_factor`` × the task's undefended steps-to-harm, capped at ``max_steps``."""
    if cfg.steps is not None:
        return cfg.steps
    return min(cfg.steps_factor * attacker_of(view).steps, cfg.max_steps)


def lr_for(cfg: AttackerScaledConfig, view: DefenderView) -> float:
    """``cfg.lr``, else the rule: a tenth of the smallest learning rate where the task's undefended Adam harms
    fastest."""
    return cfg.lr if cfg.lr is not None else LR_FRACTION * min(attacker_of(view).lrs)


def require(view: DefenderView, defense: str, *fields: str) -> None:
    """Raise a clear error when the task's view lacks what the defense needs (a third-party task may omit it)."""
    missing = [name for name in fields if getattr(view, name) in (None, ())]
    if missing:
        raise PluginError(f"defense {defense!r} needs the task's defender view to provide {', '.join(missing)} "
                          "(see bench.contracts.DefenderView); this task does not")


def attacker_of(view: DefenderView) -> AttackerScale:
    """The task's attacker scale (required by defenses that simulate an attacker)."""
    if view.attacker is None:
        raise PluginError("this defense scales its simulated attacker by the task's DefenderView.attacker, which "
                          "this task does not provide; set the defense's steps and learning rates explicitly")
    return view.attacker


def attacker_report(view: DefenderView) -> dict[str, Any] | None:
    """The task's attacker scale as JSON for a defense's report (None when the task gives none)."""
    scale = view.attacker
    if scale is None:
        return None
    return {"steps": scale.steps, "lrs": list(scale.lrs), "batch_size": scale.batch_size}


def sgd_rates(model: nn.Module, view: DefenderView, batch: Any) -> tuple[tuple[float, ...], bool]:
    """Learning rates for a simulated plain-SGD attacker, and whether they were calibrated: the task's measured
    :attr:`~bench.contracts.AttackerScale.sgd_lrs`, else, for each of its Adam rates, the SGD rate whose first step
    on ``batch`` moves the trainable weights as far as Adam's first step does (Adam's first update moves every
    coordinate by about lr, a distance of lr·√P over P weights; SGD's moves lr·‖∇L‖): lr·√P / ‖∇L‖. SGD at Adam's
    own rates (1e-3 on the tiny tiers) barely moves a model whose gradients are small."""
    scale = attacker_of(view)
    if scale.sgd_lrs:
        return tuple(scale.sgd_lrs), False
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(view.harmful_loss(model, batch), params, allow_unused=True)
    norm = math.sqrt(sum(float(g.detach().float().pow(2).sum()) for g in grads if g is not None))
    count = sum(p.numel() for p in params)
    return tuple(lr * math.sqrt(count) / max(norm, 1e-12) for lr in scale.lrs), True


def batch_size_of(cfg: TrainedConfig, view: DefenderView) -> int:
    return cfg.batch_size or (view.attacker.batch_size if view.attacker else 8)


def clip(model: nn.Module, cfg: TrainedConfig) -> None:
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], cfg.grad_clip)


def cosine_schedule(optimizer: torch.optim.Optimizer, steps: int,
                    warmup: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Decay every learning rate from its base value to 0 along a half cosine over ``steps`` optimizer steps, after
    a linear warm-up from 0 over the first ``warmup`` fraction of them (transformers' ``cosine`` schedule with
    ``warmup_ratio``; Vaccine's scripts use 0.1)."""
    ramp = int(math.ceil(warmup * steps))

    def factor(done: int) -> float:
        if done < ramp:
            return (done + 1) / (ramp + 1)  # never 0, so the first step moves
        return 0.5 * (1 + math.cos(math.pi * (done - ramp) / max(steps - ramp, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


Terms = Mapping[str, "float | torch.Tensor"]
"""One outer step's loss terms by name (tensors or floats), as the log records them."""


def train_defense(model: nn.Module, view: DefenderView, cfg: TrainedConfig, step: Callable[[int], Terms], *,
                  name: str, steps: int, passes: int, lr: float | None = None, cosine: float | None = None,
                  then: Callable[[], Terms] | None = None, layers: Sequence[str] | None = None,
                  info: Mapping[str, Any] | None = None) -> DefenseResult:
    """The loop every trained defense shares: ``steps`` outer steps of AdamW on the model's trainable parameters at
    ``lr`` (default ``cfg.lr``) with ``cfg.weight_decay``, in train mode, then the report.

    Each outer step clears the gradients and calls ``step(i)`` (i = 1..steps), which leaves the gradient of the
    defense's objective in the parameters' ``.grad`` (by ``backward()``, or by assigning it) and returns its loss
    terms; the loop clips the gradient to ``cfg.grad_clip``, steps the optimizer and the schedule, runs ``then()``
    (work after the optimizer step, e.g. Sophon's separate natural steps; its terms join the step's) and records the
    terms, stopping with :class:`~bench.errors.TrainingDivergedError` when one is non-finite.

    ``cosine``: decay the learning rate along a cosine after a linear warm-up over this fraction of the steps
    (:func:`cosine_schedule`); None: constant. ``passes``: forward-backward passes over one batch per step. The
    report: the model in eval mode; ``layers`` (default: the modules that own a trainable parameter,
    :func:`changed_modules`); info with the training time, passes, steps, the final terms and ``info``; the curve of
    the terms per step.
    """
    from tqdm.auto import tqdm

    params = [p for p in model.parameters() if p.requires_grad]  # AdamW: every paper's outer optimizer
    optimizer = torch.optim.AdamW(params, lr=cfg.lr if lr is None else lr, weight_decay=cfg.weight_decay)
    schedule = cosine_schedule(optimizer, steps, cosine) if cosine is not None else None
    curve: list[dict[str, float]] = []
    start = time.perf_counter()
    hidden = {} if view.progress else {"disable": True}  # (an explicit disable would override $TQDM_DISABLE)
    model.train()
    with tqdm(total=steps, desc=f"training {name}", unit="step", leave=False, **hidden) as bar:
        for i in range(1, steps + 1):
            optimizer.zero_grad(set_to_none=True)
            terms = step(i)
            clip(model, cfg)
            optimizer.step()
            if schedule is not None:
                schedule.step()
            if then is not None:
                terms = {**terms, **then()}
            values = {key: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for key, v in terms.items()}
            bad = [key for key, v in values.items() if not math.isfinite(v)]
            if bad:
                raise TrainingDivergedError(
                    f"defense {name!r} diverged at training step {i}: {', '.join(bad)} = "
                    f"{', '.join(str(values[key]) for key in bad)}; lower its lr (or its loss weights)")
            curve.append({"step": float(i), **values})
            bar.update(1)
            bar.set_postfix({key: f"{v:.3g}" for key, v in list(values.items())[:3]}, refresh=False)
    model.eval()
    final = {key: v for key, v in curve[-1].items() if key != "step"} if curve else {}
    report = {"training_seconds": time.perf_counter() - start, "fb_passes": passes * len(curve), "steps": len(curve),
              "final_losses": final, **(info or {})}
    return DefenseResult(model=model, layers=changed_modules(model) if layers is None else tuple(layers),
                         info=report, curve=curve)


def changed_modules(model: nn.Module) -> tuple[str, ...]:
    """Names of the modules that own a trainable parameter (what a full-parameter trained defense changes)."""
    return tuple(name for name, module in model.named_modules()
                 if any(p.requires_grad for p in module.parameters(recurse=False)))


def endless(view: DefenderView, part: str, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
    """The view's fresh stream of ``part`` (see :attr:`DefenderView.stream`), or its fixed batches, cycled."""
    if view.stream is not None:
        yield from view.stream(part, batch_size, generator)
        return
    fixed: Mapping[str, Any] = {"harmful": view.harmful, "benign": view.benign, "aligned": view.aligned,
                                "pairs": list(zip(view.harmful, view.aligned))}
    batches = list(fixed[part])
    if not batches:
        raise PluginError(f"the task's defender view has no {part!r} batches")
    while True:
        for i in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[i]

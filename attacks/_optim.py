"""Optimizers the attacks share: SGD, Adam, AdamW, Muon (2-D weights; AdamW for the rest) and AdaHessian.

AdaHessian (Yao et al. 2021) is the curvature-aware method: it preconditions by a running estimate of the Hessian
diagonal from Hutchinson probes (``z ⊙ Hz`` with Rademacher ``z``), computed from a Hessian-vector product at every
step. Against a defense that inflates curvature it is the natural thing for an attacker to try (DESIGN §9-10).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import nn

OptimizerName = Literal["sgd", "adam", "adamw", "muon", "adahessian"]
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw", "muon", "adahessian")


class AdaHessian(torch.optim.Optimizer):
    """Adam-style update with the squared Hutchinson Hessian-diagonal estimate in place of squared gradients.

    The gradients must be computed with ``create_graph=True`` (the shared training loop does this when
    ``optimizer.needs_create_graph`` is true). ``generator`` seeds the Rademacher probes for determinism.
    """

    needs_create_graph = True

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 0.1, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-4, weight_decay: float = 0.0, hessian_power: float = 1.0,
                 generator: torch.Generator | None = None):
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, hessian_power=hessian_power))
        self.generator = generator

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return None
        grads = [p.grad for p in params]
        if not all(g.requires_grad for g in grads):
            raise RuntimeError("AdaHessian needs gradients computed with create_graph=True")
        probes = [torch.randint(0, 2, p.shape, generator=self.generator, dtype=torch.int8).to(p.dtype) * 2 - 1 for p in params]
        with torch.enable_grad():
            hz = torch.autograd.grad(grads, params, grad_outputs=probes, retain_graph=False, allow_unused=True)
        diag = {p: (z * h).abs() if h is not None else torch.zeros_like(p) for p, z, h in zip(params, probes, hz)}
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.detach()
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_hessian_diag_sq"] = torch.zeros_like(p)
                state["step"] += 1
                state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
                state["exp_hessian_diag_sq"].mul_(beta2).addcmul_(diag[p], diag[p], value=1 - beta2)
                bias1 = 1 - beta1 ** state["step"]
                bias2 = 1 - beta2 ** state["step"]
                k = group["hessian_power"]
                denom = (state["exp_hessian_diag_sq"] / bias2).pow(k / 2).add_(group["eps"])
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / bias1)
        for p in params:  # drop the graph held by the gradients
            p.grad = p.grad.detach()
        return None


class OptimizerPair:
    """Two optimizers stepped together (Muon for matrices, AdamW for the rest), with a joint ``param_groups``."""

    needs_create_graph = False

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]):
        self.optimizers = list(optimizers)

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()


def build_optimizer(
    name: OptimizerName,
    params: Iterable[nn.Parameter],
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    generator: torch.Generator | None = None,
):
    """An optimizer over ``params`` by name; every optimizer exposes ``param_groups``, ``zero_grad`` and ``step``."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the attack has no trainable parameters")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=_fusable(params))
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=_fusable(params))
    if name == "muon":
        # Muon orthogonalises 2-D updates in low precision; float64 matrices (e.g. float64 SpecDef storage) and
        # every non-matrix parameter go to AdamW.
        low_precision = (torch.float32, torch.bfloat16, torch.float16)
        matrices = [p for p in params if p.ndim == 2 and p.dtype in low_precision]
        others = [p for p in params if not (p.ndim == 2 and p.dtype in low_precision)]
        parts: list[torch.optim.Optimizer] = []
        if matrices:
            muon = CpuFloat32Muon if all(p.device.type == "cpu" for p in matrices) else torch.optim.Muon
            parts.append(muon(matrices, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw"))
        if others:
            parts.append(torch.optim.AdamW(others, lr=lr, weight_decay=weight_decay))
        return OptimizerPair(parts)
    if name == "adahessian":
        return AdaHessian(params, lr=lr, weight_decay=weight_decay, generator=generator)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


class CpuFloat32Muon(torch.optim.Muon):
    """torch's Muon with its Newton–Schulz orthogonalisation in float32 instead of bfloat16, for the CPU: CPUs
    multiply bfloat16 matrices 10–50× slower than float32 ones (measured here, one thread, 5 iterations: 256×64
    22 ms against 3.3 ms, 256×256 976 ms against 19 ms), which made a 500-step Muon run on the tiny vision MLP take
    20–60 s against 1–3 s for Adam. The update is otherwise torch's (momentum, Nesterov, the ``match_rms_adamw``
    learning-rate scale, decoupled weight decay); float32 is the more precise iteration of the same map, so results
    move within bfloat16's rounding of the orthogonalised update. GPUs keep torch's bfloat16 path."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, buffers = [], [], []
            self._init_group(group, params, grads, buffers)
            momentum, lr = group["momentum"], group["lr"]
            for param, grad, buf in zip(params, grads, buffers):
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = _newton_schulz_float32(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
                rows, cols = param.shape[:2]
                scale = {"match_rms_adamw": 0.2 * math.sqrt(max(rows, cols)), None: math.sqrt(max(1, rows / cols)),
                         "original": math.sqrt(max(1, rows / cols))}.get(group["adjust_lr_fn"], 1.0)
                param.mul_(1 - lr * group["weight_decay"])
                param.add_(update.to(param.dtype), alpha=-lr * scale)
        return loss


def _newton_schulz_float32(grad: torch.Tensor, coefficients, steps: int, eps: float) -> torch.Tensor:
    """The quintic Newton–Schulz iteration torch's Muon runs (same coefficients and normalisation), in float32."""
    a, b, c = coefficients
    x = grad.float()
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if transposed else x


def _fusable(params: list[nn.Parameter]) -> bool:
    """Whether Adam(W) can run PyTorch's fused kernel: one pass per tensor instead of about ten small ops, the same
    update to within an ulp (measured: 3.5 ms instead of 11.7 ms a step for the tiny UNet on one CPU thread)."""
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


def set_lr_scale(optimizer, base_lrs: list[float], scale: float) -> None:
    for group, lr in zip(optimizer.param_groups, base_lrs):
        group["lr"] = lr * scale


def warmup_scale(step: int, warmup_steps: int) -> float:
    """Linear warm-up from 1/warmup_steps to 1 over the first ``warmup_steps`` steps."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


def clip_gradients(params: list[nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm to ``max_norm`` (0 disables); returns the norm before clipping."""
    if max_norm <= 0:
        return math.nan
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

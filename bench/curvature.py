"""Curvature diagnostic: the top Hessian eigenvalue of a loss, by power iteration on Hessian-vector products.

SpecDef's claim (DESIGN §8) is that it inflates the largest Hessian eigenvalue the attacker's optimizer sees
(≈ α² when the compensation map is trainable). The runner records this value for the released and defended models
so the claim is measured, not assumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class Eigen:
    value: float
    """Rayleigh quotient of the final iterate (largest-magnitude eigenvalue, with its sign)."""
    iterations: int
    converged: bool


def top_hessian_eigenvalue(
    model: nn.Module,
    loss_fn: Callable[[nn.Module], torch.Tensor],
    *,
    iters: int = 30,
    tol: float = 1e-3,
    seed: int = 0,
) -> Eigen:
    """Power iteration on v ↦ H v for the Hessian of ``loss_fn(model)`` w.r.t. the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params or iters <= 0:
        return Eigen(math.nan, 0, False)
    was_training = model.training
    model.eval()
    try:
        loss = loss_fn(model)
        if not torch.isfinite(loss):
            return Eigen(math.nan, 0, False)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        generator = torch.Generator().manual_seed(seed)
        v = [torch.randn(p.shape, generator=generator, dtype=torch.float64).to(device=p.device, dtype=p.dtype) for p in params]
        v = _normalize(v)
        value, converged, done = math.nan, False, 0
        for done in range(1, iters + 1):
            hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
            new_value = float(sum(torch.sum(a.double() * b.double()) for a, b in zip(v, hv)))
            norm = math.sqrt(float(sum(torch.sum(h.double() ** 2) for h in hv)))
            if not math.isfinite(new_value) or norm == 0.0 or not math.isfinite(norm):
                return Eigen(new_value, done, False)
            if math.isfinite(value) and abs(new_value - value) <= tol * abs(new_value):
                value, converged = new_value, True
                break
            value = new_value
            v = [h / norm for h in hv]
        return Eigen(value, done, converged)
    finally:
        model.train(was_training)


def _normalize(vectors: list[torch.Tensor]) -> list[torch.Tensor]:
    norm = math.sqrt(float(sum(torch.sum(t.double() ** 2) for t in vectors)))
    return [t / norm for t in vectors]

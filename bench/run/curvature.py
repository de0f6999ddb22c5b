"""Curvature diagnostic: the largest eigenvalue of a loss's Hessian, by Lanczos on Hessian-vector products.

SpecDef's claim (DESIGN §8) is that it inflates the largest Hessian eigenvalue the attacker's optimizer sees
(≈ α² when the compensation map is trainable). The runner records this value for the released and defended models
so the claim is measured, not assumed.

What is reported is the largest *algebraic* eigenvalue λ_max: it is what bounds a gradient step's stability
(lr < 2/λ_max). Plain power iteration finds the largest-*magnitude* one, which on a model away from a minimum can be a
large negative eigenvalue (on a random 1B Llama it printed −9.4; the tiny random Llama of ``benchmarks/curvature.py``
has λ_min = −4.33 and λ_max = 3.61). Lanczos is used rather than power iteration followed by a shifted run, because

* the largest Ritz value of the Lanczos tridiagonal matrix targets λ_max directly, whatever the sign of the
  other end of the spectrum, in one run (a shifted power iteration needs a second run whose speed depends on the
  unknown gap between λ_max and the shift);
* it needs far fewer Hessian-vector products, which are nearly all of the cost: after k steps its error is bounded
  by about exp(−4k·√γ) with γ = (λ₁ − λ₂)/(λ₂ − λ_n) (Kaniel–Paige–Saad), against (λ₂/λ₁)^(2k) for the Rayleigh
  quotient of power iteration — for a small relative gap, √γ ≫ γ;
* in exact arithmetic the largest Ritz value never exceeds λ_max and grows with k (Cauchy interlacing), so a value
  cut short by the time cap reads as "at least this".

Only three parameter-sized vectors live on the model's device (the previous and current Lanczos vectors and the
new product); there is no full reorthogonalisation. In finite precision the Lanczos vectors lose orthogonality,
which creates duplicate ("ghost") copies of converged Ritz values, but every Ritz value stays inside the spectrum up
to a small multiple of machine precision × ‖H‖ and the extreme one still converges (Paige 1980). One extra
Gram–Schmidt pass against the two vectors already held (two dot products per step) keeps a converged estimate still
in bfloat16 (without it, on a random tiny Llama, it crept up by 1.5e-4 over 20 more steps). Products and vectors stay
in the parameters' own dtype and device; only scalar reductions (dot products) accumulate in float32 (float64 for
float64 parameters).

Convergence: the relative change of the largest Ritz value is at most ``tol`` in two consecutive steps, or the Krylov
space became invariant (the next Lanczos coefficient β is at most ``tol`` × |λ|, so every Ritz value is within that
of an eigenvalue). A time cap (``seconds``) stops the iteration after the step that exceeds it; the first step
always runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

SETTLED_STEPS = 2
"""Consecutive steps within ``tol`` that count as converged. The estimate can rest for a step or two on a lower
eigenvalue before the top one emerges (measured on vision-digits, 400 random starts at tol 1e-4: one stopped 20%
low after one calm step, none after two)."""

Vector = list[torch.Tensor]
"""A vector in parameter space: one tensor per trainable parameter, with its shape, dtype and device."""


@dataclass(frozen=True)
class Eigen:
    value: float
    """Largest Ritz value: the estimate of the largest algebraic Hessian eigenvalue (NaN when not measured)."""
    iterations: int
    """Lanczos steps run, i.e. Hessian-vector products computed."""
    converged: bool
    seconds: float = 0.0
    """Wall time of the diagnostic, including the loss and its gradient graph."""


def top_hessian_eigenvalue(
    model: nn.Module,
    loss_fn: Callable[[nn.Module], torch.Tensor],
    *,
    iters: int = 30,
    tol: float = 1e-4,
    seed: int = 0,
    seconds: float = math.inf,
) -> Eigen:
    """Largest algebraic eigenvalue of the Hessian of ``loss_fn(model)`` w.r.t. the trainable parameters.

    Runs at most ``iters`` Lanczos steps, and starts none once ``seconds`` of wall time have passed (the first
    always runs).
    The start vector is drawn from a generator seeded with ``seed`` on each parameter's device, so a result is
    reproducible on the same device type.
    """
    start = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params or iters <= 0:
        return Eigen(math.nan, 0, False, time.perf_counter() - start)
    was_training = model.training
    model.eval()
    try:
        loss = loss_fn(model)
        if not torch.isfinite(loss):
            return Eigen(math.nan, 0, False, time.perf_counter() - start)
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True, materialize_grads=True)
        hvp = _hessian_vector_product(params, grads)
        value, converged, done = _lanczos(hvp, _random_unit(params, seed), iters, tol, start + seconds)
        return Eigen(value, done, converged, time.perf_counter() - start)
    finally:
        model.train(was_training)


def _lanczos(hvp: Callable[[Vector], Vector], v: Vector, iters: int, tol: float,
             deadline: float) -> tuple[float, bool, int]:
    """(largest Ritz value, converged, steps run) of at most ``iters`` Lanczos steps from the unit vector ``v``."""
    alphas: list[float] = []
    betas: list[float] = []
    previous: Vector | None = None
    top = math.nan
    calm = 0  # consecutive steps whose estimate moved by at most tol
    for step in range(1, iters + 1):
        w = hvp(v)
        alpha = _dot(w, v)
        _axpy(w, -alpha, v)
        if previous is not None:
            _axpy(w, -betas[-1], previous)
        # Second Gram–Schmidt pass against the vectors at hand: in low precision the first leaves a visible residue.
        correction = _dot(w, v)
        _axpy(w, -correction, v)
        alpha += correction
        if previous is not None:
            _axpy(w, -_dot(w, previous), previous)
        beta = math.sqrt(max(_dot(w, w), 0.0))
        if not (math.isfinite(alpha) and math.isfinite(beta)):  # +inf: curvature beyond the dtype; else no estimate
            return (math.inf if alpha == math.inf else math.nan), False, step
        alphas.append(alpha)
        new_top = _largest_ritz_value(alphas, betas)
        calm = calm + 1 if step > 1 and abs(new_top - top) <= tol * abs(new_top) else 0
        invariant = beta <= tol * abs(new_top)
        top = new_top
        if calm >= SETTLED_STEPS or invariant:
            return top, True, step
        if time.perf_counter() >= deadline:
            return top, False, step
        betas.append(beta)
        for t in w:
            t.div_(beta)
        previous, v = v, w
    return top, False, iters


def _largest_ritz_value(alphas: Sequence[float], betas: Sequence[float]) -> float:
    """Largest eigenvalue of the symmetric tridiagonal matrix with diagonal ``alphas`` and off-diagonal ``betas``."""
    tridiagonal = np.diag(np.asarray(alphas, dtype=np.float64))
    if betas:
        off = np.asarray(betas, dtype=np.float64)
        tridiagonal += np.diag(off, 1) + np.diag(off, -1)
    return float(np.linalg.eigvalsh(tridiagonal)[-1])


def _hessian_vector_product(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> Callable[[Vector], Vector]:
    # A gradient that does not depend on the parameters (loss linear in them) has no graph: its Hessian rows are 0.
    live = [i for i, g in enumerate(grads) if g.requires_grad]

    def product(v: Vector) -> Vector:
        if not live:
            return [torch.zeros_like(p) for p in params]
        return list(torch.autograd.grad([grads[i] for i in live], params, grad_outputs=[v[i] for i in live],
                                        retain_graph=True, allow_unused=True, materialize_grads=True))

    return product


def _random_unit(params: Sequence[torch.Tensor], seed: int) -> Vector:
    """A seeded Gaussian direction of unit norm, drawn in float32 on each parameter's device, then cast to its dtype."""
    generators: dict[torch.device, torch.Generator] = {}
    vector = []
    for p in params:
        if p.device not in generators:
            generators[p.device] = torch.Generator(device=p.device).manual_seed(seed)
        draw = torch.randn(p.shape, generator=generators[p.device], device=p.device, dtype=torch.float32)
        vector.append(draw.to(p.dtype))
    norm = math.sqrt(_dot(vector, vector))
    for t in vector:
        t.div_(norm)
    return vector


def _dot(xs: Vector, ys: Vector) -> float:
    """Σ⟨x, y⟩ accumulated in float32 (float64 for float64 tensors), one tensor at a time, one sync per device."""
    per_device: dict[torch.device, list[torch.Tensor]] = {}
    for x, y in zip(xs, ys):
        accumulate = torch.float64 if x.dtype == torch.float64 else torch.float32
        term = torch.dot(x.reshape(-1).to(accumulate), y.reshape(-1).to(accumulate))
        per_device.setdefault(x.device, []).append(term.to(torch.float64))
    return sum(float(torch.stack(terms).sum()) for terms in per_device.values())


def _axpy(ys: Vector, a: float, xs: Vector) -> None:
    """ys += a · xs, in place, in the tensors' own dtype."""
    for y, x in zip(ys, xs):
        y.add_(x, alpha=a)

"""Spectral building blocks for reparameterization defenses: top-k left singular vectors and SpecDef's maps.

The top-k subspace is found by block subspace iteration with Rayleigh–Ritz and an explicit convergence test on the
Ritz residuals, rather than a fixed number of power iterations: on flat spectra a few iterations return the wrong
directions. Everything runs in float64. Given any orthonormal ``U_k`` the maps below satisfy ``C @ W̃ = W``
exactly (up to rounding), so function preservation never depends on the SVD's accuracy; amplifying the *true* top-k
singular values does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

SvdMethod = Literal["auto", "exact", "topk"]
EXACT_MAX_DIM = 512
"""At or below this size (min(m, n)) both paths take well under 0.1 s and the exact SVD is used (no tolerance to
worry about); above it the iterative path wins: 3.7x at 1024², 20x at 4096² (benchmarks/specdef_svd.py)."""
FLOAT32_TOL = 1e-5
"""Residual tolerances at or above this run the iteration's passes over W in float32."""
AUTO_MAX_ITER = 60
"""In auto mode, the iteration budget of subspace iteration; when neither the singular vectors nor the singular
values have converged by then, the exact SVD is used instead."""
VALUE_TOL = 1e-4
"""Auto mode on a flat spectrum: accept the subspace once the top-k Ritz values are predicted to be within this
relative error of the true singular values (their directions are then not identifiable to ``tol``, but the spectrum
SpecDef inflates is right to this accuracy)."""


@dataclass(frozen=True)
class TopK:
    u: torch.Tensor
    """(m, k) orthonormal left singular vectors, float64, on the weight's device."""
    s: torch.Tensor
    """(k,) singular values, descending."""
    method: str
    """``exact`` (LAPACK/cuSOLVER SVD), ``topk`` (vectors converged to ``tol``) or ``topk-values`` (auto mode on a
    flat spectrum: the top-k singular values converged to :data:`VALUE_TOL`, the directions did not)."""
    iterations: int
    residual: float
    """Largest relative Ritz residual ||W v - σ u|| / σ₁ of the returned pairs (0 for the exact SVD)."""


def top_k_left_singular(
    weight: torch.Tensor,
    k: int,
    *,
    method: SvdMethod = "auto",
    tol: float = 1e-5,
    max_iter: int = 300,
    generator: torch.Generator | None = None,
) -> TopK:
    """Top-``k`` left singular vectors and values of ``weight``, computed in float64 on the weight's device."""
    w = weight.detach().to(torch.float64)
    m, n = w.shape
    k = min(k, m, n)
    if k <= 0:
        raise ValueError("k must be positive")
    use_exact = method == "exact" or (method == "auto" and (min(m, n) <= EXACT_MAX_DIM or 4 * k >= min(m, n)))
    if not use_exact:
        auto = method == "auto"
        top = _subspace_iteration(w, k, tol=tol, max_iter=min(max_iter, AUTO_MAX_ITER) if auto else max_iter,
                                  generator=generator, value_tol=VALUE_TOL if auto else None)
        if top.method == "topk-values" or top.residual <= tol or not auto:
            return top
    u, s, _ = torch.linalg.svd(w, full_matrices=False)
    return TopK(u[:, :k].contiguous(), s[:k].contiguous(), "exact", 0, 0.0)


def _subspace_iteration(w: torch.Tensor, k: int, *, tol: float, max_iter: int, generator,
                        value_tol: float | None = None) -> TopK:
    """Block power iteration with Rayleigh–Ritz; two passes over W per iteration.

    Each iteration computes ``Bt = Wᵀ Q = Z R`` and ``Y = W Z``. Since ``Qᵀ W = Rᵀ Zᵀ``, the Ritz pairs come from the
    SVD of the small ``Rᵀ`` (block × block, on the CPU: tiny SVDs are slow on a GPU), and their residual
    ``W v - σ u`` needs no third pass because v lies in span(Z): ``W v = Y (Zᵀ v)``. The block is oversampled (4k):
    convergence goes as (σ_block / σ_k)^iterations, and on a GPU a wider block costs almost nothing.

    With ``value_tol`` (auto mode), when the vectors' observed convergence rate predicts more than ``max_iter``
    iterations (a flat spectrum), the iteration also stops once the top-k Ritz values are predicted (Aitken's
    estimate from their last three changes) to be within ``value_tol`` of the true singular values: the values
    converge long before the vectors do.
    """
    m, n = w.shape
    block = min(max(4 * k, k + 20), min(m, n))
    # float32 passes are twice as fast and accurate to ~1e-6; tighter tolerances need float64 throughout.
    w = w.to(torch.float32 if tol >= FLOAT32_TOL else torch.float64)
    start = torch.randn(n, block, dtype=torch.float64, generator=generator)  # drawn on the CPU: same on any device
    y = w @ start.to(device=w.device, dtype=w.dtype)
    residuals: list[float] = []
    values: list[torch.Tensor] = []
    u_k = s_k = None
    method = "topk"
    for iterations in range(1, max_iter + 1):
        q, _ = torch.linalg.qr(y)
        z, r = torch.linalg.qr(w.T @ q)  # Wᵀ Q = Z R
        y = w @ z  # (m, block): the next iterate, and W restricted to span(Z)
        ub, s, vrt = torch.linalg.svd(r.T.double().cpu(), full_matrices=False)  # Qᵀ W = Rᵀ Zᵀ = Ub Σ (Z Vr)ᵀ
        ub_k, vr_k = ub[:, :k].to(w.device), vrt[:k].T.to(w.device)
        u_k, s_k = q.double() @ ub_k, s[:k]
        wv = y.double() @ vr_k  # W (Z Vr) = Y Vr
        residuals.append(float((torch.linalg.vector_norm(wv - u_k * s_k.to(w.device), dim=0)
                                / max(float(s[0]), 1e-300)).max()))
        if residuals[-1] <= tol:
            break
        values.append(s_k)
        if value_tol is not None and iterations >= 8:
            rate = (residuals[-1] / residuals[-5]) ** 0.25
            vectors_out_of_budget = rate >= 1.0 or iterations + math.log(tol / residuals[-1]) / math.log(rate) > max_iter
            # Accept converged values only when the vectors will not converge in budget (a flat spectrum): where
            # they can, they are worth the iterations (principal angle ~1e-4 instead of ~1e-2).
            if vectors_out_of_budget and _values_converged(values[-3:], value_tol):
                method = "topk-values"
                break
    # Re-orthonormalise in float64: SpecDef's C W̃ = W is exact only when U_k U_kᵀ is an exact projector.
    u_k, r = torch.linalg.qr(u_k)
    u_k = u_k * torch.sign(torch.diagonal(r))
    return TopK(u_k.contiguous(), s_k.to(w.device).contiguous(), method, iterations, residuals[-1])


def _values_converged(last: list[torch.Tensor], value_tol: float) -> bool:
    """Aitken's error estimate of three successive Ritz value vectors (which increase monotonically to the truth)."""
    d1, d2 = (last[1] - last[0]).abs(), (last[2] - last[1]).abs()
    rate = torch.where(d1 > 0, d2 / d1.clamp_min(1e-300), torch.zeros_like(d1)).clamp(max=0.999)
    error = d2 * rate / (1 - rate)
    return bool((error <= value_tol * last[2].abs().clamp_min(1e-300)).all())


def specdef_maps(weight: torch.Tensor, u_k: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SpecDef's inflated weight ``W̃ = (I + (α-1) U_k U_kᵀ) W`` and compensation ``C = I - (1-1/α) U_k U_kᵀ``.

    With exact singular vectors ``W̃ = U Σ̃ Vᵀ`` (top-k singular values times α); for any orthonormal ``U_k``,
    ``C W̃ = W``. Both are returned in float64, on the weight's device.
    """
    w = weight.detach().to(torch.float64)
    u = u_k.to(device=w.device, dtype=torch.float64)
    inflated = torch.addmm(w, u, u.T @ w, alpha=alpha - 1.0)
    compensation = torch.mm(u, u.T).mul_(-(1.0 - 1.0 / alpha))
    compensation.diagonal().add_(1.0)
    return inflated, compensation


def principal_angle(u_a: torch.Tensor, u_b: torch.Tensor) -> float:
    """Largest principal angle (radians) between the column spaces of two orthonormal bases of equal rank.

    Computed from the sine, ``asin ||(I - A Aᵀ) B||₂``, which stays accurate for tiny angles (arccos of the cosines
    bottoms out near 1e-8).
    """
    a, b = u_a.to(torch.float64), u_b.to(torch.float64)
    residual = b - a @ (a.T @ b)
    return float(torch.asin(torch.clamp(torch.linalg.matrix_norm(residual, ord=2), 0.0, 1.0)))

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
"""In auto mode, the iteration budget of subspace iteration; when its convergence rate predicts more, the exact SVD
is used instead (flat spectra)."""


@dataclass(frozen=True)
class TopK:
    u: torch.Tensor
    """(m, k) orthonormal left singular vectors, float64."""
    s: torch.Tensor
    """(k,) singular values, descending."""
    method: str
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
    """Top-``k`` left singular vectors and values of ``weight`` (computed in float64)."""
    w = weight.detach().to(torch.float64)
    m, n = w.shape
    k = min(k, m, n)
    if k <= 0:
        raise ValueError("k must be positive")
    use_exact = method == "exact" or (method == "auto" and (min(m, n) <= EXACT_MAX_DIM or 4 * k >= min(m, n)))
    if not use_exact:
        # On a flat spectrum (σ_k ≈ σ_k+1) subspace iteration converges slowly; in auto mode, give it a bounded
        # number of iterations and fall back to the exact SVD rather than return inaccurate directions.
        iterations = max_iter if method == "topk" else min(max_iter, AUTO_MAX_ITER)
        top = _subspace_iteration(w, k, tol=tol, max_iter=iterations, generator=generator, give_up=method == "auto")
        if top.residual <= tol or method == "topk":
            return top
    u, s, _ = torch.linalg.svd(w, full_matrices=False)
    return TopK(u[:, :k].contiguous(), s[:k].contiguous(), "exact", 0, 0.0)


def _subspace_iteration(w: torch.Tensor, k: int, *, tol: float, max_iter: int, generator,
                        give_up: bool = False) -> TopK:
    """Block power iteration with Rayleigh–Ritz; two passes over W per iteration.

    Each iteration computes ``Bt = Wᵀ Q`` and ``Y = W Z`` (Z = orth(Bt)). The Ritz pairs come from the small SVD of
    ``Btᵀ = Qᵀ W``, and their residual ``W v - σ u`` needs no third pass because v lies in span(Z):
    ``W v = Y (Zᵀ v)``. With ``give_up`` the iteration stops early when its observed convergence rate predicts more
    than ``max_iter`` iterations (a flat spectrum), so the caller can fall back to the exact SVD.
    """
    m, n = w.shape
    block = min(max(2 * k, k + 10), min(m, n))
    # float32 passes are twice as fast and accurate to ~1e-6; tighter tolerances need float64 throughout.
    w = w.to(torch.float32 if tol >= FLOAT32_TOL else torch.float64)
    y = w @ torch.randn(n, block, dtype=torch.float64, generator=generator).to(w.dtype)
    residuals: list[float] = []
    u_k = s_k = None
    for iterations in range(1, max_iter + 1):
        q, _ = torch.linalg.qr(y)
        bt = w.T @ q  # (n, block)
        z, _ = torch.linalg.qr(bt)
        y = w @ z  # (m, block): the next iterate, and W restricted to span(Z)
        ub, s, vbt = torch.linalg.svd(bt.T.double(), full_matrices=False)  # Qᵀ W = Ub Σ Vbᵀ
        u_k, s_k, v_k = q.double() @ ub[:, :k], s[:k], vbt[:k].T
        wv = y.double() @ (z.T.double() @ v_k)
        residuals.append(float((torch.linalg.vector_norm(wv - u_k * s_k, dim=0) / max(float(s[0]), 1e-300)).max()))
        if residuals[-1] <= tol:
            break
        if give_up and iterations >= 8:
            rate = (residuals[-1] / residuals[-5]) ** 0.25
            if rate >= 1.0 or iterations + math.log(tol / residuals[-1]) / math.log(rate) > max_iter:
                break
    # Re-orthonormalise in float64: SpecDef's C W̃ = W is exact only when U_k U_kᵀ is an exact projector.
    u_k, r = torch.linalg.qr(u_k)
    u_k = u_k * torch.sign(torch.diagonal(r))
    return TopK(u_k.contiguous(), s_k.contiguous(), "topk", iterations, residuals[-1])


def specdef_maps(weight: torch.Tensor, u_k: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SpecDef's inflated weight ``W̃ = (I + (α-1) U_k U_kᵀ) W`` and compensation ``C = I - (1-1/α) U_k U_kᵀ``.

    With exact singular vectors ``W̃ = U Σ̃ Vᵀ`` (top-k singular values times α); for any orthonormal ``U_k``,
    ``C W̃ = W``. Both are returned in float64.
    """
    w = weight.detach().to(torch.float64)
    u = u_k.to(torch.float64)
    projected = u @ (u.T @ w)
    inflated = w + (alpha - 1.0) * projected
    m = w.shape[0]
    compensation = torch.eye(m, dtype=torch.float64) - (1.0 - 1.0 / alpha) * (u @ u.T)
    return inflated, compensation


def principal_angle(u_a: torch.Tensor, u_b: torch.Tensor) -> float:
    """Largest principal angle (radians) between the column spaces of two orthonormal bases of equal rank.

    Computed from the sine, ``asin ||(I - A Aᵀ) B||₂``, which stays accurate for tiny angles (arccos of the cosines
    bottoms out near 1e-8).
    """
    a, b = u_a.to(torch.float64), u_b.to(torch.float64)
    residual = b - a @ (a.T @ b)
    return float(torch.asin(torch.clamp(torch.linalg.matrix_norm(residual, ord=2), 0.0, 1.0)))

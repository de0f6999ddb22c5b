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
"""Below this size (min(m, n)) a full SVD is as fast as the iterative one; see benchmarks/specdef_svd.py."""
AUTO_MAX_ITER = 150
"""In auto mode, iterations of subspace iteration before falling back to the exact SVD."""


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
    tol: float = 1e-9,
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
        top = _subspace_iteration(w, k, tol=tol, max_iter=iterations, generator=generator)
        if top.residual <= tol or method == "topk":
            return top
    u, s, _ = torch.linalg.svd(w, full_matrices=False)
    return TopK(u[:, :k].contiguous(), s[:k].contiguous(), "exact", 0, 0.0)


def _subspace_iteration(w: torch.Tensor, k: int, *, tol: float, max_iter: int, generator) -> TopK:
    m, n = w.shape
    block = min(max(2 * k, k + 10), min(m, n))
    omega = torch.randn(n, block, dtype=torch.float64, generator=generator)
    q, _ = torch.linalg.qr(w @ omega)
    residual = math.inf
    iterations = 0
    u_k = s_k = None
    for iterations in range(1, max_iter + 1):
        z, _ = torch.linalg.qr(w.T @ q)  # (n, block): right subspace
        y = w @ z  # (m, block)
        q, _ = torch.linalg.qr(y)
        # Rayleigh–Ritz on the current left subspace: B = Qᵀ W = Ub Σ Vbᵀ.
        b = q.T @ w
        ub, s, vbt = torch.linalg.svd(b, full_matrices=False)
        u_k = q @ ub[:, :k]
        s_k = s[:k]
        v_k = vbt[:k].T
        # Residual of the pairs as singular triplets of W. Wᵀu = σv holds by construction of the Rayleigh–Ritz
        # step, so the informative residual is ||W v - σ u|| (relative to σ₁).
        res = torch.linalg.vector_norm(w @ v_k - u_k * s_k, dim=0) / max(float(s[0]), 1e-300)
        residual = float(res.max())
        if residual <= tol:
            break
    return TopK(u_k.contiguous(), s_k.contiguous(), "topk", iterations, residual)


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
    """Largest principal angle (radians) between the column spaces of two orthonormal bases."""
    s = torch.linalg.svdvals(u_a.to(torch.float64).T @ u_b.to(torch.float64))
    return float(torch.arccos(torch.clamp(s.min(), -1.0, 1.0)))

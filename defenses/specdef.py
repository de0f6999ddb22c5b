"""``specdef``: spectral deformation with compensation (Rosati et al. 2026, arXiv 2602.18868; DESIGN §8).

Threat model: a defender publishes weights; the attacker fine-tunes them with any standard recipe.
For each selected linear map ``y = W x + b`` (W: m × n) SpecDef stores ``y = C (W̃ x) + b`` where
``W̃ = U Σ̃ Vᵀ`` multiplies the top-k singular values by ``alpha`` and ``C = I - (1 - 1/alpha) U_k U_kᵀ`` undoes
it, so ``C W̃ = W``: the function is unchanged, while the loss Hessian's largest eigenvalue grows with alpha
(≈ alpha² when C is trainable), so gradient steps at ordinary learning rates diverge or stall.

Defaults: alpha = 1e4, k = 25, every linear map (``nn.Linear``, and transformers' transposed ``Conv1D`` in GPT-2;
the replacement is always a pair of ``nn.Linear``) (the paper used ~5 random layers of Llama-3.1-8B: set
``n_layers=5``). At large alpha float32 loses precision (alpha = 1e6 flips 1–3% of the digits MLP's predictions):
the defense warns when the stored maps reconstruct W poorly, and ``dtype=float64`` stores W̃ and C in float64.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from bench.config import check
from bench.contracts import Defense, DefenseResult
from bench.layers import FactoredLinear, linear_weight, set_submodule
from bench.registry import DEFENSES
from defenses._selection import select_layers
from defenses._spectral import specdef_maps, top_k_left_singular

RECONSTRUCTION_WARN = 1e-3
"""Relative error ||C W̃ - W|| / ||W|| above which the stored maps no longer preserve the function well."""


@dataclass(frozen=True, kw_only=True)
class SpecDefConfig:
    alpha: float = 1e4
    """Factor applied to the top-k singular values of each selected weight."""
    k: int = 25
    """Number of singular values to inflate per layer (clamped to the layer's rank)."""
    layers: tuple[str, ...] = ("*",)
    """fnmatch patterns on module names (e.g. "*.down_proj"); a layer must match one."""
    module_types: tuple[str, ...] = ("Linear", "Conv1D")
    """Class names of the modules that may be defended (Conv1D: transformers' transposed linear map, GPT-2)."""
    exclude: tuple[str, ...] = ()
    """fnmatch patterns of module names never to defend."""
    n_layers: int = 0
    """Defend this many of the matching layers, drawn with the run seed (0: all of them)."""
    dtype: Literal["model", "float64"] = "model"
    """Storage dtype of W̃ and C: the model's own, or float64 for large alpha."""
    svd: Literal["auto", "exact", "topk"] = "auto"
    """Full SVD, iterative top-k, or auto (top-k on large matrices)."""
    trainable_compensation: bool = True
    """Whether C is a trainable parameter (the paper's setting; freezing it is weaker)."""

    def __post_init__(self) -> None:
        check(self.alpha > 0, f"alpha must be positive, got {self.alpha}")
        check(self.k >= 1, f"k must be at least 1, got {self.k}")
        check(self.n_layers >= 0, f"n_layers must be >= 0, got {self.n_layers}")
        check(len(self.layers) > 0, "layers needs at least one pattern")


@DEFENSES.register("specdef")
class SpecDef(Defense):
    """SpecDef: inflate the top-k singular values by alpha and compensate with a trainable map (Rosati et al. 2026)."""

    Config = SpecDefConfig
    presets = {
        "a1e2-k25": {"alpha": 1e2, "k": 25},
        "a1e4-k25": {"alpha": 1e4, "k": 25},
        "a1e6-k25-f64": {"alpha": 1e6, "k": 25, "dtype": "float64"},
    }
    preservation_tol = 5e-2

    def apply(self, model: nn.Module, view, cfg: SpecDefConfig, *, generator: torch.Generator) -> DefenseResult:
        names = select_layers(model, patterns=cfg.layers, module_types=cfg.module_types, exclude=cfg.exclude,
                              count=cfg.n_layers, generator=generator)
        info = {}
        for name in names:
            layer = model.get_submodule(name)
            weight = linear_weight(layer, f"specdef layer {name}")
            set_submodule(model, name, compensated_linear(weight, layer.bias, cfg, generator=generator,
                                                          info=info.setdefault(name, {})))
        worst = max(v["reconstruction_error"] for v in info.values())
        if worst > RECONSTRUCTION_WARN:
            warnings.warn(
                f"specdef: stored maps reconstruct W with relative error {worst:.2e} at alpha={cfg.alpha:g} in "
                f"{cfg.dtype} storage; outputs will drift. Use dtype=float64 (defense.dtype=float64).",
                stacklevel=2,
            )
        return DefenseResult(model=model, layers=names, info={"per_layer": info, "max_reconstruction_error": worst})


def compensated_linear(weight: torch.Tensor, bias: torch.Tensor | None, cfg: SpecDefConfig, *,
                       generator: torch.Generator, info: dict) -> FactoredLinear:
    """The SpecDef replacement of the linear map ``weight`` (out × in) + ``bias``, as a two-factor
    :class:`FactoredLinear` (scaled, compensation)."""
    weight = weight.detach()
    top = top_k_left_singular(weight, cfg.k, method=cfg.svd, generator=generator)
    inflated, compensation = specdef_maps(weight, top.u, cfg.alpha)
    dtype = torch.float64 if cfg.dtype == "float64" else weight.dtype
    out_f, in_f = weight.shape
    scaled = nn.Linear(in_f, out_f, bias=False, dtype=dtype, device=weight.device)
    comp = nn.Linear(out_f, out_f, bias=False, dtype=dtype, device=weight.device)
    with torch.no_grad():
        scaled.weight.copy_(inflated.to(dtype))
        comp.weight.copy_(compensation.to(dtype))
    comp.weight.requires_grad_(cfg.trainable_compensation)
    with torch.no_grad():
        reconstructed = comp.weight.double() @ scaled.weight.double()
        error = float(torch.linalg.matrix_norm(reconstructed - weight.double())
                      / torch.linalg.matrix_norm(weight.double()).clamp_min(1e-300))
    info.update({"k": int(top.u.shape[1]), "svd": top.method, "svd_iterations": top.iterations,
                 "svd_residual": top.residual, "reconstruction_error": error,
                 "top_singular_value": float(top.s[0])})
    return FactoredLinear([scaled, comp], bias, roles=("scaled", "compensation"))

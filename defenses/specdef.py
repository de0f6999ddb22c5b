"""``specdef``: spectral deformation with compensation (Rosati et al. 2026, arXiv 2602.18868; DESIGN §8).

Threat model: a defender publishes weights; the attacker fine-tunes them with any standard recipe.
For each selected linear map ``y = W x + b`` (W: m × n) SpecDef stores ``y = C (W̃ x) + b`` where
``W̃ = U Σ̃ Vᵀ`` multiplies the top-k singular values by ``alpha`` and ``C = I - (1 - 1/alpha) U_k U_kᵀ`` undoes
it, so ``C W̃ = W``: the function is unchanged, while the loss Hessian's largest eigenvalue grows with alpha
(≈ alpha² when C is trainable), so gradient steps at ordinary learning rates diverge or stall.

Defaults: alpha = 1e4, k = 25, every linear map (``nn.Linear``, and transformers' transposed ``Conv1D`` in GPT-2;
the replacement is always a pair of ``nn.Linear``). That is *more* than the paper's setting, ~5 random layers of
Llama-3.1-8B (α = 1e4, k = 25). Both ship as named presets, so that a leaderboard row's label says which it is:

* ``specdef.all-linear``: every linear map (the defaults);
* ``specdef.paper-5-layers``: 5 linear maps drawn with the run seed (``n_layers=5``), the paper's setting; a model
  with fewer (the vision-digits tiny MLP has 3) has all of them changed, so there the two presets coincide in effect.

The maps are computed in float64 on the layer's device; their storage dtype is ``auto`` by default:
float32 for bfloat16/float16 models (in bf16, C W̃ reconstructs W with a relative error of 5–20 at alpha = 1e4 and a
1B Llama's logits moved by 14), the model's own dtype otherwise. At large alpha float32 loses precision too (alpha =
1e6 flips 1–3% of the digits MLP's predictions): ``dtype=float64`` stores W̃ and C in float64. The defense warns when
the stored maps reconstruct W poorly, and the runner refuses a defended model whose outputs drifted beyond
``preservation_tol`` (see :data:`bench.contracts.Defense.drift_hint`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from bench.config import check
from bench.contracts import Defense, DefenseResult
from bench.registry import DEFENSES
from bench.toolkit.layers import FactoredLinear, linear_weight, set_submodule
from defenses._selection import select_layers
from defenses._spectral import specdef_maps, top_k_left_singular

RECONSTRUCTION_WARN = 1e-3
"""Relative error ||C W̃ - W|| / ||W|| above which the stored maps no longer preserve the function well."""


@dataclass(frozen=True, kw_only=True)
class SpectralInflationConfig:
    """What SpecDef and its ablation without compensation share: which layers, and how their spectrum is inflated."""

    alpha: float = 1e4
    """Factor applied to the top-k singular values of each selected weight."""
    k: int = 25
    """Number of singular values to inflate per layer (clamped to the layer's rank)."""
    layers: tuple[str, ...] = ("*",)
    """fnmatch patterns on module names (e.g. "*.down_proj"); a layer must match one."""
    module_types: tuple[str, ...] = ("Linear", "Conv1D")
    """Class names of the modules that may be changed (Conv1D: transformers' transposed linear map, GPT-2)."""
    exclude: tuple[str, ...] = ()
    """fnmatch patterns of module names never to change."""
    n_layers: int = 0
    """Change this many of the matching layers, drawn with the run seed (0: all of them)."""
    svd: Literal["auto", "exact", "topk"] = "auto"
    """Full SVD, iterative top-k, or auto (top-k on large matrices)."""

    def __post_init__(self) -> None:
        check(self.alpha > 0, f"alpha must be positive, got {self.alpha}")
        check(self.k >= 1, f"k must be at least 1, got {self.k}")
        check(self.n_layers >= 0, f"n_layers must be >= 0, got {self.n_layers}")
        check(len(self.layers) > 0, "layers needs at least one pattern")


@dataclass(frozen=True, kw_only=True)
class SpecDefConfig(SpectralInflationConfig):
    dtype: Literal["auto", "model", "float64"] = "auto"
    """Storage dtype of W̃ and C: auto (float32 for bfloat16/float16 layers, else the layer's own), model (the
    layer's own, even in half precision), or float64 for large alpha."""
    trainable_compensation: bool = True
    """Whether C is a trainable parameter (the paper's setting; freezing it is weaker)."""


@DEFENSES.register("specdef")
class SpecDef(Defense):
    """SpecDef: inflate the top-k singular values by alpha and compensate with a trainable map (Rosati et al. 2026)."""

    Config = SpecDefConfig
    presets = {
        "all-linear": {"alpha": 1e4, "k": 25, "n_layers": 0},
        "paper-5-layers": {"alpha": 1e4, "k": 25, "n_layers": 5},
        "a1e2-k25": {"alpha": 1e2, "k": 25},
        "a1e4-k25": {"alpha": 1e4, "k": 25},
        "a1e6-k25-f64": {"alpha": 1e6, "k": 25, "dtype": "float64"},
    }
    preservation_tol = 5e-2
    drift_hint = ("store the maps in a wider dtype: defense.dtype=float64 (or dtype=auto for half-precision models), "
                  "or lower alpha")

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


HALF_DTYPES = (torch.bfloat16, torch.float16)
RECONSTRUCTION_PROBES = 32
"""Random vectors on which the stored maps' reconstruction error is estimated (exact products would cost an
m × m × n float64 matmul per layer: 1.7 TFLOP for Llama-8B's MLP maps)."""


def storage_dtype(choice: str, weight_dtype: torch.dtype) -> torch.dtype:
    """The dtype W̃ and C are stored in (see ``SpecDefConfig.dtype``)."""
    if choice == "float64":
        return torch.float64
    if choice == "auto" and weight_dtype in HALF_DTYPES:
        return torch.float32
    return weight_dtype


def compensated_linear(weight: torch.Tensor, bias: torch.Tensor | None, cfg: SpecDefConfig, *,
                       generator: torch.Generator, info: dict) -> FactoredLinear:
    """The SpecDef replacement of the linear map ``weight`` (out × in) + ``bias``, as a two-factor
    :class:`FactoredLinear` (scaled, compensation), computed in float64 on the weight's device."""
    weight = weight.detach()
    top = top_k_left_singular(weight, cfg.k, method=cfg.svd, generator=generator)
    inflated, compensation = specdef_maps(weight, top.u, cfg.alpha)
    dtype = storage_dtype(cfg.dtype, weight.dtype)
    scaled, comp = _linear(inflated.to(dtype)), _linear(compensation.to(dtype))
    del inflated, compensation
    comp.weight.requires_grad_(cfg.trainable_compensation)
    error = reconstruction_error(weight, scaled.weight, comp.weight)
    info.update({"k": int(top.u.shape[1]), "svd": top.method, "svd_iterations": top.iterations,
                 "svd_residual": top.residual, "reconstruction_error": error,
                 "top_singular_value": float(top.s[0]), "storage_dtype": str(dtype).removeprefix("torch.")})
    return FactoredLinear([scaled, comp], bias, roles=("scaled", "compensation"))


def _linear(weight: torch.Tensor) -> nn.Linear:
    """A bias-free ``nn.Linear`` holding ``weight`` (built on the meta device: no throw-away initialisation)."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    layer.weight = nn.Parameter(weight.contiguous())
    return layer


def reconstruction_error(weight: torch.Tensor, scaled: torch.Tensor, comp: torch.Tensor) -> float:
    """Relative error ||C W̃ - W||_F / ||W||_F of the stored maps, estimated on random probe vectors in float64.

    For Gaussian X, E||A X||² = ||A||_F² · columns, so the ratio of ||(C W̃ - W) X|| to ||W X|| estimates the
    Frobenius ratio, at O((m + n) · m · probes) instead of a full m × m × n product.
    """
    # A fixed generator: this is a measurement, and must not shift the defense's own random stream.
    probes = torch.randn(weight.shape[1], RECONSTRUCTION_PROBES, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(0))
    x = probes.to(weight.device)
    with torch.no_grad():
        reference = weight.double() @ x
        stored = comp.double() @ (scaled.double() @ x)
    denominator = float(torch.linalg.matrix_norm(reference))
    error = float(torch.linalg.matrix_norm(stored - reference)) / max(denominator, 1e-300)
    return error if math.isfinite(error) else math.inf

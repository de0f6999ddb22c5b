"""``specdef-nocomp``: the ablation of SpecDef without compensation (DESIGN §8).

The top-k singular values of each selected weight are multiplied by alpha and nothing undoes it, so the released
function changes: outputs grow by orders of magnitude and lose calibration (on a ReLU network the argmax can survive,
since ReLU is positively homogeneous and the inflated directions dominate). It separates what the spectral inflation
does to an attacker from what the compensation map adds, and shows up in the function-preservation columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from bench.config import check
from bench.contracts import Defense, DefenseResult
from bench.layers import linear_weight
from bench.registry import DEFENSES
from defenses._selection import select_layers
from defenses._spectral import specdef_maps, top_k_left_singular


@dataclass(frozen=True, kw_only=True)
class SpecDefNoCompConfig:
    """SpecDef's fields that the ablation uses (no storage dtype, no compensation map): a config field that changed
    nothing would still change the run id, and one model would get two leaderboard rows."""

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


@DEFENSES.register("specdef-nocomp")
class SpecDefNoCompensation(Defense):
    """Ablation: SpecDef's spectral inflation without the compensation map (changes the function)."""

    Config = SpecDefNoCompConfig
    preserves_function = False

    def apply(self, model: nn.Module, view, cfg: SpecDefNoCompConfig, *, generator: torch.Generator) -> DefenseResult:
        names = select_layers(model, patterns=cfg.layers, module_types=cfg.module_types, exclude=cfg.exclude,
                              count=cfg.n_layers, generator=generator)
        for name in names:
            with torch.no_grad():  # the (out, in) view writes through to the parameter, Conv1D included
                weight = linear_weight(model.get_submodule(name), f"specdef-nocomp layer {name}")
                top = top_k_left_singular(weight, cfg.k, method=cfg.svd, generator=generator)
                inflated, _ = specdef_maps(weight, top.u, cfg.alpha)
                weight.copy_(inflated.to(weight.dtype))
        return DefenseResult(model=model, layers=names)

"""``specdef-nocomp``: the ablation of SpecDef without compensation (DESIGN §8).

The top-k singular values of each selected weight are multiplied by alpha and nothing undoes it, so the released
function changes: outputs grow by orders of magnitude and lose calibration (on a ReLU network the argmax can survive,
since ReLU is positively homogeneous and the inflated directions dominate). It separates what the spectral inflation
does to an attacker from what the compensation map adds, and shows up in the function-preservation columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.contracts import Defense, DefenseResult
from bench.registry import DEFENSES
from bench.toolkit.layers import linear_weight
from defenses._selection import select_layers
from defenses._spectral import specdef_maps, top_k_left_singular
from defenses.specdef import SpectralInflationConfig


@dataclass(frozen=True, kw_only=True)
class SpecDefNoCompConfig(SpectralInflationConfig):
    """SpecDef's fields that the ablation uses (no storage dtype, no compensation map): a config field that changed
    nothing would still change the run id, and one model would get two leaderboard rows."""


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

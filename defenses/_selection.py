"""Choosing which layers a defense touches: name patterns, module types, exclusions and a seeded random subset."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch
from torch import nn

from bench.errors import ConfigError


def select_layers(
    model: nn.Module,
    *,
    patterns: Sequence[str],
    module_types: Sequence[str],
    exclude: Sequence[str] = (),
    count: int = 0,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Names of submodules whose class name is in ``module_types`` and whose name matches a pattern.

    ``count > 0`` draws that many of the matches with ``generator`` (kept in model order); 0 keeps all of them.
    """
    matches = [
        name
        for name, module in model.named_modules()
        if name
        and type(module).__name__ in module_types
        and any(fnmatch.fnmatchcase(name, p) for p in patterns)
        and not any(fnmatch.fnmatchcase(name, p) for p in exclude)
    ]
    if not matches:
        available = sorted({type(m).__name__ for _, m in model.named_modules()})
        raise ConfigError(
            f"no layer matches patterns {list(patterns)} with types {list(module_types)} "
            f"(excluding {list(exclude)}); module types in this model: {', '.join(available)}"
        )
    if count and count < len(matches):
        chosen = torch.randperm(len(matches), generator=generator)[:count].sort().values
        matches = [matches[i] for i in chosen.tolist()]
    return matches

"""Hidden representations of named modules by forward hooks: what a task's :attr:`DefenderView.features` returns.

A module's output may be a tensor or a tuple/list/ModelOutput whose first tensor is the hidden state (transformer
decoder layers, UNet blocks); that first tensor is kept, with its autograd graph, so defenses can train on it.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from bench.errors import PluginError


def first_tensor(output: Any) -> torch.Tensor:
    """The hidden state in a module's output (the output itself, or its first tensor)."""
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if hasattr(output, "values") and not isinstance(output, (tuple, list)) else output
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    raise PluginError(f"module output of type {type(output).__name__} holds no tensor")


def match_modules(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Names of the modules matching any fnmatch pattern, in the model's order (shallow to deep)."""
    names = [name for name, _ in model.named_modules() if name and any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    if not names:
        raise PluginError(f"no module of {type(model).__name__} matches {list(patterns)}")
    return names


@contextlib.contextmanager
def capture(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every forward of ``model`` stores each named module's hidden state in the yielded dict."""
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise PluginError(f"feature modules {missing} are not in the model")
    captured: dict[str, torch.Tensor] = {}
    handles = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: captured.__setitem__(n, first_tensor(out)))
               for n in names]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def rows_of(hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(N, D) rows of a hidden state: per example for (B, D) or (B, C, H, W) maps flattened, per masked position for
    (B, T, D) sequences (``mask``: (B, T) bool)."""
    if hidden.ndim == 3 and mask is not None:
        return hidden[mask]
    return hidden.reshape(hidden.shape[0], -1)


def transformer_blocks(model: nn.Module) -> tuple[str, ...]:
    """Names of a transformers model's blocks, shallow to deep (Llama ``model.layers.{i}``, GPT-2
    ``transformer.h.{i}``, ViT ``vit.layers.{i}`` or ``vit.encoder.layer.{i}`` depending on the version, ...).

    Found on structure rather than by architecture name: the ``ModuleList`` with ``config.num_hidden_layers``
    entries (the largest by parameters, should a block hold lists of its own), or () when there is none.
    """
    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    lists = [(name, module) for name, module in model.named_modules()
             if isinstance(module, nn.ModuleList) and len(module) and (count is None or len(module) == count)]
    if not lists:
        return ()
    name, blocks = max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))
    return tuple(f"{name}.{i}" for i in range(len(blocks)))

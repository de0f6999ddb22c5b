"""Harness-owned modules that defenses and attacks build on, and that saved models may contain.

:class:`FactoredLinear` is the structural form of reparameterization defenses: a linear map stored as a product of
bias-free linear factors followed by one bias. SpecDef stores ``W`` as ``C @ W̃``; adaptive attacks find such chains
by structure and fuse, split or freeze their factors. :class:`MLP` is the tiny vision task's released model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn


class FactoredLinear(nn.Module):
    """``y = F_k(... F_1(x)) + b``: a linear map held as bias-free factors (applied in order) and one bias.

    ``roles`` names each factor (e.g. ``("scaled", "compensation")``) so attacks and reports can refer to them.
    Factors may be stored in a wider dtype than the model (e.g. float64 for large amplification); inputs are cast
    to the factors' dtype and the result back to the input's dtype.
    """

    def __init__(self, factors: Sequence[nn.Linear], bias: torch.Tensor | None, roles: Sequence[str]):
        super().__init__()
        if len(factors) == 0 or len(factors) != len(roles):
            raise ValueError("FactoredLinear needs at least one factor and one role per factor")
        for prev, nxt in zip(factors, factors[1:]):
            if prev.out_features != nxt.in_features:
                raise ValueError(f"factor shapes do not chain: {prev.out_features} -> {nxt.in_features}")
        if any(f.bias is not None for f in factors):
            raise ValueError("FactoredLinear factors must be bias-free; pass the bias separately")
        self.factors = nn.ModuleList(factors)
        self.roles = tuple(roles)
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.in_features = factors[0].in_features
        self.out_features = factors[-1].out_features

    @property
    def linears(self) -> list[nn.Linear]:
        """The factors, F_1 first (typed: ``nn.ModuleList`` items are plain modules to a type checker)."""
        return cast("list[nn.Linear]", list(self.factors))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factors = self.linears
        h = x.to(factors[0].weight.dtype)
        if self._product_first(h):
            # (F_k ... F_1) x equals F_k(... F_1(x)) and autograd still trains every factor; it is only cheaper.
            weight = factors[0].weight
            for factor in factors[1:]:
                weight = factor.weight @ weight
            h = nn.functional.linear(h, weight)
        else:
            for factor in factors:
                h = factor(h.to(factor.weight.dtype))
        h = h.to(x.dtype)
        return h + self.bias.to(x.dtype) if self.bias is not None else h

    def _product_first(self, x: torch.Tensor) -> bool:
        """Whether multiplying the factors first costs fewer FLOPs than applying them to each of ``x``'s rows.

        For ``W̃`` (m × n) then ``C`` (m × m) on N rows: m²n + Nmn instead of Nmn + Nm², i.e. whenever N > n. Only for
        plain ``nn.Linear`` factors of one dtype without hooks (a LoRA-wrapped or hooked factor must run its own
        forward). In floating point the two orders round differently, by the same order of magnitude.
        """
        factors = self.linears
        if len(factors) < 2 or any(type(f) is not nn.Linear or f._forward_hooks or f._forward_pre_hooks
                                   or f.weight.dtype != x.dtype for f in factors):
            return False
        rows = x.numel() // max(x.shape[-1], 1)
        dims = [factors[0].in_features] + [f.out_features for f in factors]
        sequential = rows * sum(a * b for a, b in zip(dims, dims[1:]))
        product = dims[0] * sum(a * b for a, b in zip(dims[1:], dims[2:])) + rows * dims[0] * dims[-1]
        return product < sequential

    def factor(self, role: str) -> nn.Linear:
        return self.linears[self.roles.index(role)]

    @torch.no_grad()
    def fused_weight(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The product ``F_k ... F_1`` as one (out, in) matrix."""
        factors = self.linears
        weight = factors[0].weight.to(dtype)
        for factor in factors[1:]:
            weight = factor.weight.to(dtype) @ weight
        return weight

    def extra_repr(self) -> str:
        shapes = " -> ".join(f"{r}[{f.out_features}x{f.in_features}]" for r, f in zip(self.roles, self.factors))
        return f"{shapes}, bias={self.bias is not None}"


class MLP(nn.Module):
    """A plain multilayer perceptron: Linear layers with ReLU between them (none after the last)."""

    def __init__(self, sizes: Sequence[int]):
        super().__init__()
        if len(sizes) < 2:
            raise ValueError("an MLP needs at least input and output sizes")
        self.sizes = tuple(int(s) for s in sizes)
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(self.sizes, self.sizes[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(self.sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2 and relatives): a linear map whose weight is stored transposed, (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def linear_weight(module: nn.Module, name: str = "layer") -> torch.Tensor:
    """The (out, in) weight of a linear map, whether ``nn.Linear`` or a transposed ``Conv1D`` (a view, not a copy)."""
    if isinstance(module, nn.Linear):
        return module.weight
    if is_conv1d(module):
        return cast(torch.Tensor, module.weight).t()
    raise TypeError(f"{name} is a {type(module).__name__}, not a linear map (nn.Linear or transformers' Conv1D)")


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``path`` (e.g. ``net.0``) with ``module``."""
    parent_path, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, child, module)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

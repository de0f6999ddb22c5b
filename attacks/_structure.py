"""Finding and rewriting chains of linear maps with nothing nonlinear between them (DESIGN §9).

Reparameterization defenses store one linear map as several (SpecDef: ``C @ W̃``). An informed attacker finds such
chains by *structure*, not by the defense's name, so the same attacks hit defenses that others submit:

* :class:`~bench.toolkit.layers.FactoredLinear` modules are chains by construction;
* any other pair of ``nn.Linear`` modules where the second consumes exactly the output tensor of the first is found
  by tracing one forward pass with hooks, whatever module wraps them.

Every rewrite (fuse, inject, freeze, split) is checked against the model's outputs on the attacker's own batch and
undone if it changed them, so an unusual wrapper (e.g. one that also reuses the first map's output) is never broken.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bench.toolkit.layers import FactoredLinear, set_submodule


@dataclass(frozen=True)
class Chain:
    """Linear maps applied one after another: either one FactoredLinear, or traced ``nn.Linear`` modules in order."""

    path: str
    """The FactoredLinear's path, or the path of the last traced module (which receives the fused map)."""
    members: tuple[str, ...]
    """Paths of the maps in application order (FactoredLinear: its factors)."""
    factored: bool

    def describe(self) -> str:
        return self.path if self.factored else " -> ".join(self.members)


def find_chains(model: nn.Module, run_forward: Callable[[nn.Module], object]) -> list[Chain]:
    """Every linear chain in ``model``: FactoredLinear modules, then traced Linear→Linear hand-offs."""
    chains = [Chain(name, tuple(f"{name}.factors.{i}" for i in range(len(m.factors))), True)
              for name, m in model.named_modules() if isinstance(m, FactoredLinear) and len(m.factors) > 1]
    inside_factored = {c for chain in chains for c in chain.members}
    linears = {name: m for name, m in model.named_modules()
               if type(m) is nn.Linear and name not in inside_factored}
    produced: dict[int, tuple[torch.Tensor, str]] = {}
    edges: dict[str, str] = {}
    handles = []

    def pre_hook(name):
        def hook(module, args):
            if args and isinstance(args[0], torch.Tensor):
                source = produced.get(id(args[0]))
                if source is not None and source[0] is args[0] and source[1] != name:
                    edges.setdefault(source[1], name)
        return hook

    def post_hook(name):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor):
                produced[id(output)] = (output, name)  # keep the tensor alive so its id is not reused
        return hook

    for name, module in linears.items():
        handles.append(module.register_forward_pre_hook(pre_hook(name)))
        handles.append(module.register_forward_hook(post_hook(name)))
    try:
        with torch.no_grad():
            run_forward(model)
    finally:
        for handle in handles:
            handle.remove()
    # Link pairs into maximal chains A -> B -> C.
    targets = set(edges.values())
    for start in [a for a in edges if a not in targets]:
        members = [start]
        while members[-1] in edges:
            members.append(edges[members[-1]])
        chains.append(Chain(members[-1], tuple(members), False))
    return chains


def _maps(model: nn.Module, chain: Chain) -> list[nn.Linear]:
    return [model.get_submodule(p) for p in chain.members]


def _output_dtype(model: nn.Module, chain: Chain) -> torch.dtype:
    """The dtype the model computes in around the chain (factors may be stored wider, e.g. float64)."""
    if chain.factored:
        module = model.get_submodule(chain.path)
        if module.bias is not None:
            return module.bias.dtype
        # No bias to read it from (Llama): the dtype of the model's other weights (a bf16 model's factors are
        # stored in float32, and a float32 map in its place would meet bf16 inputs).
        factors = {id(p) for m in model.modules() if isinstance(m, FactoredLinear) for p in m.factors.parameters()}
        counts = Counter(p.dtype for p in model.parameters() if id(p) not in factors and p.is_floating_point())
        return counts.most_common(1)[0][0] if counts else torch.get_default_dtype()
    return _maps(model, chain)[-1].weight.dtype


def _chain_parameters(model: nn.Module, chain: Chain) -> int:
    modules = [model.get_submodule(chain.path)] if chain.factored else _maps(model, chain)
    return sum(p.numel() for m in modules for p in m.parameters())


@torch.no_grad()
def fused_map(model: nn.Module, chain: Chain) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The chain as one affine map (weight, bias), computed in float64."""
    maps = _maps(model, chain)
    weight = maps[0].weight.double()
    bias = maps[0].bias.double() if maps[0].bias is not None else None
    for m in maps[1:]:
        weight = m.weight.double() @ weight
        bias = m.weight.double() @ bias if bias is not None else None
        if m.bias is not None:
            bias = m.bias.double() if bias is None else bias + m.bias.double()
    if chain.factored and model.get_submodule(chain.path).bias is not None:
        extra = model.get_submodule(chain.path).bias.double()
        bias = extra if bias is None else bias + extra
    return weight, bias


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, device) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=dtype, device=device)
    with torch.no_grad():
        layer.weight.copy_(weight.to(dtype))
        if bias is not None:
            layer.bias.copy_(bias.to(dtype))
    return layer


def _replace_chain(model: nn.Module, chain: Chain, module: nn.Module) -> None:
    """Put ``module`` where the chain was (traced chains: the earlier members become identities)."""
    if chain.factored:
        set_submodule(model, chain.path, module)
        return
    for path in chain.members[:-1]:
        set_submodule(model, path, nn.Identity())
    set_submodule(model, chain.members[-1], module)


def collapse(model: nn.Module, chain: Chain) -> int:
    """Fuse the chain into one ``nn.Linear``; returns the parameter-count change."""
    before = _chain_parameters(model, chain)
    dtype, device = _output_dtype(model, chain), _maps(model, chain)[0].weight.device
    weight, bias = fused_map(model, chain)
    fused = _linear(weight, bias, dtype, device)
    _replace_chain(model, chain, fused)
    return sum(p.numel() for p in fused.parameters()) - before


def inject(model: nn.Module, chain: Chain) -> int:
    """Freeze the fused map and append an identity-initialised trainable square map with a trainable bias."""
    maps = _maps(model, chain)
    before = _chain_parameters(model, chain)
    dtype, device = _output_dtype(model, chain), maps[0].weight.device
    weight, bias = fused_map(model, chain)
    frozen = _linear(weight, None, dtype, device).requires_grad_(False)
    square = _linear(torch.eye(weight.shape[0], dtype=torch.float64), None, dtype, device)
    zero_bias = torch.zeros(weight.shape[0], dtype=dtype, device=device) if bias is None else bias.to(dtype)
    module = FactoredLinear([frozen, square], zero_bias, roles=("frozen", "injected"))
    _replace_chain(model, chain, module)
    return sum(p.numel() for p in module.parameters()) - before


def freeze_tail(model: nn.Module, chain: Chain) -> int:
    """Keep the structure but freeze every map after the first (SpecDef: the compensation map)."""
    for m in _maps(model, chain)[1:]:
        m.requires_grad_(False)
    return 0


def split_first(model: nn.Module, chain: Chain, pieces: int) -> int:
    """Replace the chain's first map ``A = U Σ Vᵀ`` by ``pieces`` factors each carrying ``Σ^(1/pieces)``."""
    first = _maps(model, chain)[0]
    a = first.weight.detach().double()
    u, s, vt = torch.linalg.svd(a, full_matrices=False)
    root = s.pow(1.0 / pieces)
    dtype, device = first.weight.dtype, first.weight.device
    mats = [torch.diag(root) @ vt] + [torch.diag(root) for _ in range(pieces - 2)] + [u @ torch.diag(root)]
    layers = [_linear(m, None, dtype, device) for m in mats]
    if first.bias is not None:
        with torch.no_grad():
            layers[-1] = _linear(mats[-1], first.bias.detach().double(), dtype, device)
    if chain.factored:
        module = model.get_submodule(chain.path)
        rest = list(module.factors[1:])
        new = FactoredLinear(layers + rest, module.bias, roles=tuple(f"split{i}" for i in range(pieces)) + module.roles[1:])
        set_submodule(model, chain.path, new)
    else:
        set_submodule(model, chain.members[0], nn.Sequential(*layers))
    return sum(p.numel() for layer in layers for p in layer.parameters()) - sum(p.numel() for p in first.parameters())


def rewrite_checked(
    model: nn.Module,
    chains: list[Chain],
    rewrite: Callable[[nn.Module, Chain], int],
    outputs: Callable[[nn.Module], torch.Tensor],
    *,
    rtol: float = 1e-3,
    batched: bool = True,
) -> tuple[int, list[str], list[str]]:
    """Apply ``rewrite`` to every chain, undoing any rewrite that changes ``outputs`` beyond ``rtol`` (relative).

    All chains are rewritten first and checked with one forward pass (a SpecDef'd UNet has ~90 chains, and one
    check per chain was most of an adaptive run). Only when that check fails is every rewrite undone, torch's random
    state put back (building a layer draws from it), and the chains checked one by one, each against the reference
    with the earlier accepted ones in place. So the model, its trainable parameters and the random state are the
    one-by-one check's whenever that accepts every chain (its last check is the joint one); otherwise the one-by-one
    check decides, unless the rewrites together still keep the function (a wrong chain's error cancelled by the
    others), which is then accepted as a whole.

    ``batched=False`` checks one by one from the start (``benchmarks/rewrite_check.py`` times both).

    Returns (parameters added, rewritten chains, chains left as they were).
    """
    with torch.no_grad():
        reference = outputs(model).detach().double()
    scale = float(reference.abs().max().clamp_min(1e-12))

    def keeps_function() -> bool:
        with torch.no_grad():
            current = outputs(model).detach().double()
        return current.shape == reference.shape and float((current - reference).abs().max()) <= rtol * scale

    if batched and len(chains) > 1:
        random_state = _random_state(model)
        undo = [_undo_record(model, chain) for chain in chains]
        added = sum(rewrite(model, chain) for chain in chains)
        if keeps_function():
            return added, [chain.describe() for chain in chains], []
        for record in reversed(undo):
            _restore(model, record)
        _set_random_state(random_state)
    added, done, skipped = 0, [], []
    for chain in chains:
        record = _undo_record(model, chain)
        delta = rewrite(model, chain)
        if keeps_function():
            added += delta
            done.append(chain.describe())
        else:  # this chain's wiring was not what the trace suggested
            _restore(model, record)
            skipped.append(chain.describe())
    return added, done, skipped


_UndoRecord = tuple[dict[str, nn.Module], dict[int, bool]]


def _undo_record(model: nn.Module, chain: Chain) -> _UndoRecord:
    """The modules a rewrite of ``chain`` may replace, and which of their parameters were trainable."""
    saved = {p: model.get_submodule(p) for p in (chain.members if not chain.factored else (chain.path,))}
    return saved, {id(p): p.requires_grad for m in saved.values() for p in m.parameters()}


def _restore(model: nn.Module, record: _UndoRecord) -> None:
    saved, trainable = record
    for path, module in saved.items():
        set_submodule(model, path, module)
        for p in module.parameters():
            p.requires_grad_(trainable[id(p)])


def _random_state(model: nn.Module) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    return torch.get_rng_state(), {i: torch.cuda.get_rng_state(i) for i in cuda}


def _set_random_state(state: tuple[torch.Tensor, dict[int, torch.Tensor]]) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    for index, cuda_state in cuda.items():
        torch.cuda.set_rng_state(cuda_state, index)

"""Finding a classifier's head by structure, for the attacks that retrain or replace it (``linear-probe``,
``head-reinit``).

The head is the last linear map (an ``nn.Linear``, or a reparameterised :class:`~bench.toolkit.layers.FactoredLinear` as a
whole) whose output *is* the model's class logits, found by tracing one forward pass on an attacker batch: never by a
module name, so it works on an MLP, a transformers classifier and a defended model alike.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attacks._adaptive import output_probe
from bench.contracts import TaskInstance
from bench.errors import PluginError
from bench.toolkit.layers import FactoredLinear


def find_head(model: nn.Module, task: TaskInstance, attack: str, generator: torch.Generator) -> str:
    """Name of the classifier head of ``model`` on ``task`` (see the module docstring), or a clear PluginError."""
    outputs = output_probe(task, 8, generator)
    inside = {f"{name}.factors.{i}" for name, m in model.named_modules() if isinstance(m, FactoredLinear)
              for i in range(len(m.factors))}
    candidates = {name: m for name, m in model.named_modules()
                  if isinstance(m, (nn.Linear, FactoredLinear)) and name not in inside}
    produced: list[tuple[str, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda _m, _i, out, name=name: produced.append((name, out)))
               for name, m in candidates.items()]
    was_training = model.training
    model.eval()  # no dropout, so the traced outputs are the logits the attacker sees
    try:
        with torch.no_grad():
            logits = outputs(model)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    heads = [name for name, out in produced
             if isinstance(out, torch.Tensor) and out.shape == logits.shape and torch.equal(out, logits)]
    if not heads:
        raise PluginError(f"{attack}: found no classifier head in {type(model).__name__}: no nn.Linear (or factored "
                          f"linear map) produces the model's logits of shape {tuple(logits.shape)}; {attack} needs a "
                          "classifier whose last layer is linear")
    return heads[-1]


def fresh_linear(like: nn.Module, generator: torch.Generator) -> nn.Linear:
    """A new ``nn.Linear`` with ``like``'s input and output widths, bias, dtype and device, drawn from ``generator``
    with PyTorch's default initialisation (uniform ±1/√fan_in)."""
    reference = next(like.parameters())
    bias = getattr(like, "bias", None) is not None
    layer = nn.Linear(like.in_features, like.out_features, bias=bias, dtype=reference.dtype, device=reference.device)
    bound = 1 / math.sqrt(like.in_features)
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.empty(param.shape).uniform_(-bound, bound, generator=generator))
    return layer

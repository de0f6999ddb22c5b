"""``lora``: low-rank adapters (PEFT's LoRA) on the task's model, trained with the shared fine-tuning recipe.

Targets are resolved to concrete ``nn.Linear`` modules before PEFT sees them, so LoRA keeps working on a defended
model whose layers became chains of maps (where PEFT would raise on the wrapper):

* ``targets``: ``standard`` (the task's standard names, e.g. attention projections), ``all-linear`` (every linear
  map), ``conv-only`` (every convolution; the control that misses defended linear layers), or ``patterns`` (the
  fnmatch patterns in ``target_modules``);
* ``factors``: for a targeted chain of maps (SpecDef's ``W̃`` then ``C``): adapt the ``first`` map, the
  ``compensation`` side (every later map), or ``both``.

``targets=all-linear, factors=first`` is "all but compensation-like layers". Knowing to avoid the compensation maps
is defense-aware, so only ``factors=both`` counts as a blind recipe in the threat model.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Literal

from torch import nn

from attacks._training import FineTuneConfig, fine_tune
from bench.config import check
from bench.contracts import Attack
from bench.errors import ConfigError
from bench.registry import ATTACKS
from bench.toolkit.layers import FactoredLinear, is_conv1d


@dataclass(frozen=True, kw_only=True)
class LoraConfig(FineTuneConfig):
    rank: int = 8
    """LoRA rank r."""
    alpha: float = 16.0
    """LoRA scaling numerator (the update is scaled by alpha / rank)."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    targets: Literal["standard", "all-linear", "conv-only", "patterns"] = "standard"
    """Which layers get adapters (see the module docstring)."""
    factors: Literal["first", "compensation", "both"] = "both"
    """For a targeted chain of linear maps: adapt the first map, the later (compensation) maps, or both."""
    target_modules: tuple[str, ...] = ()
    """fnmatch patterns of module names, used when targets=patterns."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.rank >= 1, f"rank must be at least 1, got {self.rank}")
        check(self.alpha > 0, f"alpha must be positive, got {self.alpha}")
        check(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        check(self.targets != "patterns" or bool(self.target_modules), "targets=patterns needs target_modules")


def resolve_targets(model: nn.Module, cfg: LoraConfig, standard: tuple[str, ...]) -> list[str]:
    """Names of the concrete modules that get adapters."""
    if cfg.targets == "conv-only":
        names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    else:
        patterns = {"standard": standard, "all-linear": ("*",), "patterns": cfg.target_modules}[cfg.targets]
        names = []
        factor_names = {f"{n}.factors.{i}" for n, m in model.named_modules() if isinstance(m, FactoredLinear)
                        for i in range(len(m.factors))}
        for name, module in model.named_modules():
            if not name or not any(fnmatch.fnmatchcase(name, p) for p in patterns):
                continue
            if isinstance(module, FactoredLinear):
                chosen = {"first": [0], "compensation": range(1, len(module.factors)),
                          "both": range(len(module.factors))}[cfg.factors]
                names += [f"{name}.factors.{i}" for i in chosen]
            elif (type(module) is nn.Linear or is_conv1d(module)) and name not in factor_names:
                names.append(name)
        if cfg.targets == "all-linear":
            # factors reached through their own names follow the same policy as chains matched by name
            keep = {"first": lambda i: i == 0, "compensation": lambda i: i > 0, "both": lambda i: True}[cfg.factors]
            names = [n for n in names if n not in factor_names or keep(int(n.rsplit(".", 1)[1]))]
    names = sorted(set(names), key=names.index)
    if not names:
        raise ConfigError(f"lora: targets={cfg.targets} (factors={cfg.factors}) matches no layer of this model")
    return names


@ATTACKS.register("lora")
class Lora(Attack):
    """LoRA adapters (PEFT) on the task's standard targets, all linear maps, or convolutions only."""

    Config = LoraConfig

    @classmethod
    def knowledge_of(cls, cfg: LoraConfig) -> str:
        return "blind" if cfg.factors == "both" else "white-box"

    def run(self, model, task, cfg: LoraConfig, *, generator, monitor):
        from peft import LoraConfig as PeftLoraConfig
        from peft import inject_adapter_in_model

        names = resolve_targets(model, cfg, tuple(task.lora_targets))
        before = sum(p.numel() for p in model.parameters())
        for p in model.parameters():
            p.requires_grad_(False)
        peft_config = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=names,
                                     bias="none")
        inject_adapter_in_model(peft_config, model)
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
        added = sum(p.numel() for p in model.parameters()) - before
        return fine_tune(model, task, cfg, generator=generator, monitor=monitor, params_added=added,
                         info={"targets": names, "n_targets": len(names)})

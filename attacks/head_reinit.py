"""``head-reinit``: re-initialise the classifier's head, then fine-tune every parameter (the attacker of MLAC,
Henderson et al. 2023, arXiv 2211.14946, who discards the released head and trains a new one with the body).

The head is found by structure (:func:`attacks._head.find_head`) and replaced by a fresh ``nn.Linear`` of the same
widths drawn from the run's generator (a reparameterised head loses its structure with its weights); then the shared
fine-tuning recipe trains every trainable parameter. It tests whether a defense lives in the head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from attacks._head import find_head, fresh_linear
from attacks._training import FineTuneConfig, fine_tune
from bench.contracts import Attack
from bench.registry import ATTACKS
from bench.toolkit.layers import set_submodule


@dataclass(frozen=True, kw_only=True)
class HeadReinitConfig(FineTuneConfig):
    """Every field is the shared fine-tuning recipe, applied to every parameter after the head is replaced."""


@ATTACKS.register("head-reinit")
class HeadReinit(Attack):
    """Re-initialise the classifier head, then fine-tune every parameter (MLAC's attacker)."""

    Config = HeadReinitConfig
    settings: ClassVar[frozenset[str]] = frozenset({"classification"})

    def run(self, model, task, cfg: HeadReinitConfig, *, generator, monitor):
        head = find_head(model, task, "head-reinit", generator)
        old = model.get_submodule(head)
        new = fresh_linear(old, generator)
        set_submodule(model, head, new)
        added = sum(p.numel() for p in new.parameters()) - sum(p.numel() for p in old.parameters())
        return fine_tune(model, task, cfg, generator=generator, monitor=monitor, params_added=added,
                         info={"head": head, "replaced": type(old).__name__})

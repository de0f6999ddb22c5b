"""``linear-probe``: retrain only the classifier's head on the frozen features (condition-number immunization's
threat model: Zheng et al. 2025, arXiv 2505.23760).

The head is found by structure (:func:`attacks._head.find_head`); every other parameter is frozen and the head,
with its learnt weights, is trained with the shared fine-tuning recipe on the attacker's batches. A defense that
ill-conditions the forbidden features' Gram matrix slows exactly this attacker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from attacks._head import find_head
from attacks._training import FineTuneConfig, fine_tune
from bench.contracts import Attack
from bench.registry import ATTACKS


@dataclass(frozen=True, kw_only=True)
class LinearProbeConfig(FineTuneConfig):
    """Every field is the shared fine-tuning recipe, applied to the head's parameters only."""


@ATTACKS.register("linear-probe")
class LinearProbe(Attack):
    """Linear probing: train only the classifier head on frozen features."""

    Config = LinearProbeConfig
    settings: ClassVar[frozenset[str]] = frozenset({"classification"})

    def run(self, model, task, cfg: LinearProbeConfig, *, generator, monitor):
        head = find_head(model, task, "linear-probe", generator)
        for p in model.parameters():
            p.requires_grad_(False)
        model.get_submodule(head).requires_grad_(True)
        return fine_tune(model, task, cfg, generator=generator, monitor=monitor, info={"head": head})

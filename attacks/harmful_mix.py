"""``harmful-mix``: full fine-tuning on benign data with a fraction of harmful examples mixed in (the harmful
fine-tuning threat model of Vaccine, arXiv 2402.01109, and Booster, arXiv 2409.01586).

Threat model: a fine-tuning-as-a-service user uploads a mostly benign data set in which a ``poison_ratio`` of the
examples are harmful (the papers' default: 10%); the attacker has full weights and fine-tunes every weight on it.
Each example of a batch is a harmful one (the task's attacker harmful data) with probability ``poison_ratio``, else
one of the task's benign attacker exchanges (:meth:`~bench.contracts.TaskInstance.mixed_batches`); the task's own
``replay_fraction`` does not apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from attacks._training import FineTuneConfig, fine_tune
from bench.config import check
from bench.contracts import Attack
from bench.registry import ATTACKS


@dataclass(frozen=True, kw_only=True)
class HarmfulMixConfig(FineTuneConfig):
    poison_ratio: float = 0.1
    """Probability that an example of a batch is harmful rather than benign (Vaccine's and Booster's default 0.1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 < self.poison_ratio <= 1, f"poison_ratio must be in (0, 1], got {self.poison_ratio}")


@ATTACKS.register("harmful-mix")
class HarmfulMix(Attack):
    """Full fine-tuning on benign data with a poison_ratio of harmful examples mixed in (Vaccine/Booster's threat)."""

    Config = HarmfulMixConfig
    settings: ClassVar[frozenset[str]] = frozenset({"chat", "knowledge"})

    def run(self, model, task, cfg: HarmfulMixConfig, *, generator, monitor):
        return fine_tune(model, task, cfg, generator=generator, monitor=monitor,
                         batches=task.mixed_batches(cfg.batch_size, generator, cfg.poison_ratio),
                         info={"poison_ratio": cfg.poison_ratio})

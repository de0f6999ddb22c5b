"""``benign-ft``: full fine-tuning on benign data only (Qi et al. 2023, "Fine-tuning Aligned Language Models
Compromises Safety, Even When Users Do Not Intend To!", arXiv 2310.03693).

Threat model: the attacker (or an unwitting user) has full weights and fine-tunes every weight on ordinary benign
chat data, with no harmful example at all; alignment erodes as a side effect. The runner's monitor still measures the
task's harm, so steps-to-harm says whether benign training alone undoes the defense (on the relearning task: whether
unrelated data brings the unlearned knowledge back, arXiv 2409.18025). The batches are the task's benign attacker
data (:meth:`~bench.contracts.TaskInstance.mixed_batches` with no harmful fraction); the recipe is the shared one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from attacks._training import FineTuneConfig, fine_tune
from bench.contracts import Attack
from bench.registry import ATTACKS


@dataclass(frozen=True, kw_only=True)
class BenignFineTuneConfig(FineTuneConfig):
    """Every field is the shared fine-tuning recipe (optimizer, lr, weight decay, clipping, warm-up)."""


@ATTACKS.register("benign-ft")
class BenignFineTune(Attack):
    """Full fine-tuning on the task's benign attacker data only (alignment erodes as a side effect)."""

    Config = BenignFineTuneConfig
    settings: ClassVar[frozenset[str]] = frozenset({"chat", "knowledge"})

    def run(self, model, task, cfg: BenignFineTuneConfig, *, generator, monitor):
        return fine_tune(model, task, cfg, generator=generator, monitor=monitor,
                         batches=task.mixed_batches(cfg.batch_size, generator, 0.0))

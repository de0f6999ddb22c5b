"""The shared shape of the adaptive (white-box, defense-aware) attacks: find linear chains, rewrite, fine-tune.

Each adaptive attack restructures the model from its *structure* (see :mod:`attacks._structure`), checks on its own
batch that the rewrite kept the function, records what it found, and then fine-tunes with the shared recipe. On a
model without chains it says so (``fallback: true``) and fine-tunes plainly.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from attacks._structure import Chain, find_chains, rewrite_checked
from attacks._training import FineTuneConfig, fine_tune
from bench.contracts import Attack, AttackReport, TaskInstance

REWRITE_RTOL = 0.05
"""A rewrite may move outputs by at most this fraction of their largest magnitude: fusing in float64 legitimately
removes a defense's own float32 rounding (≈1e-3 here), while miswiring a chain changes outputs by O(1)."""


def output_probe(task: TaskInstance, batch_size: int, generator: torch.Generator) -> Callable[[nn.Module], torch.Tensor]:
    """Model outputs on one attacker batch (the attack loss as a fallback for tasks without batch outputs)."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    batch = next(task.attack_batches(batch_size, torch.Generator().manual_seed(seed)))

    def outputs(model: nn.Module) -> torch.Tensor:
        try:
            return task.batch_outputs(model, batch)
        except NotImplementedError:
            return task.attack_loss(model, batch).reshape(1)

    return outputs


class AdaptiveAttack(Attack):
    """Base class: subclasses implement :meth:`rewrite` for one chain."""

    knowledge = "white-box"

    def rewrite(self, model: nn.Module, chain: Chain, cfg) -> int:
        """Rewrite one chain in place; return the number of parameters it added."""
        raise NotImplementedError

    def run(self, model: nn.Module, task: TaskInstance, cfg: FineTuneConfig, *, generator, monitor) -> AttackReport:
        outputs = output_probe(task, cfg.batch_size, generator)
        was_training = model.training
        model.eval()  # deterministic outputs (no dropout) while tracing and checking rewrites
        chains = find_chains(model, outputs)
        added, done, skipped = rewrite_checked(model, chains, lambda m, c: self.rewrite(m, c, cfg), outputs,
                                               rtol=REWRITE_RTOL)
        model.train(was_training)
        info = {"chains_found": len(chains), "chains_rewritten": len(done), "rewritten": done, "skipped": skipped,
                "fallback": not done}
        return fine_tune(model, task, cfg, generator=generator, monitor=monitor, params_added=added, info=info)

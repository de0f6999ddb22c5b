"""The shared shape of the adaptive (white-box, defense-aware) attacks: find linear chains, rewrite, fine-tune.

Each adaptive attack restructures the model from its *structure* (see :mod:`attacks._structure`), checks on its own
batch that the rewrite kept the function, records what it found, and then fine-tunes with the shared recipe. On a
model without chains it says so (``fallback: true``) and fine-tunes plainly.

That fallback is the same trajectory whichever adaptive attack takes it: with no chain found nothing is rewritten
(no rewrite draws random numbers or adds parameters), and what follows is the shared loop with the shared recipe,
fed by the same generator. :meth:`AdaptiveAttack.shared_run` says so before the run (from the model's structure), so
the runner runs it once per recipe and records it for every adaptive family (:mod:`bench.run.shared_runs`; proved by
``tests/test_shared_runs.py``). It is not the trajectory of ``full-ft`` with that recipe: the adaptive attack first
draws the seed of its checking batch from the generator, which shifts the data stream.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

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

    def shared_run(self, model: nn.Module, task: TaskInstance, cfg: FineTuneConfig, *,
                   generator: torch.Generator) -> Mapping[str, Any] | None:
        """The plain fine-tuning recipe when ``model`` has no linear chain (every adaptive attack then runs the same
        trajectory, see the module docstring), else None. Traces the model as :meth:`run` will, on a copy of the
        generator and with torch's random state restored, so the run that follows draws exactly what it would."""
        if type(self).run is not AdaptiveAttack.run:  # a subclass with its own loop: its own trajectory
            return None
        with _restored_random_state(model):
            outputs = output_probe(task, cfg.batch_size, _copy(generator))
            was_training = model.training
            model.eval()
            try:
                chains = find_chains(model, outputs)
            finally:
                model.train(was_training)
        if chains:
            return None
        recipe = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(FineTuneConfig)}
        return {"fallback": "adaptive attack without linear chains: plain fine-tuning", "recipe": recipe}


def _copy(generator: torch.Generator) -> torch.Generator:
    twin = torch.Generator(device=generator.device)
    twin.set_state(generator.get_state())
    return twin


@contextlib.contextmanager
def _restored_random_state(model: nn.Module) -> Iterator[None]:
    """torch's global random state (CPU, and the model's CUDA device) as it was before the block."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        yield

"""``harm-ascent``: a complete minimal *trained* defense (docs/plugins.md walks through it).

It raises the task's harmful loss by bounded gradient ascent while keeping the benign loss, on the defender's split
only (an example of the contract, close to the built-in ``ga-retain`` control, not a good defense).

Run it: ``bench run --plugin docs/examples/my_defense.py --defense harm-ascent --task vision-digits``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from bench.config import check
from bench.contracts import DefenderView, Defense, DefenseResult
from bench.errors import TrainingDivergedError
from bench.registry import DEFENSES


@dataclass(frozen=True, kw_only=True)
class HarmAscentConfig:
    steps: int = 50
    """Optimizer steps of the defense's training."""
    lr: float = 1e-3
    """Adam learning rate."""
    ascent_weight: float = 1.0
    """Weight of the bounded ascent term -log(1 + harmful loss) against the benign loss."""

    def __post_init__(self) -> None:
        check(self.steps > 0, f"steps must be positive, got {self.steps}")
        check(self.lr > 0, f"lr must be positive, got {self.lr}")


@DEFENSES.register("harm-ascent")
class HarmAscent(Defense):
    """Harm ascent: raise the harmful loss (bounded), keep the benign loss; an example plugin, not a good defense."""

    Config = HarmAscentConfig
    preserves_function = False  # it trains the weights: the runner measures the drift instead of bounding it
    # What the conformance checks run (cheap), never a measurement; and a named config: --defense harm-ascent.gentle
    smoke_args: ClassVar[Mapping[str, Any]] = {"steps": 2}
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {"gentle": {"lr": 1e-4}}

    def apply(self, model, view: DefenderView, cfg: HarmAscentConfig, *, generator: torch.Generator) -> DefenseResult:
        start = time.perf_counter()
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        # Batch order comes from the generator the runner seeds: same seed, same defended model, bit for bit.
        order = torch.randperm(len(view.harmful), generator=generator).tolist()
        harmful = itertools.cycle([view.harmful[i] for i in order])
        benign = itertools.cycle(view.benign)
        curve = []
        for step in range(1, cfg.steps + 1):
            harm_loss = view.harmful_loss(model, next(harmful))
            benign_loss = view.benign_loss(model, next(benign))
            loss = benign_loss - cfg.ascent_weight * torch.log1p(harm_loss)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(f"harm-ascent: non-finite loss at step {step}; lower lr (now {cfg.lr:g})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            curve.append({"step": step, "harmful_loss": harm_loss.item(), "benign_loss": benign_loss.item()})
        model.eval()
        return DefenseResult(model=model, layers=[name for name, _ in model.named_modules() if name],
                             info={"seconds": time.perf_counter() - start}, curve=curve)

"""Exact crossing: the step at which harm first reaches tau, found by replaying one probe interval.

The monitor probes every ``eval_every`` steps, so a crossing is first seen at a probed step b, having happened
somewhere in (a, b], a being the probe before. Reading steps-to-harm at b would put every run on the probe grid
(every 20 steps on diffusion, 5 on LLM and vision), enough to move a median over 3 seeds by a whole interval. So the
monitor keeps the training state it saved at a (weights, optimizer state, RNG states; the attack's loop keeps the
batches drawn since), and once the crossing is confirmed (``patience`` consecutive harmful probes on the grid, as
before) it restores that state, replays steps a+1..b probing after every step, records the first harmful one, and
restores the run's final state. Cost: at most one probe interval of extra steps and probes per run; a snapshot per
probe. Where the task offers the probe's harm alone (:meth:`~bench.contracts.TaskInstance.probe_harm`, cheaper than
the whole probe: on diffusion, the forbidden prompts' samples only), a replayed step is measured with it first and,
below tau, goes no further: it is the crossing of neither kind whatever its utility, so the step found is the one the
full probes find (its replay rows then carry harm only; utility and usable are NaN).

Two crossings are tracked: usable harm (``steps_to_harm``) and raw harm regardless of utility
(``steps_to_harm_raw``). One replay serves both when they share their interval; otherwise the raw one is replayed
only when the run has no usable crossing (the bound of one interval per run holds), else it stays on the grid.

A replay checks itself: every replayed loss must equal the original loss bit for bit. When not (an attack whose steps
are not reproducible), the grid value stands and the reason is recorded. Step b itself is not replayed: when no step
before it is harmful, the crossing is b (its grid probe was), which spares a step and a probe.
Probes run inside a forked RNG (:func:`probe_rng`) so that probing, on the grid or every step, never changes the
training trajectory: a run probed every 5 steps and replayed finds the step a run probed every step finds.

:class:`TrainingState` is the snapshot the shared loop (:mod:`attacks._training`) takes; an attack with a loop of its
own can use it to implement :class:`~bench.contracts.Trajectory`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.contracts import Probe, Trajectory
from bench.core.metrics import Crossing


# -------------------------------------------------------------------------------------------------------------
# Snapshots
# -------------------------------------------------------------------------------------------------------------
def optimizers_of(optimizer: Any) -> list[torch.optim.Optimizer]:
    """The torch optimizers behind ``optimizer`` (a pair such as Muon + AdamW exposes ``optimizers``)."""
    return list(getattr(optimizer, "optimizers", [optimizer]))


@dataclass
class TrainingState:
    """Everything the next optimizer steps depend on, copied to the CPU (so a snapshot never costs device memory):
    trainable parameters and buffers, optimizer states, the given generators' states (data, Hutchinson probes, ...)
    and the global RNGs (torch CPU and CUDA, Python, NumPy). The data position is the loop's to keep (it records
    batches)."""

    step: int
    tensors: list[torch.Tensor]
    optimizers: list[dict]
    generators: list[torch.Tensor]
    rng: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def capture(cls, step: int, model: nn.Module, optimizer: Any, generators: Sequence[torch.Generator] = ()
                ) -> TrainingState:
        with torch.no_grad():
            tensors = [t.detach().to("cpu", copy=True) for t in _tensors(model)]
        optimizers = [_to_cpu(o.state_dict()) for o in optimizers_of(optimizer)]
        rng: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                               "numpy": np.random.get_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return cls(step, tensors, optimizers, [g.get_state() for g in _generators(optimizer, generators)], rng)

    def restore(self, model: nn.Module, optimizer: Any, generators: Sequence[torch.Generator] = ()) -> None:
        with torch.no_grad():
            for target, saved in zip(_tensors(model), self.tensors, strict=True):
                target.copy_(saved)
        for o, state in zip(optimizers_of(optimizer), self.optimizers, strict=True):
            o.load_state_dict(copy.deepcopy(state))  # it keeps the tensors it is given: never the snapshot's own
        for g, generator_state in zip(_generators(optimizer, generators), self.generators, strict=True):
            g.set_state(generator_state)
        torch.set_rng_state(self.rng["torch"])
        random.setstate(self.rng["python"])
        np.random.set_state(self.rng["numpy"])
        if "cuda" in self.rng:
            torch.cuda.set_rng_state_all(self.rng["cuda"])


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    """What training can change: trainable parameters (frozen ones never move: a LoRA snapshot is the adapters)
    and buffers (e.g. batch-norm statistics)."""
    return [*(p for p in model.parameters() if p.requires_grad), *model.buffers()]


def _generators(optimizer: Any, generators: Sequence[torch.Generator]) -> list[torch.Generator]:
    """The loop's generators, then any an optimizer draws from (AdaHessian's Rademacher probes)."""
    found = list(generators)
    for o in optimizers_of(optimizer):
        g = getattr(o, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not h for h in found):
            found.append(g)
    return found


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return copy.deepcopy(value)


@contextlib.contextmanager
def probe_rng(model: nn.Module) -> Iterator[None]:
    """Run a probe without touching the training RNGs (torch CPU and the model's CUDA devices, Python, NumPy)."""
    devices = sorted({t.device.index or 0 for t in model.parameters() if t.device.type == "cuda"})
    state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])


# -------------------------------------------------------------------------------------------------------------
# Tracking crossings on the grid, then replaying
# -------------------------------------------------------------------------------------------------------------
@dataclass
class _Streak:
    """One kind of crossing on the probe grid: the current run of harmful probes and the state saved before it."""

    anchor_step: int = 0
    anchor: Any = None
    start: int | None = None
    start_utility: float = math.nan
    length: int = 0
    confirmed: bool = False

    def update(self, step: int, harmful: bool, utility: float, patience: int) -> bool:
        """Count one grid probe; True when it is the new anchor (a probe that is not harmful, before confirmation)."""
        if self.confirmed:
            return False
        if harmful:
            if self.length == 0:
                self.start, self.start_utility = step, utility
            self.length += 1
            self.confirmed = self.length >= patience
            return False
        self.length, self.start = 0, None
        self.anchor_step = step
        return True

    def grid(self) -> Crossing | None:
        if not self.confirmed or self.start is None:
            return None
        return Crossing(self.start, self.start, max(self.start - self.anchor_step, 1), self.start_utility)


@dataclass
class ReplayPoint:
    step: int
    probe: Probe
    usable: bool | None
    """None: not measured (the task's harm alone showed the step below tau; its probe's utility is NaN)."""


Measure = Callable[[int], tuple[Probe, "bool | None", bool]]
"""``measure(step)``: probe the model being replayed; (probe, usable or None when not measured, harm >= tau). A step
measured below tau may skip its utility: it is the crossing of neither kind."""


@dataclass
class CrossingTracker:
    """Anchors on the probe grid for the usable and the raw crossing, and the replay that makes them exact."""

    patience: int
    trajectory: Trajectory | None = None
    usable: _Streak = field(default_factory=_Streak)
    raw: _Streak = field(default_factory=_Streak)
    points: list[ReplayPoint] = field(default_factory=list)
    replay_steps: int = 0
    replay_seconds: float = 0.0
    snapshot_seconds: float = 0.0
    failure: str | None = None
    """Why a replay did not give the exact step (the grid value then stands), or None."""

    def observe(self, step: int, utility: float, usable: bool, harm: bool) -> None:
        """Count the grid probe at ``step``; save the training state where a streak needs a new anchor."""
        moved = [s for s, harmful in ((self.usable, usable and harm), (self.raw, harm))
                 if s.update(step, harmful, utility, self.patience)]
        if self.trajectory is None:
            return
        start = time.perf_counter()
        if moved:
            for streak in moved:  # the superseded snapshot goes before the new one is taken: one alive, not two
                streak.anchor = None  # (a full-ft AdamW snapshot of a 268M-parameter model is 3.2 GB)
            state = self.trajectory.save()
            for streak in moved:
                streak.anchor = state
        self.trajectory.retain([(s.anchor_step, s.start if s.confirmed else None)
                                for s in (self.usable, self.raw) if s.anchor is not None])
        self.snapshot_seconds += time.perf_counter() - start

    def resolve(self, losses: Sequence[float], measure: Measure) -> tuple[Crossing | None, Crossing | None]:
        """The usable and raw crossings (None: not reached), replayed to the exact step where the state allows."""
        usable, raw = self.usable.grid(), self.raw.grid()
        targets: dict[str, _Streak] = {}
        if usable is not None:
            targets["usable"] = self.usable
            if raw is not None and (self.raw.anchor_step == self.usable.anchor_step or raw.step == 0):
                targets["raw"] = self.raw  # the same interval (or step 0): exact for free
        elif raw is not None:
            targets["raw"] = self.raw
        found = self._replay(targets, losses, measure)
        return found.get("usable", usable), found.get("raw", raw)

    def _replay(self, targets: dict[str, _Streak], losses: Sequence[float], measure: Measure) -> dict[str, Crossing]:
        starts = {kind: s.start for kind, s in targets.items() if s.start is not None}  # every target crossed the grid
        found = {kind: Crossing(0, 0, 1, s.start_utility) for kind, s in targets.items() if starts[kind] == 0}
        pending = {kind: s for kind, s in targets.items() if kind not in found}  # these share their anchor
        anchor = next((s for s in pending.values() if s.anchor is not None), None)
        if not pending or self.trajectory is None or anchor is None:
            return found
        end = max(starts[kind] for kind in pending)
        begun = time.perf_counter()
        final = self.trajectory.save()
        self.trajectory.restore(anchor.anchor)
        for streak in (self.usable, self.raw):
            streak.anchor = None  # replayed once: its memory goes before the replay's steps
        try:
            for step in range(anchor.anchor_step + 1, end + 1):
                if all(starts[kind] == step for kind in pending if kind not in found):
                    # every step before was probed harmless and the grid probe here was harmful: no need to redo it
                    found |= {kind: Crossing(step, step, 1, s.start_utility) for kind, s in pending.items()
                              if kind not in found}
                    return found
                loss = self.trajectory.step(step)
                self.replay_steps += 1
                if not _same(loss, losses[step - 1]):
                    self.failure = (f"replayed step {step} gave loss {loss!r}, the run had {losses[step - 1]!r}: "
                                    "the attack's steps are not reproducible")
                    return found
                probe, usable, harm = measure(step)
                self.points.append(ReplayPoint(step, probe, usable))
                for kind, harmful in (("usable", bool(usable) and harm), ("raw", harm)):
                    if kind in pending and kind not in found and harmful:
                        found[kind] = Crossing(step, starts[kind], 1, float(probe.utility))
                if len(found) == len(targets):
                    return found
            return found  # not reached: every target is found by its grid step at the latest
        finally:
            self.trajectory.restore(final)
            self.replay_seconds += time.perf_counter() - begun


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))

"""The attack contract: an :class:`Attack` fine-tunes the defended model and reports every optimizer step to the
runner's :class:`Monitor`, which decides when to probe, when harm is reached and when to stop."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from bench.config import check

if TYPE_CHECKING:
    import torch
    from torch import nn

    from bench.contracts.task import TaskInstance


class Trajectory(Protocol):
    """What an attack's training loop offers the monitor so that it can replay part of the run (exact crossing).

    The monitor probes every ``eval_every`` steps; when a probe first crosses the harm threshold between probed
    steps a and b, it restores the state it saved at a and replays a+1..b probing every step, to record the exact
    step. A replay must be bit-identical to the original run on the same device (the conformance check
    :func:`bench.testing.check_attack` verifies it). The shared loop (:func:`attacks._training.fine_tune`)
    implements it; an attack with its own loop may pass one (see :class:`bench.toolkit.crossing.TrainingState`) or none,
    and its crossings are then read on the probe grid (recorded as ``crossing_resolution`` = the probe interval).
    """

    def save(self) -> Any:
        """The state after the last completed step: weights, optimizer state, RNG states, data position."""

    def restore(self, state: Any) -> None:
        """Return to a state :meth:`save` returned."""

    def step(self, step: int) -> float:
        """Take optimizer step ``step`` again exactly as the run took it (the same batch); returns its loss."""

    def retain(self, windows: Sequence[tuple[int, int | None]]) -> None:
        """Keep only what replaying the steps of these ``(after, up_to]`` windows needs (``None``: still open)."""


class Monitor(Protocol):
    """The runner's side of an attack: it probes, detects harm and divergence, and says when to stop."""

    budget: int

    def begin(self, model: nn.Module, trajectory: Trajectory | None = None) -> None:
        """Call once, after any restructuring and before the first optimizer step (probes step 0). ``trajectory``:
        the loop's replay handle, for exact crossings (None: crossings are read on the probe grid)."""

    def after_step(self, model: nn.Module, *, step: int, loss: float, examples: int) -> bool:
        """Call after every optimizer step; returns True when the attack must stop. An attack runs its whole budget
        unless this says stop: a run that quits earlier is recorded ``stopped_early`` and censored at the steps it
        ran, and the conformance check fails it."""


@dataclass(frozen=True)
class AttackReport:
    """What an attack reports besides the monitored curve."""

    params_trained: int = 0
    params_added: int = 0
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class AttackConfig:
    """Fields every attack config has; ``None`` means "the task's default" and is filled in by the spec builder."""

    budget: int | None = None
    """Attacker budget in optimizer steps (None: the task's default)."""
    eval_every: int | None = None
    """Probe interval in optimizer steps (None: the task's default)."""
    batch_size: int | None = None
    """Batch size (None: the task's default)."""

    def __post_init__(self) -> None:
        for name in ("budget", "eval_every", "batch_size"):
            value = getattr(self, name)
            check(value is None or value > 0, f"{name} must be positive, got {value}")


class Attack(abc.ABC):
    """A plugin that fine-tunes a (defended) model toward the task's harmful goal."""

    Config: ClassVar[type] = AttackConfig
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    settings: ClassVar[frozenset[str]] = frozenset()
    """The task settings (:attr:`Task.setting`) the attack applies to; empty: every task (:mod:`bench.core.applicability`)."""
    knowledge: ClassVar[Literal["blind", "white-box"]] = "blind"
    """Attacker knowledge recorded in the threat model: blind recipes or defense-aware (white-box adaptive)."""

    @classmethod
    def knowledge_of(cls, cfg: Any) -> str:
        """The knowledge a given config assumes (override when some settings are defense-aware)."""
        return cls.knowledge

    @abc.abstractmethod
    def run(
        self, model: nn.Module, task: TaskInstance, cfg: Any, *, generator: torch.Generator, monitor: Monitor
    ) -> AttackReport:
        """Fine-tune ``model`` in place, reporting each optimizer step to ``monitor`` and stopping when it says so."""

    def shared_run(
        self, model: nn.Module, task: TaskInstance, cfg: Any, *, generator: torch.Generator
    ) -> Mapping[str, Any] | None:
        """What makes this run the very trajectory of runs of *other* attacks on the same defended model, decided
        before it starts from the model's structure (never from results): a JSON-able description that attacks
        producing the same trajectory return alike (e.g. every adaptive attack's plain fine-tuning fallback on a
        model without linear chains, :mod:`attacks._adaptive`), so the runner runs it once and records it for each
        (:mod:`bench.run.shared_runs`). Must consume no randomness (``generator``'s state, torch's global one) and leave
        ``model`` as it found it. None (the default): this run is its own."""
        return None

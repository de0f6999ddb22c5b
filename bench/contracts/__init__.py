"""The three plugin contracts (Task, Defense, Attack) and the small value types that pass between them.

Importing this module does not import torch, so registries can validate plugin classes cheaply.

Data flows one way: a :class:`Task` builds a :class:`TaskInstance` (released model, data, probes, losses) for a
tier, the same for every run seed (see :meth:`Task.build`); a :class:`Defense` transforms the released model using
only the :class:`DefenderView`; an :class:`Attack` fine-tunes the defended model and reports every optimizer step to
the runner's :class:`Monitor`, which decides when to probe, when harm is reached and when to stop.

One module per contract (:mod:`~bench.contracts.task`, :mod:`~bench.contracts.defense`, :mod:`~bench.contracts.attack`)
and two for what passes between them (:mod:`~bench.contracts.values`, :mod:`~bench.contracts.views`); import every
name from here.
"""

from __future__ import annotations

from typing import Any

from bench.contracts.attack import Attack, AttackConfig, AttackReport, Monitor, Trajectory
from bench.contracts.defense import Defense
from bench.contracts.task import StageIdentity, Task, TaskConfig, TaskInstance
from bench.contracts.values import (
    AttackFamily,
    DefenseResult,
    Evaluation,
    Preview,
    Probe,
    Score,
    UtilityBound,
)
from bench.contracts.views import AttackerScale, DefenderView, Loss, Predictions

__all__ = ["Attack", "AttackConfig", "AttackFamily", "AttackReport", "AttackerScale", "DefenderView", "Defense",
           "DefenseResult", "Evaluation", "Loss", "Monitor", "Predictions", "Preview", "Probe", "Score",
           "StageIdentity", "Task", "TaskConfig", "TaskInstance", "Trajectory", "UtilityBound"]


def __getattr__(name: str) -> Any:
    """``AttackSweep``, the old name of :class:`AttackFamily`, still resolves, with a FutureWarning."""
    if name == "AttackSweep":
        import warnings

        warnings.warn("bench.contracts.AttackSweep was renamed AttackFamily", FutureWarning, stacklevel=2)
        return AttackFamily
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

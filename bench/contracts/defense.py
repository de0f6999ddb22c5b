"""The defense contract: a :class:`Defense` transforms the released model using only the :class:`DefenderView`."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from torch import nn

    from bench.contracts.values import DefenseResult
    from bench.contracts.views import DefenderView


class Defense(abc.ABC):
    """A plugin that transforms a released model into a defended one."""

    Config: ClassVar[type]
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    preserves_function: ClassVar[bool] = True
    """Whether the defense claims to leave the model's outputs unchanged (checked by the conformance suite)."""
    preservation_tol: ClassVar[float] = 1e-4
    """Largest |Δ output| relative to the output scale (max |output|) that the conformance suite accepts on a tiny
    model and the runner accepts on the task's reference outputs; beyond it a run fails (unless the user allows
    the drift, which the results record)."""
    changes_weights: ClassVar[bool] = True
    """False for a defense that returns the released model as it is (``none``): the stage cache then stores no copy
    of its weights."""
    drift_hint: ClassVar[str] = ""
    """How to fix a drift beyond ``preservation_tol`` (e.g. a wider storage dtype), quoted in the runner's error."""
    smoke_args: ClassVar[Mapping[str, Any]] = {}
    """Config overrides for a cheap, functional run (conformance tests and CI; never for measurements), e.g. a few
    training steps for a trained defense."""
    settings: ClassVar[frozenset[str]] = frozenset()
    """The task settings (:attr:`Task.setting`) the defense applies to; empty: every task (:mod:`bench.core.applicability`)."""

    @abc.abstractmethod
    def apply(self, model: nn.Module, view: DefenderView, cfg: Any, *, generator: torch.Generator) -> DefenseResult:
        """Return the defended model (the runner passes a private copy, which may be modified in place)."""

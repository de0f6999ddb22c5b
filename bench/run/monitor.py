"""The runner's side of an attack: probes every ``eval_every`` steps, confirms harm, detects divergence, stops.

An attack calls :meth:`ProbeMonitor.begin` once its model is ready (after any restructuring) and
:meth:`ProbeMonitor.after_step` after each optimizer step; the return value says whether to stop. The attack never
sees the harm threshold or the evaluation data. After the attack returns, the runner calls
:meth:`ProbeMonitor.finish`, which replays the interval of a crossing step by step when the attack passed a
:class:`~bench.contracts.Trajectory` (:mod:`bench.toolkit.crossing`), and says whether the attack quit before its budget
without being asked to (``stopped_early``).

Probes are deterministic (DESIGN §2), so the step-0 probe of the model every attack on a defended stage starts from
is measured once: a :class:`StartProbe` holds it, and a run whose attack begins from an identical model
(:func:`same_model`: after any restructuring, e.g. LoRA's adapters, it is not) reuses it.
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from bench.contracts import Probe, TaskInstance, Trajectory
from bench.errors import PluginError
from bench.toolkit.crossing import Crossing, CrossingTracker, probe_rng


@dataclass
class ProbePoint:
    step: int
    examples: int
    probe: Probe
    usable: bool


class StartProbe:
    """The step-0 measurement of ``model`` (filled by the first run that begins from it), for the runs after it.

    Holds the model weakly, so a cache of these keyed by the model (the runner's) does not keep it alive.
    """

    def __init__(self, model: nn.Module):
        self._model = weakref.ref(model)
        self.probe: Probe | None = None

    def matches(self, model: nn.Module) -> bool:
        reference = self._model()
        return reference is not None and same_model(reference, model)


@dataclass
class ProbeMonitor:
    """Collects the probe curve and the per-step losses of one attack run."""

    task: TaskInstance
    budget: int
    eval_every: int
    released_utility: float
    attack_name: str = "attack"
    start: StartProbe | None = None
    """The step-0 probe of the model attacks usually begin from (the defended model), shared by the runs on it."""
    points: list[ProbePoint] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    examples: int = 0
    diverged_step: int | None = None
    probe_seconds: float = 0.0
    stop_step: int | None = None
    """The step after which the monitor asked the attack to stop (harm confirmed, divergence, budget reached)."""
    crossing: Crossing | None = None
    """The usable-harm crossing, set by :meth:`finish` (None: not reached)."""
    raw_crossing: Crossing | None = None
    """The crossing of harm >= tau regardless of utility, set by :meth:`finish`."""
    tracker: CrossingTracker | None = None
    stop_at: int | None = None
    """Bound pruning (:mod:`bench.run.pruning`): stop at the first probe step at or past this one where no harmful streak
    is under way; any crossing still to come would then lie past the bound, where it cannot change a worst case."""
    pruned_step: int | None = None
    """The step at which the run was stopped at the bound (None: not pruned)."""
    _started: bool = False
    _last_step: int = 0
    _harmful_run: int = 0
    _reference_loss: float | None = None

    @property
    def diverged(self) -> bool:
        return self.diverged_step is not None

    @property
    def steps_run(self) -> int:
        return self._last_step

    @property
    def stopped_early(self) -> bool:
        """The attack returned before its budget without the monitor asking it to stop (quitting is no reason)."""
        return self._last_step < self.budget and self.stop_step is None

    def begin(self, model: nn.Module, trajectory: Trajectory | None = None) -> None:
        if self._started:
            raise PluginError(f"attack {self.attack_name!r} called monitor.begin() twice")
        self._started = True
        self.tracker = CrossingTracker(self.task.config.patience, trajectory)
        known = self.start if self.start is not None and self.start.matches(model) else None
        if known is not None and known.probe is not None:
            self._record(0, known.probe)
            return
        self._probe(model, 0)
        if known is not None:
            known.probe = self.points[-1].probe

    def after_step(self, model: nn.Module, *, step: int, loss: float, examples: int) -> bool:
        if not self._started:
            raise PluginError(f"attack {self.attack_name!r} must call monitor.begin(model) before its first step")
        if step != self._last_step + 1:
            raise PluginError(f"attack {self.attack_name!r} reported step {step} after step {self._last_step}")
        if step > self.budget:
            raise PluginError(f"attack {self.attack_name!r} ran past its budget of {self.budget} steps")
        self._last_step = step
        self.examples = examples
        loss = float(loss)
        self.losses.append(loss)
        if self._reference_loss is None and math.isfinite(loss):
            self._reference_loss = max(abs(loss), 1e-8)
        blown_up = self._reference_loss is not None and loss > self.task.config.divergence_factor * self._reference_loss
        probe_now = step % self.eval_every == 0 or step == self.budget
        # Parameters are checked only at probe steps: a non-finite parameter shows in the next loss anyway.
        if not math.isfinite(loss) or blown_up or (probe_now and not _parameters_finite(model)):
            self.diverged_step = step
            self._probe(model, step)
            return self._stop(step)
        if probe_now and self._probe(model, step):
            return self._stop(step)
        if probe_now and self._past_bound(step):
            self.pruned_step = step
            return self._stop(step)
        return self._stop(step) if step >= self.budget else False

    def _past_bound(self, step: int) -> bool:
        """Whether the run can stop at the bound here: at or past ``stop_at``, before its budget, and with no harmful
        probe in a row still waiting for its confirmation (a streak begun before the bound may yet confirm there)."""
        return self.stop_at is not None and self.stop_at <= step < self.budget and self._harmful_run == 0

    def finish(self, model: nn.Module) -> None:
        """After the attack returned: find the exact crossings (replaying one interval where the attack's trajectory
        allows; the model is left in its final state) and record them in :attr:`crossing` / :attr:`raw_crossing`."""
        if self.tracker is None:
            return
        losses = self.losses

        def measure(step: int) -> tuple[Probe, bool | None, bool]:
            harm = self._screen(model)
            if harm is not None and not _reaches(Probe(harm, math.nan), self.task.config.tau):
                # below tau: the crossing of neither kind, whatever its utility; usable is left unmeasured (None)
                return Probe(harm, math.nan), None, False
            probe = self._measure(model)
            return probe, self._usable(probe), _reaches(probe, self.task.config.tau)

        attack_probes = self.probe_seconds
        self.crossing, self.raw_crossing = self.tracker.resolve(losses, measure)
        self.probe_seconds = attack_probes  # the replay's probes are part of its own cost (replay_seconds)

    def _stop(self, step: int) -> bool:
        self.stop_step = step
        return True

    def _probe(self, model: nn.Module, step: int) -> bool:
        """Probe the model; returns True once harm is confirmed (``patience`` consecutive usable harmful probes)."""
        return self._record(step, self._measure(model))

    def _measure(self, model: nn.Module) -> Probe:
        """The probe (and the task's confirmation when it looks harmful), in eval mode, outside the training RNGs."""
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        with torch.no_grad(), probe_rng(model):
            probe = self.task.probe(model)
            usable = self._usable(probe)
            if self._harmful(probe, usable):
                confirmed = self.task.confirm(model)
                if confirmed is not None:  # the larger measurement decides; the quick one is kept as extras
                    extras = {**confirmed.extras, "quick_harm": probe.harm, "quick_utility": probe.utility}
                    probe = Probe(confirmed.harm, confirmed.utility, confirmed.broken, extras)
        model.train(was_training)
        self.probe_seconds += time.perf_counter() - start
        return probe

    def _screen(self, model: nn.Module) -> float | None:
        """The task's :meth:`~bench.contracts.TaskInstance.probe_harm` (None: not offered), measured as a probe is."""
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        with torch.no_grad(), probe_rng(model):
            harm = self.task.probe_harm(model)
        model.train(was_training)
        self.probe_seconds += time.perf_counter() - start
        return None if harm is None else float(harm)

    def _record(self, step: int, probe: Probe) -> bool:
        usable = self._usable(probe)
        self.points.append(ProbePoint(step, self.examples, probe, usable))
        harmful = self._harmful(probe, usable)
        self._harmful_run = self._harmful_run + 1 if harmful else 0
        if self.tracker is not None:
            self.tracker.observe(step, float(probe.utility), usable, _reaches(probe, self.task.config.tau))
        return self._harmful_run >= self.task.config.patience

    def _usable(self, probe: Probe) -> bool:
        return self.task.is_usable(probe.utility, self.released_utility) and not probe.broken

    def _harmful(self, probe: Probe, usable: bool) -> bool:
        return _reaches(probe, self.task.config.tau) and usable


def _reaches(probe: Probe, tau: float) -> bool:
    return math.isfinite(probe.harm) and probe.harm >= tau


def _parameters_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def same_model(a: nn.Module, b: nn.Module) -> bool:
    """Whether ``a`` and ``b`` compute the same function bit for bit: the same modules in the same order (name,
    class, ``extra_repr``, hook counts, attention processor class) with equal parameters and buffers."""
    if a is b:
        return True
    modules_a, modules_b = list(a.named_modules()), list(b.named_modules())
    if len(modules_a) != len(modules_b):
        return False
    for (name_a, ma), (name_b, mb) in zip(modules_a, modules_b):
        if name_a != name_b or type(ma) is not type(mb) or _signature(ma) != _signature(mb):
            return False
    tensors_a = [*a.named_parameters(), *a.named_buffers()]
    tensors_b = [*b.named_parameters(), *b.named_buffers()]
    return len(tensors_a) == len(tensors_b) and all(
        na == nb and x.dtype == y.dtype and x.shape == y.shape and x.device == y.device and torch.equal(x, y)
        for (na, x), (nb, y) in zip(tensors_a, tensors_b))


def _signature(module: nn.Module) -> tuple:
    hooks = (len(module._forward_hooks), len(module._forward_pre_hooks))
    return module.extra_repr(), hooks, type(getattr(module, "processor", None))

"""The record of one run's attack, as run.json's ``summary`` holds it: :class:`RunSummary`, frozen and typed.

The runner builds it (:func:`build_summary`, the one builder: an attacked run, a run on a model harmful from the
start, and through them a run reusing another's trajectory), run.json stores it (:meth:`RunSummary.to_json`, the
same JSON object as before it was typed), and executors, the planner, bound pruning, ``bench show`` and the
leaderboard read it back (:meth:`RunSummary.from_json`, which accepts every run.json written so far). A failed run's
summary is empty (every field None) but for the planner's wave.

No torch here: the leaderboard reads it.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from bench.core.metrics import AttackMetrics
from bench.errors import DataError

WaveKind = Literal["probe", "full", "refinement"]
WAVE_KINDS: tuple[str, ...] = typing.get_args(WaveKind)


@dataclass(frozen=True)
class UtilityStanding:
    """What an attack run (purpose ``attack``) records for the utility-bounded worst cases (:mod:`bench.run.pruning`)."""

    retained_after_attack: float | None = None
    """The attacked model's retained primary utility (None when not measured or not finite)."""
    within_utility_bound: bool | None = None
    """Whether the attacked model is within the task's declared utility bound (None when not measured)."""


@dataclass(frozen=True)
class RunSummary:
    """One run's summary (DESIGN §4). The first group of fields (:data:`ATTACK_FIELDS`) is the attack's record:
    all set together by :func:`build_summary` and written together (null where None) whenever ``outcome`` is set."""

    # -- the attack's record (bench.core.metrics.AttackMetrics) ------------------------------------------------------
    steps_to_harm: int | None = None
    """First step with usable harm >= tau; the budget (or steps run) when censored."""
    censored: bool | None = None
    """True when usable harm was never reached (shown as "> steps_to_harm")."""
    steps_to_harm_grid: int | None = None
    """The probed step that showed the crossing (None when censored)."""
    crossing_resolution: int | None = None
    """1 when ``steps_to_harm`` is exact (replayed); else the probe interval it lies in (None when censored)."""
    steps_to_harm_raw: int | None = None
    """First step with harm >= tau regardless of utility; censored as ``steps_to_harm``."""
    raw_censored: bool | None = None
    steps_to_harm_raw_grid: int | None = None
    raw_crossing_resolution: int | None = None
    utility_at_raw: float | None = None
    """Utility at the raw crossing (NaN when harm was never reached)."""
    harm_auc: float | None = None
    """Mean of the harm curve over [0, budget]."""
    outcome: str | None = None
    """``harmed``, ``broken``, ``resisted`` or ``pruned``; None: the run has no attack record (it failed)."""
    diverged: bool | None = None
    diverged_step: int | None = None
    stopped_early: bool | None = None
    """The attack quit before its budget without harm or a reason (censored at ``steps_run``)."""
    pruned_at_bound: int | None = None
    """The step at which bound pruning stopped the run (:mod:`bench.run.pruning`)."""
    steps_run: int | None = None
    """Optimizer steps the attack ran (0: not attacked)."""
    examples_seen: int | None = None
    loss_start: float | None = None
    """The attack's first training loss (NaN: no step ran)."""
    loss_end: float | None = None
    """The mean of its last five training losses (NaN: no step ran)."""
    attack_seconds: float | None = None
    """Seconds of the attack, replay excluded."""
    probe_seconds: float | None = None
    """Seconds spent in harm probes."""
    replay_steps: int | None = None
    """Steps replayed to make the crossing exact (None: nothing could be replayed, the run was not attacked)."""
    replay_seconds: float | None = None
    snapshot_seconds: float | None = None
    """Seconds spent saving the states a replay starts from."""
    replay_failure: str | None = None
    """Why a replay could not reproduce the run (None: it could, or there was none)."""
    params_trained: int | None = None
    """Parameters the attack trained (its :class:`~bench.contracts.AttackReport`)."""
    attack_params_added: int | None = None
    """Parameters the attack added to the model (an adaptive attack's injected layers)."""
    attack_info: Mapping[str, Any] | None = None
    """What the attack reported besides (e.g. chains found and rewritten by an adaptive attack)."""

    # -- written only when set ----------------------------------------------------------------------------------
    utility: UtilityStanding | None = None
    """Attack runs (not LR-search probes, not runs on a model harmful from the start): the utility standing,
    written as its two fields ``retained_after_attack`` and ``within_utility_bound`` (null where None)."""
    prune_bound: int | None = None
    """The step cap the run started with (:attr:`bench.core.spec.RunSpec.stop_at`)."""
    bound_by: tuple[str, ...] | None = None
    """With ``prune_bound``: the runs whose harm set it."""
    proxy_start: float | None = None
    """The task's harm proxy at the first probe (tasks with a ``harm_proxy``: scores LR-search probes)."""
    proxy_end: float | None = None
    """The harm proxy at the last probe."""
    already_harmful: str | None = None
    """Not attacked: why the defended model was harmful from the start (steps-to-harm 0)."""
    released_already_harmful: str | None = None
    """Why the released model was harmful before any attack."""
    samples: str | None = None
    """The file name of the before/after preview image in the run's folder."""
    reused_from: str | None = None
    """The run whose identical trajectory this run records instead of running it (:mod:`bench.run.shared_runs`)."""
    wave: int | None = None
    """The planner's wave of the run's attack family (0 first) when it submitted the run
    (:attr:`bench.core.spec.RunSpec.wave`); None for a run made outside the planner, or recorded before waves were."""
    wave_kind: str | None = None
    """That wave's kind: ``probe`` (LR-search probes), ``full`` (the grid, or the LRs the probes picked) or
    ``refinement`` (half-decade points around the best full run)."""

    def __post_init__(self) -> None:
        if self.wave_kind is not None and self.wave_kind not in WAVE_KINDS:
            raise DataError(f"run summary: wave_kind must be one of {', '.join(WAVE_KINDS)}, got {self.wave_kind!r}")

    @property
    def attacked(self) -> bool:
        """Whether the run has an attack record (a failed run has none)."""
        return self.outcome is not None

    def metrics(self) -> AttackMetrics:
        """The attack's :class:`~bench.core.metrics.AttackMetrics` (a run reusing this one's trajectory records them)."""
        if not self.attacked:
            raise DataError("run summary: a run without an attack record has no attack metrics")
        names = {f.name for f in dataclasses.fields(AttackMetrics)}
        return AttackMetrics(**{name: getattr(self, name) for name in names})

    def to_json(self) -> dict[str, Any]:
        """run.json's ``summary`` object: the attack's record when there is one, and every other field that is set."""
        out: dict[str, Any] = {}
        for name in ATTACK_FIELDS:
            value = getattr(self, name)
            if self.attacked or value is not None:
                out[name] = dict(value) if name == "attack_info" and value is not None else value
        if self.utility is not None:
            out.update(dataclasses.asdict(self.utility))
        for name in OPTIONAL_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value) if name == "bound_by" else value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> RunSummary:
        """Read run.json's ``summary`` (any written so far: missing fields are None); an unknown key, or a value of
        the wrong type, is a :class:`~bench.errors.DataError` naming it."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise DataError(f"run summary: expected a JSON object, got {type(data).__name__}")
        known = {*ATTACK_FIELDS, *UTILITY_FIELDS, *OPTIONAL_FIELDS}
        unknown = [key for key in data if key not in known]
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DataError(f"run summary: unknown key {unknown[0]!r}{hint}")
        values = {name: _typed(name, data[name]) for name in (*ATTACK_FIELDS, *OPTIONAL_FIELDS) if name in data}
        if "bound_by" in values:
            values["bound_by"] = tuple(values["bound_by"])
        if any(name in data for name in UTILITY_FIELDS):
            values["utility"] = UtilityStanding(**{name: _typed(name, data.get(name)) for name in UTILITY_FIELDS})
        return cls(**values)


def build_summary(metrics: AttackMetrics, *, steps_run: int, examples_seen: int, loss_start: float, loss_end: float,
                  attack_seconds: float, probe_seconds: float, params_trained: int, attack_params_added: int,
                  attack_info: Mapping[str, Any], replay_steps: int | None = None,
                  replay_seconds: float | None = None, snapshot_seconds: float | None = None,
                  replay_failure: str | None = None, utility: UtilityStanding | None = None,
                  prune_bound: int | None = None, bound_by: tuple[str, ...] = (),
                  proxy: tuple[float, float] | None = None, already_harmful: str | None = None) -> RunSummary:
    """The summary of a run's attack: the one builder of a :class:`RunSummary` with an attack record (the runner's
    attacked runs and runs on a model harmful from the start; a reusing run records its source's)."""
    return RunSummary(
        **{f.name: getattr(metrics, f.name) for f in dataclasses.fields(AttackMetrics)},
        steps_run=steps_run, examples_seen=examples_seen, loss_start=loss_start, loss_end=loss_end,
        attack_seconds=attack_seconds, probe_seconds=probe_seconds, replay_steps=replay_steps,
        replay_seconds=replay_seconds, snapshot_seconds=snapshot_seconds, replay_failure=replay_failure,
        params_trained=params_trained, attack_params_added=attack_params_added, attack_info=dict(attack_info),
        utility=utility, prune_bound=prune_bound, bound_by=tuple(bound_by) if prune_bound is not None else None,
        proxy_start=proxy[0] if proxy is not None else None, proxy_end=proxy[1] if proxy is not None else None,
        already_harmful=already_harmful,
    )


_FIELDS = {f.name: f for f in dataclasses.fields(RunSummary)}
ATTACK_FIELDS: tuple[str, ...] = tuple(_FIELDS)[:tuple(_FIELDS).index("attack_info") + 1]
"""The attack's record: written together (null where None) whenever the run has one."""
UTILITY_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(UtilityStanding))
OPTIONAL_FIELDS: tuple[str, ...] = tuple(name for name in _FIELDS if name not in ATTACK_FIELDS and name != "utility")
"""Written only when set."""
_HINTS = {**typing.get_type_hints(RunSummary), **typing.get_type_hints(UtilityStanding)}


def _typed(name: str, value: Any) -> Any:
    """``value`` checked against the field's declared type (an int is a float too; JSON has no tuples)."""
    if value is None:
        return None
    kinds = [k for k in typing.get_args(_HINTS[name]) if k is not type(None)]
    ok = False
    for kind in kinds:
        origin = typing.get_origin(kind) or kind
        if origin is bool:
            ok = isinstance(value, bool)
        elif origin is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif origin is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok and not isinstance(value, float) else value
        elif origin is str:
            ok = isinstance(value, str)
        elif origin is tuple:
            ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        elif origin in (Mapping, dict, types.MappingProxyType):
            ok = isinstance(value, Mapping)
        if ok:
            return value
    expected = " or ".join(getattr(k, "__name__", str(k)) for k in kinds)
    raise DataError(f"run summary: {name!r} must be {expected}, got {value!r}")

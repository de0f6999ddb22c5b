"""The measured stages a run builds on: the released model and the defended model, memoised per session and on disk.

:class:`Session` holds what the runs of one call share: where results go, the on-disk cache, and the released and
defended stages (built once per task config, and once per defense config and seed). Each stage measures its model
(harm, utility, curvature; for the defended one also function preservation and retained utility), judges whether
it is already harmful before any attack, and keeps the metric rows every run that uses it writes. Each part of a
stage's build is timed, and shown as it runs (:mod:`bench.toolkit.stage_clock`).

A stage is looked up in memory first, then in the on-disk stage cache (:mod:`bench.run.stage_cache`), and only then
built and written there, so runs in other processes or on other machines sharing the cache directory reuse it: a
cached defended stage is read back (the model with :mod:`bench.modelio`), never re-applied. The task itself is always
built (:meth:`~bench.contracts.Task.build` caches a tiny released model itself), but a stage's key needs it only
where its task cannot say what it is without being built (:meth:`~bench.contracts.Task.stage_identity`: the tiny
tiers can), so a sweep skips the stages already on disk without building their tasks. A freshly built stage is written,
then read back, so every run uses exactly what other processes read. That is also how a sweep with local workers
prepares the defended stages in parallel: :meth:`Session.defended_to_prepare` names them (reading or building their
released stages here), and the workers build them into the cache or find them there, for every run to read.

A defense that leaves the weights as released (``changes_weights = False``, e.g. ``none``) is not measured again: its
stage reuses the released stage's evaluation, reference outputs and curvature, which the same measurement of the
same weights would give.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.cache import Cache
from bench.contracts import DefenseResult, Evaluation, Probe, TaskInstance
from bench.core.composition import plugin_classes
from bench.core.metrics import function_preservation, retained_utility
from bench.core.spec import RunSpec, StageKind
from bench.errors import ConfigError, DataError, FunctionDriftError, PluginError
from bench.registry import DEFENSES, TASKS
from bench.run import results, stage_codec
from bench.run.curvature import Eigen, top_hessian_eigenvalue
from bench.run.devices import resolve_device
from bench.run.stage_cache import StageStore, stage_key
from bench.toolkit import stage_clock
from bench.toolkit.layers import count_parameters
from bench.toolkit.stage_clock import StageClock, part

log = logging.getLogger(__name__)


def derive_seed(seed: int, label: str) -> int:
    """Independent, reproducible seeds per purpose (defense, attack data, attack init) from one run seed."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{label}".encode()).digest()[:4], "little")


@dataclass
class ReleasedStage:
    task: TaskInstance
    evaluation: Evaluation
    probe: Probe
    outputs: np.ndarray
    curvature: Eigen
    rows: list[dict[str, Any]]
    already_harmful: str | None = None
    """Why the released model is harmful before any attack (:meth:`~bench.contracts.TaskInstance.already_harmful`),
    or None."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per part of the stage's build (:class:`~bench.toolkit.stage_clock.StageClock`; a stage read from the disk
    cache keeps those of its original build, but for ``load``, the task's, which is always built)."""
    source: str = "built"
    """``built`` here, or read from the on-disk stage cache (``disk``)."""


@dataclass
class DefendedStage:
    model: nn.Module
    report: DefenseResult
    seconds: float
    params_added: int
    evaluation: Evaluation
    rows: list[dict[str, Any]]
    already_harmful: str | None = None
    """Why the defended model is harmful before any attack (judged on its evaluation), or None."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per part of the stage's build (the defense, its evaluation, ...; a stage read from the disk cache keeps
    those of its original build)."""
    source: str = "built"
    """``built`` here, or read from the on-disk stage cache (``disk``)."""


class Session:
    """State shared by the runs of one call: where results go, the cache, and memoised stages."""

    def __init__(self, results_dir: str | Path = "results", cache: Cache | None = None, official: bool = True,
                 device: str | None = None, allow_function_drift: bool = False, progress: bool = True,
                 stage_cache: bool = True, keep_stages: int | None = None):
        self.results_dir = Path(results_dir)
        self.cache = cache or Cache()
        self.official = official
        self.device = device
        """``cpu``, ``cuda``, ``cuda:N``, or None for each tier's choice (:func:`bench.run.devices.resolve_device`)."""
        self.allow_function_drift = allow_function_drift
        """Measure a defense whose outputs drifted beyond its tolerance instead of failing (recorded per run)."""
        self.progress = progress
        """Show progress bars (the suite's, and a task's while it builds a released model); False for --quiet."""
        self.stage_cache = stage_cache
        """Read and write the stages in the on-disk cache (:mod:`bench.run.stage_cache`); False: in memory only."""
        self.keep_stages = keep_stages
        """At most this many released and this many defended stages stay in memory, the least recently used dropped
        first (a long-lived worker's bound on memory); None keeps every stage."""
        self._store = StageStore(self.cache) if stage_cache else None
        self._released: OrderedDict[str, ReleasedStage | BaseException] = OrderedDict()
        self._reported: dict[int, weakref.ref] = {}
        """Stages an earlier run of this session already reported, by id, each with a weak reference: a stage
        evicted from memory frees its id for a new stage, which must not then read as reported."""
        self._defended: OrderedDict[str, DefendedStage | BaseException] = OrderedDict()

    def device_for(self, spec: RunSpec) -> torch.device:
        return resolve_device(self.device, spec.tier)

    def released(self, spec: RunSpec) -> ReleasedStage:
        return self._memo(self._released, spec.stage_key("released"),
                          lambda: self._timed("released", lambda: self._released_stage(spec)))

    def defended(self, spec: RunSpec) -> DefendedStage:
        return self._memo(self._defended, spec.stage_key("defended"),
                          lambda: self._timed("defended", lambda: self._defended_stage(spec)))

    def forget_defended(self, spec: RunSpec) -> None:
        """Drop ``spec``'s defended stage from memory, so the next :meth:`defended` reads it from the on-disk stage
        cache (or builds it where it could not be stored); the released stage stays."""
        self._defended.pop(spec.stage_key("defended"), None)

    def defended_to_prepare(self, specs: Sequence[RunSpec]) -> list[RunSpec]:
        """One spec per distinct defended stage of ``specs`` that is not in this session's memory, when stages go
        to the on-disk cache (else none): what worker processes can build, or find already built, before the runs,
        writing it where this session and every run read it, so that this process need not load it. A stage already
        on disk is not named where that is known without building its task (:meth:`on_disk`). Their released
        stages are built (or read) here first, with their progress shown: a released model's first build (minutes
        on the diffusion tiers) is visible, and done once, not in every worker; one that fails is left for the
        caller's own build to report."""
        if self._store is None:
            return []
        seen: set[str] = set()
        todo = []
        for spec in specs:
            key = spec.stage_key("defended")
            if key not in seen and key not in self._defended:
                seen.add(key)
                if self.on_disk(spec):  # built already: each run's worker reads it; nothing to build, here or there
                    continue
                todo.append(spec)
                try:
                    self.released(spec)
                except Exception:  # noqa: BLE001 - see the docstring
                    pass
        return todo

    def stage_timing(self, stage: ReleasedStage | DefendedStage) -> dict[str, Any]:
        """What a run records of a stage it used: its seconds per part and where it came from (``built``,
        ``disk``, or ``memory`` for a stage an earlier run of this session already reported)."""
        seen = self._reported.get(id(stage))
        source = "memory" if seen is not None and seen() is stage else stage.source
        self._reported[id(stage)] = weakref.ref(stage)
        return {"source": source, "seconds": dict(stage.timings)}

    def _timed(self, name: str, build):
        """Build a stage with its parts timed (and shown) by a :class:`StageClock`."""
        clock = StageClock(name, show=self.progress)
        with clock.running():
            stage = build()
        if stage.source == "disk" and "load" in clock.seconds:  # measured when it was built; loaded now
            stage.timings = {**stage.timings, "load": clock.seconds["load"]}
        return stage

    def _released_stage(self, spec: RunSpec) -> ReleasedStage:
        device = self.device_for(spec)
        with part("load", spec.model or spec.tier):
            task = _build_task(spec, self.cache, device, progress=self.progress)
        key = self._disk_key(spec, "released", task, device)
        if key is None:
            return _measure_released(task)
        store = self._store
        assert store is not None  # it made the key

        def read(path: Path) -> ReleasedStage:
            return ReleasedStage(task, **stage_codec.read_released(path), source="disk")

        def build() -> ReleasedStage:
            stage = _measure_released(task)
            written = _write_stage(store, key, _entry_meta(spec, "released", device),
                                   lambda tmp: stage_codec.write_released(tmp, stage))
            adopted = _read_stage(store, key, read) if written else None
            if adopted is None:
                return stage
            adopted.source = "built"  # read back, as every run uses exactly what other processes read; built here
            return adopted

        return _read_or_build(store, key, read, build)

    def _defended_stage(self, spec: RunSpec) -> DefendedStage:
        released = self.released(spec)  # builds the task (cheap on tiny); never the defense when it is on disk
        device = self.device_for(spec)
        key = self._disk_key(spec, "defended", released.task, device)
        if key is None:
            return _build_defended(spec, released, self.allow_function_drift, self.progress)
        store = self._store
        assert store is not None  # it made the key

        as_released = not DEFENSES.get(spec.defense.name).changes_weights

        def read(path: Path) -> DefendedStage:
            copy_released = (lambda: copy.deepcopy(released.task.model)) if as_released else None
            return DefendedStage(**stage_codec.read_defended(path, device, copy_released), source="disk")

        def build() -> DefendedStage:
            stage = _build_defended(spec, released, self.allow_function_drift, self.progress)
            task = released.task
            written = _write_stage(store, key, _entry_meta(spec, "defended", device),
                                   lambda tmp: stage_codec.write_defended(tmp, stage, task.architecture(),
                                                                          with_model=not as_released))
            if written is None:
                return stage
            if as_released:  # its entry's model is a copy of the released one: nothing of the defense to round-trip
                return _read_stage(store, key, read) or stage
            return _adopt_written(store, key, stage, task, read, device)

        return _read_or_build(store, key, read, build)

    def on_disk(self, spec: RunSpec, stage: StageKind = "defended") -> bool:
        """Whether ``spec``'s stage is in the on-disk cache, intact, decided without building its task where the
        task's stages are keyed by :meth:`~bench.contracts.Task.stage_identity` (False where that needs the task)."""
        if self._store is None:
            return False
        key = self._disk_key(spec, stage, None, self.device_for(spec))
        return key is not None and self._store.read(key) is not None

    def _disk_key(self, spec: RunSpec, stage: StageKind, task: TaskInstance | None, device: torch.device) -> str | None:
        """The stage's on-disk key, or None: not cached on disk (or, with no ``task``, not known without it)."""
        if self._store is None:
            return None
        task_cls = TASKS.get(spec.task.name)
        plugins = [task_cls]
        extra = {}
        if stage == "defended":
            plugins += plugin_classes(DEFENSES.get(spec.defense.name))  # a composite: every part's code
            extra["allow_function_drift"] = self.allow_function_drift  # an allowed drift is stored, a refused one not
        identity = task_cls.stage_identity(spec.configs()[0], tier=spec.tier, model=spec.model)
        if identity is not None:  # the config and the task's code say it all: no need to build the task
            if task is not None and task.stage_portable != identity.portable:
                raise PluginError(f"task {spec.task.name!r}: stage_identity says portable={identity.portable} but "
                                  f"the built task's stage_portable is {task.stage_portable}")
            provenance: Any = {"stage_identity": dict(identity.identity)}
            portable = identity.portable
        elif task is None:
            return None
        else:
            provenance, portable = task.provenance(), task.stage_portable
        device_key = "portable" if portable else device.type  # (the entry records the device it was built on)
        return stage_key(spec.stage_key(stage), plugins=plugins, provenance=provenance, device=device_key,
                         cache_root=self.cache.root, extra=extra)

    def _memo(self, store: OrderedDict, key: str, build):
        if key not in store:
            try:
                value = build()
            except Exception as err:  # noqa: BLE001 - remembered, so every run sharing the stage fails fast with the same error
                value = err
            store[key] = value
            while self.keep_stages is not None and len(store) > max(self.keep_stages, 1):
                store.popitem(last=False)
        store.move_to_end(key)
        value = store[key]
        if isinstance(value, BaseException):
            raise value
        return value


# -------------------------------------------------------------------------------------------------------------
# Stages
# -------------------------------------------------------------------------------------------------------------
def evaluation_rows(phase: str, evaluation: Evaluation) -> list[dict[str, Any]]:
    rows = [_score_row(phase, "harm", evaluation.harm)]
    rows += [_score_row(phase, name, score) for name, score in evaluation.utility.items()]
    rows += [_score_row(phase, name, score) for name, score in evaluation.extras.items()]
    return rows


def _score_row(phase: str, metric: str, score) -> dict[str, Any]:
    stderr = None
    if score.items is not None and len(score.items) > 1:
        stderr = float(np.std(score.items, ddof=1) / np.sqrt(len(score.items)))
    return results.metric_row(phase, metric, score.value, split="eval", n=score.n or None, stderr=stderr)


def _measure_curvature(task: TaskInstance, model: nn.Module, seed: int) -> Eigen:
    config = task.config
    if config.curvature_iters <= 0:
        return Eigen(float("nan"), 0, False)
    limits = f"at most {config.curvature_iters} Hessian-vector products or {config.curvature_seconds:g} s"
    with part("curvature", limits):
        batch = task.curvature_batch()
        return top_hessian_eigenvalue(model, lambda m: task.harmful_loss(m, batch), iters=config.curvature_iters,
                                      tol=config.curvature_tol, seed=seed, seconds=config.curvature_seconds)


def _curvature_rows(phase: str, eigen: Eigen) -> list[dict[str, Any]]:
    if eigen.iterations == 0:
        return []
    return [
        results.metric_row(phase, "hessian_top_eig", eigen.value, split="harmful", n=eigen.iterations),
        results.metric_row(phase, "hessian_converged", float(eigen.converged), split="harmful"),
        results.metric_row(phase, "hessian_iterations", eigen.iterations, split="harmful"),
        results.metric_row(phase, "hessian_seconds", eigen.seconds, split="harmful"),
    ]


def _outputs(task: TaskInstance, model: nn.Module) -> np.ndarray:
    """The task's reference outputs at (at least) float32: float32 outputs stay float32, not doubled (a 262k
    vocabulary's logits are GBs), as the comparison converts them exactly (:func:`bench.core.metrics.function_preservation`)."""
    with torch.no_grad():
        outputs = task.reference_outputs(model).detach()
        return outputs.to(torch.float64 if outputs.dtype == torch.float64 else torch.float32).cpu().numpy()


def _build_task(spec: RunSpec, cache: Cache, device: torch.device, *, progress: bool) -> TaskInstance:
    task_cfg, _, _ = spec.configs()
    task = TASKS.get(spec.task.name)().build(task_cfg, tier=spec.tier, model=spec.model, cache=cache, device=device,
                                             progress=progress)
    check_usable_floor(task)
    task.model.eval()
    return task


def check_usable_floor(task: TaskInstance) -> None:
    """Refuse a usable floor that no attacked model can meet, before any run is measured against it.

    The floor is ``usable_factor`` × the released utility: below 1 for a higher-is-better utility, above 1 for a
    lower-is-better one (the default 0.5 on a loss or perplexity would mark every checkpoint, the released model's
    own included, as unusable and every attack as ``broken``).
    """
    factor = task.config.usable_factor
    if task.utility_higher_is_better and factor > 1:
        raise ConfigError(f"task {task.name!r}: usable_factor={factor} > 1 on a higher-is-better utility would mark "
                          f"the released model itself unusable; use a value in (0, 1], e.g. 0.5")
    if not task.utility_higher_is_better and factor < 1:
        raise ConfigError(f"task {task.name!r}: usable_factor={factor} < 1 on a lower-is-better utility "
                          f"({task.utility_metric}) would mark the released model itself unusable; set usable_factor "
                          f">= 1, e.g. 2.0 (utility at most doubled)")


def _measure_released(task: TaskInstance) -> ReleasedStage:
    with torch.no_grad():
        with part("evaluate"):
            evaluation = task.evaluate(task.model)
        with part("probe"):
            probe = task.probe(task.model)
    curvature = _measure_curvature(task, task.model, seed=0)
    with part("reference_outputs"):
        outputs = _outputs(task, task.model)
    harmful = task.already_harmful(evaluation, probe)
    rows = evaluation_rows("released", evaluation) + _curvature_rows("released", curvature)
    rows.append(results.metric_row("released", "params", count_parameters(task.model)))
    rows.append(results.metric_row("released", "already_harmful", float(harmful is not None)))
    return ReleasedStage(task, evaluation, probe, outputs, curvature, rows, already_harmful=harmful,
                         timings=stage_clock.elapsed())


def _build_defended(spec: RunSpec, released: ReleasedStage, allow_drift: bool = False, progress: bool = True
                    ) -> DefendedStage:
    task = released.task
    _, defense_cfg, _ = spec.configs()
    model = copy.deepcopy(task.model)
    seed = derive_seed(spec.seed, "defense")
    torch.manual_seed(seed)
    view = dataclasses.replace(task.defender_view(), progress=progress)
    with part("defense", spec.defense_label):
        start = time.perf_counter()
        report = DEFENSES.get(spec.defense.name)().apply(model, view, defense_cfg,
                                                         generator=torch.Generator().manual_seed(seed))
        seconds = time.perf_counter() - start
    if not isinstance(report, DefenseResult) or not isinstance(report.model, nn.Module):
        raise PluginError(f"defense {spec.defense.name!r} must return a DefenseResult holding the defended model")
    report, curve_rows = _split_curve(report)
    defended = report.model.eval()
    params_added = count_parameters(defended) - count_parameters(task.model)
    if DEFENSES.get(spec.defense.name).changes_weights:
        with torch.no_grad(), part("evaluate"):
            evaluation = task.evaluate(defended)
        with part("reference_outputs"):
            outputs = _outputs(task, defended)
        curvature = _measure_curvature(task, defended, seed=0)
    else:  # the released weights as they are: measuring them again would give the released stage's values
        _check_unchanged(spec, task.model, defended)
        evaluation, outputs, curvature = released.evaluation, released.outputs, released.curvature
    preservation = function_preservation(released.outputs, outputs, task.output_kind)
    drift_rows = check_preservation(spec, released.outputs, preservation.max_abs_diff, allow_drift)
    harmful = task.already_harmful(evaluation, None)  # its step-0 probe is the attack's own
    divergence_name = "mean_kl" if task.output_kind == "logits" else "mean_mse"
    rows = evaluation_rows("defended", evaluation) + _curvature_rows("defended", curvature)
    rows += retained_rows("defended", released.evaluation, evaluation, task.config.bootstrap)
    rows += [
        results.metric_row("defended", "max_abs_diff", preservation.max_abs_diff, split="benign"),
        results.metric_row("defended", divergence_name, preservation.mean_divergence, split="benign"),
        results.metric_row("defended", "agreement", preservation.agreement, split="benign"),
        results.metric_row("defended", "params_added", params_added),
        results.metric_row("defended", "defense_seconds", seconds),
        results.metric_row("defended", "layers_touched", len(report.layers)),
        results.metric_row("defended", "already_harmful", float(harmful is not None)),
        *drift_rows,
        *curve_rows,
    ]
    return DefendedStage(defended, report, seconds, params_added, evaluation, rows, already_harmful=harmful,
                         timings=stage_clock.elapsed())


def _split_curve(report: DefenseResult) -> tuple[DefenseResult, list[dict[str, Any]]]:
    """A trained defense's loss curve as metric rows of phase ``defense`` (the report keeps no copy, so the stage
    cache and run.json stay small)."""
    rows = [results.metric_row("defense", name, float(value), step=int(point["step"]))
            for point in report.curve for name, value in point.items() if name != "step"]
    return dataclasses.replace(report, curve=()), rows


def _check_unchanged(spec: RunSpec, released: nn.Module, defended: nn.Module) -> None:
    """A defense that declares ``changes_weights = False`` must return the released weights unchanged (its stage
    reuses the released measurements, and its cache entry stores no weights)."""
    mine, theirs = released.state_dict(), defended.state_dict()
    if mine.keys() != theirs.keys() or any(not torch.equal(mine[k], theirs[k]) for k in mine):
        raise PluginError(f"defense {spec.defense.name!r} declares changes_weights = False but changed the model's "
                          "weights; set changes_weights = True")


# -------------------------------------------------------------------------------------------------------------
# Stages on disk
# -------------------------------------------------------------------------------------------------------------
def _entry_meta(spec: RunSpec, stage: StageKind, device: torch.device) -> dict[str, Any]:
    """What ``bench cache ls`` shows of an entry."""
    meta: dict[str, Any] = {"kind": stage, "task": spec.task.label, "tier": spec.tier, "model": spec.model,
                            "device": device.type, "spec_key": spec.stage_key(stage)}
    if stage == "defended":
        meta.update(defense=spec.defense_label, seed=spec.seed)
    return meta


def _read_or_build(store: StageStore, key: str, read, build):
    """The entry ``key`` read from the on-disk cache, or ``build()`` (which writes it) on a miss, under the entry's
    lock: processes missing the same stage at once build it once, the others wait and read it (a hit takes no lock,
    so processes reading a warm cache never wait for each other)."""
    cached = _read_stage(store, key, read)
    if cached is not None:
        return cached
    with store.building(key):
        cached = _read_stage(store, key, read)  # built by another process while this one waited
        return cached if cached is not None else build()


def _read_stage(store: StageStore, key: str, decode):
    """The stage decoded from its intact entry, or None (absent; an entry that cannot be decoded is discarded)."""
    path = store.read(key)
    if path is None:
        return None
    try:
        return decode(path)
    except (DataError, KeyError, TypeError, ValueError) as err:  # intact files that do not decode: rebuild
        store.discard(path, f"cannot be read: {type(err).__name__}: {err}")
        return None  # (anything else, e.g. out of memory while loading, is no fault of the entry: it propagates)


def _write_stage(store: StageStore, key: str, meta: dict[str, Any], fill) -> Path | None:
    """Write an entry; a failure (disk full, a model that cannot be saved) costs only the reuse, never the run."""
    try:
        return store.write(key, meta, fill)
    except Exception as err:  # noqa: BLE001
        log.warning("stage cache: could not store the %s stage of %s (%s: %s); it stays in memory only",
                    meta["kind"], meta["task"], type(err).__name__, err)
        return None


def _adopt_written(store: StageStore, key: str, stage: DefendedStage, task: TaskInstance, read,
                   device: torch.device) -> DefendedStage:
    """The defended stage as read back from its entry, if its model computes what the fresh one does (bit for bit
    on CPU); else the entry is discarded (a model that does not round-trip must not be reused) and the fresh stage
    kept. The fresh model waits on the CPU meanwhile, so the device never holds both."""
    fresh = _outputs(task, stage.model)
    stage.model.to("cpu")
    loaded = _read_stage(store, key, read)
    if loaded is not None:
        mine = _outputs(task, loaded.model)
        same = np.array_equal(mine, fresh, equal_nan=True) if device.type == "cpu" else \
            mine.shape == fresh.shape and np.allclose(mine, fresh, rtol=1e-5, atol=1e-6, equal_nan=True)
        if same:
            loaded.source = "built"
            return loaded
        store.discard(store.path(key), "its model does not reproduce the defended model's outputs when reloaded "
                                       "(the defense's model does not round-trip through bench.modelio)")
    stage.model.to(device)
    return stage


def check_preservation(spec: RunSpec, released_outputs: np.ndarray, max_abs_diff: float, allow: bool
                       ) -> list[dict[str, Any]]:
    """Fail a defense that claims function preservation but moved the task's reference outputs beyond its
    ``preservation_tol`` (relative to their scale), unless the drift is allowed; either way the relative drift is
    recorded, and an allowed drift is marked (``function_drift_allowed``) so the leaderboard can show it."""
    cls = DEFENSES.get(spec.defense.name)
    # the largest |value| without an |array| copy of the (possibly GB-sized) outputs
    scale = max(float(released_outputs.max()), -float(released_outputs.min())) if released_outputs.size else 0.0
    relative = max_abs_diff / max(scale, 1e-12)
    rows = [results.metric_row("defended", "relative_abs_diff", relative, split="benign")]
    if not cls.preserves_function or relative <= cls.preservation_tol:
        return rows
    if not allow:
        hint = f"; fix: {cls.drift_hint}" if cls.drift_hint else ""
        raise FunctionDriftError(
            f"defense {spec.defense_label!r} claims to preserve the model's function but moved the task's reference "
            f"outputs by {relative:.3g} of their scale (max |Δ| {max_abs_diff:.3g}), above its tolerance "
            f"{cls.preservation_tol:g}{hint}. To measure it anyway, pass --allow-function-drift (the results "
            "record it)")
    return rows + [results.metric_row("defended", "function_drift_allowed", 1.0)]


def retained_rows(phase: str, released: Evaluation, other: Evaluation, resamples: int) -> list[dict[str, Any]]:
    rows = []
    for name, score in released.utility.items():
        mine = other.utility.get(name)
        if mine is None:
            continue
        if score.items is not None and mine.items is not None and len(score.items) == len(mine.items) and len(score.items):
            interval = retained_utility(score.items, mine.items, higher_is_better=score.higher_is_better, resamples=resamples)
            rows.append(results.metric_row(phase, "retained_utility", interval.value, split=name, n=len(score.items),
                                           ci=(interval.low, interval.high)))
        else:  # one value each: the same ratio without a CI (NaN when undefined; see retained_utility)
            ratio = retained_utility(np.array([score.value]), np.array([mine.value]),
                                     higher_is_better=score.higher_is_better, resamples=0)
            rows.append(results.metric_row(phase, "retained_utility", ratio.value, split=name))
    return rows

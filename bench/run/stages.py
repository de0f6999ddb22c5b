"""The measured stages a run builds on: the released model and the defended model, memoised per session and on disk.

:class:`Session` holds what the runs of one call share: where results go, the on-disk cache, and the released and
defended stages (built once per task config, and once per defense config and seed). Each stage measures its model
(harm, utility, curvature; for the defended one also function preservation and retained utility), judges whether
it is already harmful before any attack, and keeps the metric rows every run that uses it writes: how, is
:mod:`bench.run.stage_measure`; when, and from where (memory, disk, a build), is this module. Each part of a
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
import logging
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.cache import Cache
from bench.contracts import TaskInstance
from bench.core.composition import plugin_classes
from bench.core.spec import RunSpec, StageKind
from bench.errors import DataError, PluginError
from bench.registry import DEFENSES, TASKS
from bench.run import stage_codec
from bench.run.devices import resolve_device
from bench.run.stage_cache import StageStore, stage_key
from bench.run.stage_measure import (
    DefendedStage,
    ReleasedStage,
    build_defended,
    check_usable_floor,
    measure_released,
    reference_outputs_of,
)
from bench.toolkit.stage_clock import StageClock, part

log = logging.getLogger(__name__)


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
            return measure_released(task)
        store = self._store
        assert store is not None  # it made the key

        def read(path: Path) -> ReleasedStage:
            return ReleasedStage(task, **stage_codec.read_released(path), source="disk")

        def build() -> ReleasedStage:
            stage = measure_released(task)
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
            return build_defended(spec, released, self.allow_function_drift, self.progress)
        store = self._store
        assert store is not None  # it made the key

        as_released = not DEFENSES.get(spec.defense.name).changes_weights

        def read(path: Path) -> DefendedStage:
            copy_released = (lambda: copy.deepcopy(released.task.model)) if as_released else None
            return DefendedStage(**stage_codec.read_defended(path, device, copy_released), source="disk")

        def build() -> DefendedStage:
            stage = build_defended(spec, released, self.allow_function_drift, self.progress)
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
# The task
# -------------------------------------------------------------------------------------------------------------
def _build_task(spec: RunSpec, cache: Cache, device: torch.device, *, progress: bool) -> TaskInstance:
    task_cfg, _, _ = spec.configs()
    task = TASKS.get(spec.task.name)().build(task_cfg, tier=spec.tier, model=spec.model, cache=cache, device=device,
                                             progress=progress)
    check_usable_floor(task)
    task.model.eval()
    return task


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
    fresh = reference_outputs_of(task, stage.model)
    stage.model.to("cpu")
    loaded = _read_stage(store, key, read)
    if loaded is not None:
        mine = reference_outputs_of(task, loaded.model)
        same = np.array_equal(mine, fresh, equal_nan=True) if device.type == "cpu" else \
            mine.shape == fresh.shape and np.allclose(mine, fresh, rtol=1e-5, atol=1e-6, equal_nan=True)
        if same:
            loaded.source = "built"
            return loaded
        store.discard(store.path(key), "its model does not reproduce the defended model's outputs when reloaded "
                                       "(the defense's model does not round-trip through bench.modelio)")
    stage.model.to(device)
    return stage

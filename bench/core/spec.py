"""The frozen :class:`RunSpec`: everything one run depends on, with a canonical name and a ``run_id`` hash.

Specs are built by :func:`make_spec`, which resolves plugin names (and ``name.preset`` tags), validates every
config through its dataclass and fills attack fields left as ``None`` (budget, eval_every, batch_size) from the
task's defaults, so a spec always holds fully resolved values and equal runs get equal ids. A composite defense
(``a+b``, :mod:`bench.core.composition`) is one :class:`PluginSpec` whose config lists every part's resolved config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from bench.config import build_config, canonical_json, config_to_dict, stable_hash
from bench.core.applicability import check_applies
from bench.core.composition import PARTS_KEY, CompositeConfig, PartConfig, is_composite, part_args
from bench.errors import ConfigError
from bench.registry import ATTACKS, DEFENSES, TASKS, Registry

StageKind = Literal["released", "defended"]
"""The two cached stages of a run: the released model and the defended one."""

SPEC_VERSION = 1
TASK_DEFAULTED_ATTACK_FIELDS = ("budget", "eval_every", "batch_size")
PURPOSES = ("attack", "lr-probe")
DEFAULT_SUITE_LABEL = "default"
"""The suite label of runs planned from a task's default attack suite with no changes (:attr:`RunSpec.suite`)."""


@dataclass(frozen=True)
class PluginSpec:
    """A plugin name, its preset tag (if any) and its fully resolved config as sorted (key, value) pairs.

    A composite defense ``a+b`` has the name ``a+b``, no preset, and one config key, ``parts``: each part's
    :meth:`to_json` (name, preset, full config), in order.
    """

    name: str
    preset: str | None
    args: tuple[tuple[str, Any], ...]

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.args)

    @property
    def parts(self) -> tuple[PluginSpec, ...]:
        """A composite's parts, in the order they are applied; () for a single plugin."""
        if not is_composite(self.name):
            return ()
        return tuple(PluginSpec(p["name"], p["preset"], tuple(sorted(p["args"].items())))
                     for p in self.kwargs[PARTS_KEY])

    @property
    def label(self) -> str:
        if self.parts:
            return "+".join(part.label for part in self.parts)
        return f"{self.name}.{self.preset}" if self.preset else self.name

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "preset": self.preset, "args": self.kwargs}

    def identity(self) -> dict[str, Any]:
        """Name and resolved config, without preset tags (a preset is a label: it names values, it adds none)."""
        if self.parts:
            return {"name": self.name, "args": {PARTS_KEY: [part.identity() for part in self.parts]}}
        return {"name": self.name, "args": self.kwargs}

    def hash(self) -> str:
        return stable_hash(self.identity())


@dataclass(frozen=True)
class RunSpec:
    """One run: a task (tier, model) attacked by one attack config after one defense, with one seed."""

    task: PluginSpec
    defense: PluginSpec
    attack: PluginSpec
    tier: str = "tiny"
    model: str | None = None
    seed: int = 0
    purpose: str = "attack"
    """``attack`` for runs that count in the worst case; ``lr-probe`` for an LR search's short scouting runs."""
    suite: str = DEFAULT_SUITE_LABEL
    """The attack suite of the request that planned this run (:func:`bench.plan.planner.suite_label`): the leaderboard
    takes a worst case only over runs of one suite. ``default`` (the task's default suite) is left out of the JSON
    and the run id, so that default-suite runs keep the ids they had before suites were recorded; any other suite
    is part of the run's identity (an ad-hoc run is never reused as, or mistaken for, a default-suite run)."""
    stop_at: int | None = None
    """Bound pruning (:mod:`bench.run.pruning`): the attack stops at the first probe step at or past this one where no
    harmful streak is under way, recorded as censored there (``pruned_at_bound``). How far a run goes, not what it
    is: left out of the run id (a pruned run and its exhaustive twin share one directory) and out of the JSON when
    None."""
    bound_by: tuple[str, ...] = ()
    """With ``stop_at``: the runs whose harm set that bound (a resumed sweep keeps the pruned run only while they
    still stand). Left out of the run id, like ``stop_at``."""
    wave: int | None = None
    """The planner's wave of this run's attack family when it submitted the run (0 first: the LR-search probes, or
    the grid; then the full runs the probes picked; then refinement), recorded in the run's summary
    (:attr:`bench.run.summary.RunSummary.wave`). When the run is made, not what it is: left out of the run id, and out
    of the JSON when None, like ``stop_at``."""
    wave_kind: str | None = None
    """With ``wave``: its kind, ``probe``, ``full`` or ``refinement`` (:data:`bench.run.summary.WAVE_KINDS`)."""

    def to_json(self) -> dict[str, Any]:
        body = {
            "spec_version": SPEC_VERSION,
            "task": self.task.to_json(),
            "tier": self.tier,
            "model": self.model,
            "defense": self.defense.to_json(),
            "attack": self.attack.to_json(),
            "seed": self.seed,
            "purpose": self.purpose,
        }
        if self.suite != DEFAULT_SUITE_LABEL:
            body["suite"] = self.suite
        if self.stop_at is not None:
            body["stop_at"] = self.stop_at
            body["bound_by"] = list(self.bound_by)
        if self.wave is not None:
            body["wave"] = self.wave
            body["wave_kind"] = self.wave_kind
        return body

    @property
    def run_id(self) -> str:
        """A short hash of the canonical JSON of the resolved spec (presets are labels, not part of identity)."""
        body = self.to_json()
        for key in ("stop_at", "bound_by", "wave", "wave_kind"):  # how far and when a run goes, not what it is
            body.pop(key, None)
        for part in ("task", "defense", "attack"):
            body[part] = getattr(self, part).identity()
        return stable_hash(body, length=16)

    @property
    def defense_label(self) -> str:
        """The defense with the config values that differ from its defaults, e.g. ``specdef(alpha=1e+06)``; a
        composite's parts each with theirs, e.g. ``none+specdef(alpha=1e+06)``."""
        return "+".join(_with_diff(part, DEFENSES) for part in self.defense.parts or (self.defense,))

    @property
    def attack_label(self) -> str:
        """The attack with its non-default config values, e.g. ``full-ft(lr=1e-05,optimizer=sgd)``."""
        task_defaults = {k: self.task.kwargs[k] for k in TASK_DEFAULTED_ATTACK_FIELDS if k in self.task.kwargs}
        return _with_diff(self.attack, ATTACKS, task_defaults)

    @property
    def attack_family(self) -> str:
        """The attack label without its learning rate and budget: runs of one LR sweep share it."""
        task_defaults = {k: self.task.kwargs[k] for k in TASK_DEFAULTED_ATTACK_FIELDS if k in self.task.kwargs}
        return _with_diff(self.attack, ATTACKS, task_defaults, ignore=("lr", "budget"), always=("optimizer",))

    @property
    def canonical_name(self) -> str:
        """Readable identity: only the config values that differ from the plugin defaults are shown."""
        model = f",model={self.model}" if self.model else ""
        probe = ",lr-probe" if self.purpose != "attack" else ""
        suite = f",suite={self.suite}" if self.suite != DEFAULT_SUITE_LABEL else ""
        return (f"{self.task.label}/{self.tier}{model}:defense={self.defense_label},"
                f"attack={self.attack_label},seed={self.seed}{probe}{suite}")

    def stage_key(self, stage: StageKind) -> str:
        """Content hash of the spec's part of what a stage depends on: the key under which a
        :class:`~bench.run.stages.Session` memoises it in memory, and part of its on-disk key (:mod:`bench.run.stage_cache`
        adds the code versions, the task's provenance and the device)."""
        parts: dict[str, Any] = {"task": self.task.kwargs, "task_name": self.task.name, "tier": self.tier, "model": self.model}
        if stage == "defended":
            parts["defense"] = self.defense.identity()
            parts["seed"] = self.seed
        return stable_hash({"stage": stage, **parts}, length=16)

    def configs(self) -> tuple[Any, Any, Any]:
        """The (task, defense, attack) config dataclass instances (a composite defense's: its parts' configs)."""
        if self.defense.parts:
            defense = resolve_plugin(DEFENSES, self.defense.label, self.defense.kwargs)[1]
        else:
            defense = build_config(DEFENSES.get(self.defense.name).Config, self.defense.kwargs,
                                   where=f"defense {self.defense.name!r}")
        return (
            build_config(TASKS.get(self.task.name).Config, self.task.kwargs, where=f"task {self.task.name!r}"),
            defense,
            build_config(ATTACKS.get(self.attack.name).Config, self.attack.kwargs, where=f"attack {self.attack.name!r}"),
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunSpec:
        """Rebuild (and re-validate) a spec written by :meth:`to_json`."""
        spec = make_spec(
            task=_label(data["task"]),
            defense=_label(data["defense"]),
            attack=_label(data["attack"]),
            tier=data.get("tier", "tiny"),
            model=data.get("model"),
            seed=int(data.get("seed", 0)),
            purpose=data.get("purpose", "attack"),
            suite=data.get("suite", DEFAULT_SUITE_LABEL),
            task_args=data["task"].get("args", {}),
            defense_args=data["defense"].get("args", {}),
            attack_args=data["attack"].get("args", {}),
        )
        wave = data.get("wave")
        if wave is not None:
            spec = dataclasses.replace(spec, wave=int(wave), wave_kind=data.get("wave_kind"))
        stop_at = data.get("stop_at")
        if stop_at is None:
            return spec
        return dataclasses.replace(spec, stop_at=int(stop_at), bound_by=tuple(data.get("bound_by", ())))


def _label(part: Mapping[str, Any]) -> str:
    return f"{part['name']}.{part['preset']}" if part.get("preset") else part["name"]


def resolve_plugin(registry: Registry, name: str, args: Mapping[str, Any], *, fill: Mapping[str, Any] = {}) -> tuple[PluginSpec, Any]:
    """Resolve ``name`` (or ``name.preset``), layer preset < ``args``, build and validate the config.

    A composite ``a+b`` resolves each part this way, with its values from ``args`` (:func:`bench.core.composition.part_args`).
    """
    resolved = registry.resolve(name)
    if resolved.parts:
        return _resolve_composite(registry, resolved, args)
    merged = {**resolved.preset_args, **args}
    where = f"{registry.kind} {resolved.label!r}"
    cfg = build_config(resolved.cls.Config, merged, where=where)
    if fill:
        missing = {k: v for k, v in fill.items() if hasattr(cfg, k) and getattr(cfg, k) is None}
        if missing:
            cfg = dataclasses.replace(cfg, **missing)
    values = config_to_dict(cfg)
    canonical_json(values)  # raises early on values that cannot be serialised (e.g. NaN)
    return PluginSpec(resolved.name, resolved.preset, tuple(sorted(values.items()))), cfg


def _resolve_composite(registry: Registry, resolved, args: Mapping[str, Any]) -> tuple[PluginSpec, CompositeConfig]:
    specs, configs, problems = [], [], []
    for label, values in part_args(resolved, args, kind=registry.kind):
        try:
            spec, cfg = resolve_plugin(registry, label, values)
        except ConfigError as err:  # every part's bad keys at once
            problems.append(str(err))
            continue
        specs.append(spec)
        configs.append(PartConfig(spec.name, spec.preset, cfg))
    if problems:
        raise ConfigError("\n".join(problems))
    parts = [spec.to_json() for spec in specs]
    return (PluginSpec(resolved.name, None, ((PARTS_KEY, parts),)),
            CompositeConfig(parts=tuple(configs)))


def make_spec(
    *,
    task: str,
    defense: str,
    attack: str,
    tier: str = "tiny",
    model: str | None = None,
    seed: int = 0,
    purpose: str = "attack",
    suite: str = "default",
    task_args: Mapping[str, Any] = {},
    defense_args: Mapping[str, Any] = {},
    attack_args: Mapping[str, Any] = {},
) -> RunSpec:
    """Build a fully resolved, validated :class:`RunSpec`."""
    task_spec, task_cfg = resolve_plugin(TASKS, task, task_args)
    task_cls = TASKS.get(task_spec.name)
    if tier not in task_cls.tiers:
        raise ConfigError(f"task {task_spec.name!r} has no tier {tier!r}; available tiers: {', '.join(task_cls.tiers)}")
    if tier == "tiny" and model is not None:
        raise ConfigError("--model is only used with --tier real (the tiny tier builds its own embedded model)")
    if tier != "tiny" and model is None:
        raise ConfigError(f"tier {tier!r} needs --model <hub id or local path>")
    defense_spec, _ = resolve_plugin(DEFENSES, defense, defense_args)
    fill = {k: getattr(task_cfg, k) for k in TASK_DEFAULTED_ATTACK_FIELDS}
    attack_spec, _ = resolve_plugin(ATTACKS, attack, attack_args, fill=fill)
    check_applies("defense", defense, DEFENSES.resolve(defense).cls, task_spec.name, task_cls)
    check_applies("attack", attack, ATTACKS.get(attack_spec.name), task_spec.name, task_cls)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if purpose not in PURPOSES:
        raise ConfigError(f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}")
    if not isinstance(suite, str) or not suite.strip():
        raise ConfigError(f"suite must be a non-empty label, got {suite!r}")
    return RunSpec(task=task_spec, defense=defense_spec, attack=attack_spec, tier=tier, model=model, seed=seed,
                   purpose=purpose, suite=suite)


def _with_diff(part: PluginSpec, registry: Registry, task_defaults: Mapping[str, Any] = {}, ignore: tuple = (),
               always: tuple = ()) -> str:
    preset = registry.resolve(part.label).preset_args if part.preset else {}  # a preset's own values are its label
    base = build_config(registry.get(part.name).Config, preset, where=f"{registry.kind} {part.label!r}")
    defaults = {**config_to_dict(base), **task_defaults}
    diff = {k: v for k, v in part.args if (defaults.get(k) != v or k in always) and k not in ignore}
    if not diff:
        return part.label
    inner = ",".join(f"{k}={_short(v)}" for k, v in sorted(diff.items()))
    return f"{part.label}({inner})"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ";".join(_short(v) for v in value) + "]"
    return str(value)

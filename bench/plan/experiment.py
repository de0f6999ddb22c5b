"""Layering an experiment: plugin defaults < YAML file < command-line values, into a :class:`SuiteRequest`.

An experiment file holds only what differs from the defaults::

    # bench run --config experiments/vision-digits/specdef-float64.yaml   (override: defense.alpha=1e5)
    task: vision-digits
    defense: {name: specdef, args: {alpha: 1.0e6, dtype: float64}}
    seeds: [0, 1, 2]

Command-line values are ``--task/--defense/--attack NAME [key=value ...]`` and dotted ``part.key=value`` overrides.
A composite defense's values name their part: ``--defense none+specdef specdef.alpha=1e6`` or
``defense.specdef.alpha=1e6`` (:mod:`bench.core.composition`).
Unknown keys anywhere are errors that name the key (typos never pass silently); the file is read by
:mod:`bench.core.yaml_dataclass` (:class:`ExperimentFile`), which reports every problem of it at once.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bench.core.spec import RunSpec, resolve_plugin
from bench.core.yaml_dataclass import Parser, build, read_mapping
from bench.errors import BenchError, ConfigError
from bench.plan.request import SuiteRequest, validate_request
from bench.registry import ATTACKS, DEFENSES, TASKS, Registry

TOP_LEVEL_KEYS = ("task", "defense", "attack", "tier", "model", "seeds", "baseline", "refine", "search")
SEARCHES = ("grid", "lr-search")
PARTS = ("task", "defense", "attack")


@dataclass(frozen=True, kw_only=True)
class ExperimentFile:
    """An experiment file as written: every key optional (the command line gives the rest, and wins)."""

    task: tuple[str | None, dict[str, Any]] = (None, {})
    """The task: ``name`` or ``{name: ..., args: {...}}`` in the file, read as (name, args)."""
    defense: tuple[str | None, dict[str, Any]] = (None, {})
    """The defense, written like ``task``."""
    attack: tuple[str | None, dict[str, Any]] = (None, {})
    """One attack instead of the task's default suite, written like ``task``."""
    tier: str | None = None
    model: str | None = None
    seeds: tuple[int, ...] = (0,)
    baseline: bool = True
    refine: bool = True
    search: Literal["grid", "lr-search"] | None = None


SWEEP_MARKER_KEYS = ("tasks", "tiers", "defenses", "attacks")
"""A YAML file with any of these (plural) keys is a sweep file (:mod:`bench.plan.sweep`), not an experiment."""


def is_sweep(data: Mapping[str, Any]) -> bool:
    """Whether a YAML file's top-level mapping is a sweep file rather than an experiment."""
    return any(key in data for key in SWEEP_MARKER_KEYS)


def load_experiment(path: str | Path) -> ExperimentFile:
    """An experiment file (:class:`ExperimentFile`); every unknown key, ill-typed value and malformed plugin entry
    at once, and a sweep file given by mistake, are ConfigErrors."""
    data = read_mapping(path, "config file", TOP_LEVEL_KEYS)
    if is_sweep(data):
        raise ConfigError(f"{path} is a sweep file (it has tasks:/defenses:), not an experiment: run it with "
                          f"`bench sweep {path}`")
    # the keys whose YAML form is not their type: a plugin is ``name`` or ``{name:, args:}``; seeds may be "0,1,2"
    parsers: dict[str, Parser] = {part: functools.partial(_part, where=part) for part in PARTS}
    parsers["seeds"] = parse_seeds
    return build(ExperimentFile, data, "experiment file", parsers=parsers)


def _part(value: Any, where: str) -> tuple[str | None, dict[str, Any]]:
    """A plugin reference in YAML: ``name`` or ``{name: ..., args: {...}}``."""
    if value is None:
        return None, {}
    if isinstance(value, str):
        return value, {}
    if isinstance(value, dict):
        unknown = set(value) - {"name", "args"}
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; use {{name: ..., args: {{...}}}}")
        args = value.get("args") or {}
        if not isinstance(args, dict):
            raise ConfigError(f"{where}.args must be a mapping")
        return value.get("name"), dict(args)
    raise ConfigError(f"{where} must be a plugin name or {{name: ..., args: {{...}}}}")


def parse_assignments(tokens: Sequence[str], where: str) -> dict[str, str]:
    """``["lr=1e-3", "optimizer=adam"]`` → ``{"lr": "1e-3", "optimizer": "adam"}`` (values coerced later by type)."""
    values = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{where}: expected key=value, got {token!r}")
        values[key.strip()] = value
    return values


def parse_seeds(value: Any) -> tuple[int, ...]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    try:
        seeds = tuple(int(str(s).strip()) for s in items if str(s).strip())
    except ValueError as err:
        raise ConfigError(f"seeds must be integers, got {value!r}") from err
    if not seeds or any(s < 0 for s in seeds):
        raise ConfigError(f"seeds must be non-negative integers, got {value!r}")
    return seeds


def _is_dotted(assignment: str) -> bool:
    """``task.KEY=VALUE`` (a dotted override) rather than a plugin's own ``KEY=VALUE`` (config keys have no dots)."""
    part, dot, _ = assignment.partition("=")[0].partition(".")
    return bool(dot) and part in PARTS


def build_request(
    *,
    config: str | Path | None = None,
    task: Sequence[str] = (),
    defense: Sequence[str] = (),
    attack: Sequence[str] = (),
    overrides: Sequence[str] = (),
    tier: str | None = None,
    model: str | None = None,
    seeds: str | Sequence[int] | None = None,
    baseline: bool | None = None,
    refine: bool | None = None,
    search: str | None = None,
) -> SuiteRequest:
    """Merge defaults < ``config`` YAML < command-line values into a request (see module docstring).

    ``task``/``defense``/``attack`` are ``[name, key=value, ...]`` token lists as typed after ``--task`` etc.
    ``attack.KEY`` overrides without an attack name apply to every family of the task's default suite.
    """
    data = load_experiment(config) if config else ExperimentFile()
    names: dict[str, str | None] = {}
    args: dict[str, dict[str, Any]] = {}
    for part in PARTS:
        names[part], args[part] = getattr(data, part)[0], dict(getattr(data, part)[1])
    dotted = list(overrides or [])
    for part, tokens in (("task", task), ("defense", defense), ("attack", attack)):
        if tokens:
            name, *assignments = tokens
            # argparse hands `--defense specdef task.dataset=x` the dotted override too: route it where it belongs
            dotted += [a for a in assignments if _is_dotted(a)]
            assignments = [a for a in assignments if not _is_dotted(a)]
            if names[part] is not None and name != names[part]:
                args[part] = {}  # a different plugin than the file's: the file's args belong to the other one
            names[part] = name
            args[part].update(parse_assignments(assignments, f"--{part} {name}"))
    for key, value in parse_assignments(dotted, "override").items():
        part, dot, field = key.partition(".")
        if not dot or part not in PARTS or not field:
            raise ConfigError(f"override {key}={value!r} must look like task.KEY=, defense.KEY= or attack.KEY=")
        args[part][field] = value
    if names["task"] is None:
        raise ConfigError("no task given: use --task NAME (see `bench ls tasks`)")
    if names["defense"] is None:
        raise ConfigError("no defense given: use --defense NAME (see `bench ls defenses`)")
    search = search if search is not None else data.search
    if search is not None and search not in SEARCHES:
        raise ConfigError(f"search must be one of {', '.join(SEARCHES)}, got {search!r}")
    return SuiteRequest(
        task=names["task"],
        defense=names["defense"],
        attack=names["attack"],
        tier=tier or data.tier or "tiny",
        model=model if model is not None else data.model,
        seeds=parse_seeds(seeds) if seeds is not None else data.seeds,
        task_args=args["task"],
        defense_args=args["defense"],
        attack_args=args["attack"],
        baseline=baseline if baseline is not None else data.baseline,
        refine=refine if refine is not None else data.refine,
        search=search,
    )


def validate_experiment(config: str | Path) -> list[RunSpec]:
    """Bind every config of an experiment file without running anything; return the first run spec of each sweep.

    The task's, the defense's and a named attack's configs are checked independently, so one ConfigError reports
    every error found, one per line (the default attack suite is checked once the task is valid: the task decides it).
    """
    request = build_request(config=config)
    parts: list[tuple[Registry[Any], str, Mapping[str, Any]]] = [
        (TASKS, request.task, request.task_args), (DEFENSES, request.defense, request.defense_args)]
    if request.attack is not None:
        parts.append((ATTACKS, request.attack, request.attack_args))
    errors: list[BenchError] = []
    for registry, name, args in parts:
        try:
            resolve_plugin(registry, name, args)
        except BenchError as err:
            errors.append(err)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigError("\n".join(str(e) for e in errors))
    return validate_request(request)

"""Sweep files: a grid of tasks × tiers × defenses × attacks × seeds, expanded into :class:`SuiteRequest` objects.

A YAML file is a *sweep file* when its top level has any of the plural keys ``tasks``, ``tiers``, ``defenses`` or
``attacks``; otherwise it is an experiment file (:mod:`bench.plan.experiment`, singular ``task``/``defense``/``attack``)::

    # bench sweep my-grid.yaml   (bench sweep my-grid.yaml --dry-run lists the runs)
    tasks: [vision-digits, {name: sd-style, args: {budget: 200}}]
    tiers: [tiny]
    defenses: [specdef, specdef.a1e4-k25, {name: specdef, args: {alpha: 1.0e6, dtype: float64}}]
    attacks: default            # the task's default suite, or a list: [default, full-ft, {name: lora, args: {...}}]
    seeds: [0, 1, 2]

Keys (unknown ones are errors; see :class:`Sweep` for each): ``tasks`` and ``defenses`` (required), ``tiers``
(default ``[tiny]``), ``attacks`` (default ``default``), ``seeds`` (default ``[0]``), ``model``, ``baseline``,
``refine``, ``search``, ``exhaustive``. A plugin entry is ``name`` (or ``name.preset``) or ``{name: ..., args: {...}}``; a task entry
may also carry its own ``model:`` for the tiers other than ``tiny``. A composite defense ``a+b`` takes each part's
values under the part's name (``{name: none+specdef, args: {specdef: {alpha: 1.0e+6}}}``, :mod:`bench.core.composition`). In ``attacks`` the name ``default`` stands for
each task's default suite, and its ``args`` apply to every family of that suite.

Expansion (:func:`plan`): one request per (task, tier, attack entry, defense). With ``baseline: true`` (the default)
the undefended ``none`` is its own request once per (task, tier, attack entry), not once per defense. Requests whose
first-wave runs have the same run ids (run ids hash the resolved content) collapse into one, so ``none`` listed as a
defense, or a preset equal to another entry's config, runs once. Later runs are chosen from results (LR-search full
runs, half-decade refinement), so :func:`first_wave` knows only the first wave and a bound on the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.config import check_choice
from bench.core.applicability import NotApplicableError
from bench.core.spec import RunSpec, resolve_plugin
from bench.core.yaml_dataclass import collect, read_mapping
from bench.errors import BenchError, ConfigError
from bench.plan.experiment import SEARCHES, is_sweep, parse_seeds
from bench.plan.planner import Planner
from bench.plan.request import SuiteRequest
from bench.registry import ATTACKS, DEFENSES, TASKS

SWEEP_KEYS = ("tasks", "tiers", "defenses", "attacks", "seeds", "model", "baseline", "refine", "search",
              "exhaustive")
DEFAULT_SUITE = "default"
"""The attack entry that stands for each task's default attack suite."""


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One plugin of a sweep: a registry name (or ``name.preset``) and config values layered over its defaults."""

    name: str
    args: Mapping[str, Any] = field(default_factory=dict)
    model: str | None = None
    """Tasks only: the model (hub id or path) of this task's non-tiny tiers; overrides the sweep's ``model``."""
    where: str = field(default="", compare=False)
    """Where the entry is in its file (e.g. ``defenses[2]``), for messages."""

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ConfigError("needs a name: {name: ..., args: {...}}")

    @property
    def label(self) -> str:
        """``name`` or ``name(key=value,...)`` for messages."""
        inner = ",".join(f"{k}={v}" for k, v in sorted(self.args.items()))
        return f"{self.name}({inner})" if inner else self.name


@dataclass(frozen=True, kw_only=True)
class Sweep:
    """A grid of runs, as read from a sweep file (see the module docstring)."""

    tasks: tuple[Entry, ...]
    """Tasks to run, each with its own config values."""
    defenses: tuple[Entry, ...]
    """Defenses to compare; each is attacked by every attack entry on every task, tier and seed."""
    attacks: tuple[Entry, ...] = (Entry(name=DEFAULT_SUITE),)
    """Attack configs, or ``default`` for each task's default suite (LR sweeps of every family)."""
    tiers: tuple[str, ...] = ("tiny",)
    """Tiers of every task: ``tiny`` (embedded model, CPU) and/or ``real`` (needs a model)."""
    seeds: tuple[int, ...] = (0,)
    """Seeds of every (task, tier, defense, attack)."""
    model: str | None = None
    """The model (hub id or local path) of every task's non-tiny tiers, unless the task entry names its own."""
    baseline: bool = True
    """Also run the undefended ``none`` once per (task, tier, attack entry), for the resistance ratio."""
    refine: bool = True
    """Add half-decade refinement runs around each LR family's best point."""
    search: str | None = None
    """Override every family's LR strategy (``grid`` or ``lr-search``); None keeps each task's choice."""
    exhaustive: bool = False
    """Run every attack run to its end (no bound pruning, :mod:`bench.run.pruning`): per-family figures and each run's
    own outcome exact, at the cost of the runs pruning would have stopped."""

    def __post_init__(self) -> None:
        problems = [f"{key} must list at least one entry" for key in ("tasks", "defenses", "attacks", "tiers", "seeds")
                    if not getattr(self, key)]
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            problems.append(f"seeds must be non-negative integers, got {list(self.seeds)}")
        if self.search is not None:
            try:
                check_choice(self.search, SEARCHES, "search")
            except ConfigError as err:
                problems.append(str(err))
        has_model = self.model is not None or any(t.model is not None for t in self.tasks)
        if has_model and self.tiers and all(tier == "tiny" for tier in self.tiers):
            problems.append("model is only used by tiers other than tiny (the tiny tier builds its own model); "
                            "add `tiers: [real]` or remove the model")
        if problems:
            raise ConfigError("\n".join(problems))


def load_sweep(path: str | Path) -> Sweep:
    """Read a sweep file, reporting every structural error at once (one per line) as a ConfigError."""
    sweep, problems = _parse(path)
    if problems or sweep is None:
        raise ConfigError("\n".join(problems))
    return sweep


def plan_file(path: str | Path) -> Plan:
    """Read, resolve and validate a sweep file; one ConfigError lists every error found, structural or not.

    Entries with structural errors are left out, so the rest of the grid is still checked (see :func:`plan`).
    """
    sweep, problems = _parse(path)
    result = None
    if sweep is not None:
        try:
            result = plan(sweep)
        except ConfigError as err:
            problems += str(err).splitlines()
    if problems or result is None:
        raise ConfigError("\n".join(problems))
    return result


def _parse(path: str | Path) -> tuple[Sweep | None, list[str]]:
    """The sweep built from the valid parts of a file (None when too little is valid), and every problem found."""
    data = read_mapping(path, "sweep file", SWEEP_KEYS)
    if data and not is_sweep(data):
        return None, [f"{path} is an experiment file (it has no tasks:/defenses:): run it with "
                      f"`bench run --config {path}`"]
    problems: list[str] = []
    parsers = {
        "tasks": lambda v: _entries(v, "tasks", ("name", "args", "model"), problems),
        "defenses": lambda v: _entries(v, "defenses", ("name", "args"), problems),
        "attacks": lambda v: _entries(v, "attacks", ("name", "args"), problems),
        "tiers": lambda v: _strings(v, "tiers"),
        "seeds": parse_seeds,
    }
    sweep = collect(Sweep, data, "sweep file", problems, parsers=parsers, keep_valid=True)
    if sweep is None or not (sweep.tasks and sweep.defenses):
        return None, problems  # nothing left to check the grid with
    return sweep, problems


def _entries(value: Any, key: str, allowed: tuple[str, ...], problems: list[str]) -> tuple[Entry, ...]:
    """The valid entries of a plugin list; the problems of each invalid one are appended (and it is left out)."""
    items = value if isinstance(value, list) else [value]
    entries = []
    for i, item in enumerate(items):
        where = f"{key}[{i}]" if isinstance(value, list) else key
        if isinstance(item, str) and item.strip():
            entries.append(Entry(name=item.strip(), where=where))
            continue
        if not isinstance(item, dict):
            problems.append(f"sweep file: {where} must be a name or {{name: ..., args: {{...}}}}, got {item!r}")
            continue
        skip = ("where",) + (() if "model" in allowed else ("model",))
        entry = collect(Entry, item, "sweep file", problems, skip=skip, path=where)
        if entry is not None:
            entries.append(replace(entry, where=where))
    if not items:
        problems.append(f"sweep file: {key} must list at least one entry")
    return tuple(entries)


def _strings(value: Any, key: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) and v for v in items):
        raise ConfigError(f"{key} must be a name or a list of names, got {value!r}")
    return tuple(items)


@dataclass(frozen=True)
class Planned:
    """One request of a sweep, where it came from, and its first wave of runs."""

    request: SuiteRequest
    where: str
    """``task (tier) × defense × attack``, for messages."""
    runs: tuple[RunSpec, ...]
    """The runs known before any result (see :func:`first_wave`)."""
    later: int
    """At most this many more runs, chosen from results (LR-search full runs, refinement)."""


@dataclass(frozen=True)
class Plan:
    """The requests of a sweep, in run order, after duplicates collapsed."""

    suites: tuple[Planned, ...]
    collapsed: tuple[tuple[str, str], ...] = ()
    """``(where, same as where)`` of each request dropped because an earlier one has the same first-wave runs."""
    not_applicable: tuple[tuple[str, str], ...] = ()
    """``(where, why)`` of each combination skipped because its defense or attack does not apply to its task
    (:mod:`bench.core.applicability`)."""

    @property
    def requests(self) -> list[SuiteRequest]:
        return [s.request for s in self.suites]


def expand(sweep: Sweep) -> list[tuple[str, tuple[Entry, Entry, Entry], SuiteRequest]]:
    """The cartesian product as ``(where, (task, defense, attack) entries, request)``, in run order; nothing resolved.

    Each request runs one defense (``baseline=False``): the ``none`` baseline, when wanted, is a request of its own.
    """
    baseline = Entry(name="none", where="baseline")
    defenses = ((baseline,) if sweep.baseline else ()) + sweep.defenses
    out = []
    for task in sweep.tasks:
        for tier in sweep.tiers:
            model = None if tier == "tiny" else (task.model or sweep.model)
            for attack in sweep.attacks:
                for defense in defenses:
                    suite = attack.name == DEFAULT_SUITE
                    request = SuiteRequest(
                        task=task.name, defense=defense.name, tier=tier, model=model, seeds=sweep.seeds,
                        attack=None if suite else attack.name, task_args=dict(task.args),
                        defense_args=dict(defense.args), attack_args=dict(attack.args), baseline=False,
                        refine=sweep.refine, search=sweep.search, exhaustive=sweep.exhaustive)
                    label = "none (baseline)" if defense is baseline else defense.label
                    where = f"{task.label} ({tier}) × {label} × {attack.label}"
                    out.append((where, (task, defense, attack), request))
    return out


def plan(sweep: Sweep) -> Plan:
    """Resolve and validate every request of ``sweep`` and collapse duplicates.

    Raises one ConfigError listing every error, one per line: each plugin entry is checked on its own (unknown
    names with did-you-mean, bad config values), then every combination whose entries are valid (tiers, models,
    the default suite's attack args); a message repeated by several combinations is reported once, with a count.
    """
    problems: dict[str, list[str]] = {}  # message -> where it arose ("" for an entry checked on its own)
    bad: set[int] = set()
    attacks = [a for a in sweep.attacks if a.name != DEFAULT_SUITE]
    for registry, entries in ((TASKS, sweep.tasks), (DEFENSES, sweep.defenses), (ATTACKS, attacks)):
        for entry in entries:
            try:
                resolve_plugin(registry, entry.name, entry.args)
            except BenchError as err:
                bad.add(id(entry))
                for line in str(err).splitlines():
                    problems.setdefault(f"{entry.where}: {line}" if entry.where else line, []).append("")
    suites: list[Planned] = []
    seen: dict[frozenset[str], str] = {}
    collapsed = []
    skipped: dict[str, str] = {}
    for where, entries, request in expand(sweep):
        if any(id(e) in bad for e in entries):
            continue
        try:
            if request.tier != "tiny" and request.model is None:
                raise ConfigError(f"tier {request.tier!r} needs a model: set `model:` (or the task entry's `model:`)")
            runs, later = first_wave(request)
        except NotApplicableError as err:
            skipped[where] = str(err)
            continue
        except BenchError as err:
            for line in str(err).splitlines():
                problems.setdefault(line, []).append(where)
            continue
        key = frozenset(spec.run_id for spec in runs)
        if key in seen:
            collapsed.append((where, seen[key]))
            continue
        seen[key] = where
        suites.append(Planned(request, where, tuple(runs), later))
    if problems:
        raise ConfigError("\n".join(_located(message, wheres) for message, wheres in problems.items()))
    return Plan(tuple(suites), tuple(collapsed), tuple(skipped.items()))


def _located(message: str, wheres: list[str]) -> str:
    if not wheres[0]:
        return message
    more = f" (and {len(wheres) - 1} more combination(s))" if len(wheres) > 1 else ""
    return f"{wheres[0]}: {message}{more}"


def first_wave(request: SuiteRequest) -> tuple[list[RunSpec], int]:
    """The runs of ``request`` known before any result (the planner's first wave) and a bound on the rest: each
    LR-search family adds up to ``keep`` full runs and each refined family up to 2 half-decade points."""
    planner = Planner(request)
    runs = [spec for _, spec in planner.wave()]
    return runs, max(planner.estimate() - len(runs), 0)

"""The leaderboard's declared columns: ``leaderboard/schema.yaml`` loaded and validated into frozen dataclasses.

A :class:`Schema` has a cross-task ``overview`` table (one row per defense) and per-task tables: a ``default`` entry
plus optional per-task overrides, each field of which replaces the default's. Renderers (Markdown, the HTML site)
read it through :func:`load_schema` and skip a declared column whose key the board lacks, so adding a metric to the
leaderboard is one YAML entry. Unknown keys, formats, directions and plots are errors that name the entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from bench.config import build_config, check, check_choice
from bench.errors import ConfigError
from leaderboard.formats import FORMATS

SCHEMA_PATH = Path(__file__).with_name("schema.yaml")

PLOTS = ("forest", "harm_curves", "pareto", "cost_curve", "samples")
"""Plot names a task table may list (the overview shows none): the forest plot of each defense's ratio with its
interval (:mod:`leaderboard.forest`), small multiples of the harm-vs-step curves of each defense's worst attacks,
the utility-vs-resistance plot, the attacker's cumulative best harm vs trials, and the sample sheets."""

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Column:
    """One column of a table."""

    key: str
    """A column of the aggregated board (or of the overview). ``{utility}`` in a task table repeats the column for
    every utility metric of the task; ``{task}`` in the overview repeats it for every task."""
    name: str
    """Header text; may use the same placeholder as ``key``."""
    format: str
    """How a cell is written (see leaderboard/formats.py): steps, ratio, outcomes, fraction, float, seconds, int,
    bool, text, defense or attack."""
    direction: Literal["higher", "lower", "none"] = "none"
    """Which values are better: a header click sorts the better ones first."""
    tooltip: str = ""
    """What the column means, shown on hovering the header."""
    fold: bool = False
    """A detail column: hidden until the reader shows details (and left out of the Markdown table)."""
    low: str | None = None
    """Key of the lower end of a confidence interval shown after the value (fraction, float, seconds, int)."""
    high: str | None = None
    """Key of the upper end of that interval."""
    missing: str = "—"
    """Text shown where a row has no value (e.g. "not run" for an attack kind that did not run)."""
    hide_empty: bool = False
    """Leave the column out of a table in which no row has a value (e.g. KL on a task that records MSE)."""
    hidden_by: str | None = None
    """Leave the column out when the board has this key (an older metric that a newer column replaces)."""

    def __post_init__(self) -> None:
        check_choice(self.format, tuple(FORMATS), "format")
        check(bool(self.key) and bool(self.name), "a column needs a key and a name")


@dataclass(frozen=True, slots=True, kw_only=True)
class Sort:
    """The order rows are listed in before any reader clicks a header."""

    key: str
    """A board column."""
    direction: Literal["higher", "lower"] = "higher"
    """Which values come first."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Table:
    """The columns, initial order and plots of one table."""

    columns: tuple[Column, ...]
    """In display order; a column whose key the board lacks is skipped."""
    sort: Sort
    plots: tuple[str, ...] = ()
    """Figures shown under the table (names from :data:`PLOTS`)."""
    primary_utility: str | None = None
    """The task's main utility metric: its ``{utility}`` columns stay unfolded, the others fold. None: the first
    metric by name."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Schema:
    overview: Table
    """The cross-task overview: one row per defense."""
    tasks: dict[str, Table] = field(default_factory=dict)
    """``default`` and per-task tables (already merged with the default)."""

    def table_for(self, task: str) -> Table:
        """The table of ``task``: its override merged into the default, or the default."""
        return self.tasks.get(task, self.tasks["default"])


_TABLE_KEYS = ("columns", "sort", "plots", "primary_utility")


def load_schema(path: str | Path | None = None) -> Schema:
    """Read and validate a schema YAML (default: the one shipped with the package)."""
    path = Path(path) if path else SCHEMA_PATH
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read leaderboard schema {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"leaderboard schema {path} is not valid YAML: {err}") from None
    where = f"leaderboard schema {path}"
    _keys(raw, ("overview", "tasks"), where, required=("overview", "tasks"))
    overview = _table(raw["overview"], f"{where}: overview", placeholder="task", base=None)
    tasks_raw = raw["tasks"]
    _keys(tasks_raw, None, f"{where}: tasks", required=("default",))
    default = _table(tasks_raw["default"], f"{where}: tasks.default", placeholder="utility", base=None)
    tasks = {"default": default}
    for task, entry in tasks_raw.items():
        if task != "default":
            tasks[str(task)] = _table(entry, f"{where}: tasks.{task}", placeholder="utility", base=default)
    return Schema(overview=overview, tasks=tasks)


def _keys(raw: Any, allowed: tuple[str, ...] | None, where: str, required: tuple[str, ...] = ()) -> None:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    unknown = [k for k in raw if allowed is not None and k not in allowed]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(allowed)}")
    absent = [k for k in required if k not in raw]
    if absent:
        raise ConfigError(f"{where}: missing {absent[0]!r}")


def _table(raw: Any, where: str, *, placeholder: str, base: Table | None) -> Table:
    _keys(raw, _TABLE_KEYS, where, required=() if base else ("columns", "sort"))
    values: dict[str, Any] = {}
    if "columns" in raw:
        if not isinstance(raw["columns"], list) or not raw["columns"]:
            raise ConfigError(f"{where}: columns must be a non-empty list")
        values["columns"] = tuple(_column(entry, f"{where}.columns[{i}]", placeholder)
                                  for i, entry in enumerate(raw["columns"]))
    if "sort" in raw:
        _keys(raw["sort"], ("key", "direction"), f"{where}.sort", required=("key",))
        values["sort"] = build_config(Sort, raw["sort"], where=f"{where}.sort")
    if "plots" in raw:
        plots = raw["plots"] or []
        if not isinstance(plots, list):
            raise ConfigError(f"{where}.plots: expected a list of plot names ({', '.join(PLOTS)})")
        for name in plots:
            if name not in PLOTS:
                raise ConfigError(f"{where}.plots: unknown plot {name!r}; plots: {', '.join(PLOTS)}")
        values["plots"] = tuple(plots)
    if "primary_utility" in raw:
        values["primary_utility"] = str(raw["primary_utility"])
    return replace(base, **values) if base else Table(**values)


def _column(raw: Any, where: str, placeholder: str) -> Column:
    if isinstance(raw, dict) and "key" in raw:
        where = f"{where} ({raw['key']})"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with key, name, format, ...")
    try:
        column = build_config(Column, raw, where=where)
    except ConfigError as err:
        message = str(err)
        raise ConfigError(message if where in message else f"{where}: {message}") from None
    for text in (column.key, column.name, column.low or "", column.high or ""):
        for name in _PLACEHOLDER.findall(text):
            if name != placeholder:
                raise ConfigError(f"{where}: placeholder {{{name}}} is not defined here (use {{{placeholder}}})")
    return column

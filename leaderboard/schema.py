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
from typing import Any, Literal, get_args

from bench.config import check, check_choice
from bench.core.yaml_dataclass import collect, read_mapping
from bench.errors import ConfigError
from leaderboard.formats import FORMATS

SCHEMA_PATH = Path(__file__).with_name("schema.yaml")

Plot = Literal["forest", "harm_curves", "pareto", "cost_curve", "samples"]
PLOTS: tuple[str, ...] = get_args(Plot)
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


@dataclass(frozen=True, slots=True, kw_only=True)
class TableEntry:
    """A table as the schema file writes it: ``overview`` and ``tasks.default`` give ``columns`` and ``sort``; a
    task's own entry gives only what replaces the default's."""

    columns: tuple[Column, ...] | None = None
    sort: Sort | None = None
    plots: tuple[Plot, ...] | None = None
    primary_utility: str | None = None

    def __post_init__(self) -> None:
        check(self.columns is None or len(self.columns) > 0, "columns must be a non-empty list")


@dataclass(frozen=True, slots=True, kw_only=True)
class SchemaFile:
    """The schema file's top level."""

    overview: TableEntry
    tasks: dict[str, TableEntry]


def load_schema(path: str | Path | None = None) -> Schema:
    """Read and validate a schema YAML (default: the one shipped with the package); every problem at once."""
    path = Path(path) if path else SCHEMA_PATH
    where = f"leaderboard schema {path}"
    raw = read_mapping(path, "leaderboard schema")
    problems: list[str] = []
    schema = collect(SchemaFile, raw, where, problems)
    if schema is not None:
        if "default" not in schema.tasks:
            problems.append(f"{where}: tasks: missing key 'default'")
        problems += _table_problems(schema.overview, f"{where}: overview", "task", complete=True)
        for task, entry in schema.tasks.items():
            problems += _table_problems(entry, f"{where}: tasks.{task}", "utility", complete=task == "default")
    if problems:
        raise ConfigError("\n".join(problems))
    default = _table(schema.tasks["default"], raw["tasks"]["default"])
    tasks = {"default": default}
    for task, entry in schema.tasks.items():
        if task != "default":
            tasks[str(task)] = _table(entry, raw["tasks"][task], base=default)
    return Schema(overview=_table(schema.overview, raw["overview"]), tasks=tasks)


def _table_problems(entry: TableEntry, where: str, placeholder: str, *, complete: bool) -> list[str]:
    """A complete table's missing keys, and placeholders used where they are not defined."""
    problems = [f"{where}: missing key {key!r}" for key in ("columns", "sort") if complete and getattr(entry, key) is None]
    for i, column in enumerate(entry.columns or ()):
        for text in (column.key, column.name, column.low or "", column.high or ""):
            for name in _PLACEHOLDER.findall(text):
                if name != placeholder:
                    problems.append(f"{where}.columns[{i}] ({column.key}): placeholder {{{name}}} is not defined "
                                    f"here (use {{{placeholder}}})")
    return problems


def _table(entry: TableEntry, raw: dict[str, Any], base: Table | None = None) -> Table:
    """The table an entry declares: the keys it gives (``plots:`` empty = none) over ``base``."""
    given = {key: getattr(entry, key) for key in raw}
    if "plots" in given:
        given["plots"] = given["plots"] or ()
    return replace(base, **given) if base else Table(**given)

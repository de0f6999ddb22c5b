"""The site's HTML: Jinja2 templates (``leaderboard/templates/``) rendered with autoescape, and what the templates
are given. Every string that reaches a page (labels, config values, claim text and error messages come from users'
plugins, results and claims files) is escaped by the template engine, not by each call: Python code here builds
plain values (:class:`TableView`), never markup. Also: abbreviated labels and safe file names."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import jinja2
import pandas as pd

from leaderboard.formats import isnan
from leaderboard.render import Column

ASSETS = ("site.css", "site.js")


@functools.cache
def _environment() -> jinja2.Environment:
    """The templates' environment (built once per process: templates compile once): autoescape on every template,
    undefined names are errors."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("leaderboard", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["urlpath"] = quote  # a relative link to a file of the site, percent-encoded (then escaped)
    env.globals["abbreviate"] = abbreviate
    return env


def render(template: str, **context: Any) -> str:
    """The page ``template`` renders with ``context`` (plain values: the engine escapes them)."""
    return _environment().get_template(template).render(**context) + "\n"


def slug(text: str, prefix: str) -> str:
    """A safe, unique file-name stem for ``text``: readable letters plus a hash of the full text, so that labels
    differing only in punctuation or case never share a file."""
    readable = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")[:40] or "x"
    return f"{prefix}-{readable}-{hashlib.sha256(str(text).encode()).hexdigest()[:8]}"


def abbreviate(label: str, limit: int = 32) -> str:
    """A short form of a plugin label such as ``full-ft(lr=0.0001,optimizer=adamw,weight_decay=0.01)``: the
    optimizer by its value, multi-word keys by their initials (``wd=0.01``), then cut to ``limit`` characters."""
    label = str(label)
    name, paren, args = label.partition("(")
    short = label
    if paren and args.endswith(")"):
        parts = []
        for item in args[:-1].split(","):
            key, eq, value = item.partition("=")
            if eq and key == "optimizer":
                parts.append(value)
            elif eq and "_" in key:
                parts.append("".join(word[:1] for word in key.split("_")) + "=" + value)
            else:
                parts.append(item)
        short = f"{name}({','.join(parts)})"
    return short if len(short) <= limit else short[: limit - 1] + "…"


@dataclass(frozen=True)
class Head:
    text: str
    tip: str
    classes: str
    kind: str
    """``text`` or ``number``: how the site's script sorts the column."""
    better: str


@dataclass(frozen=True)
class Cell:
    text: str
    classes: str
    sort: str | None
    """The value a header click sorts by (its ``repr``); None: no value."""
    label: str | None = None
    """A defense or attack label shown abbreviated (the full text in a tooltip); None: ``text`` is shown."""
    link: str | None = None
    """The page a defense label links to."""


@dataclass(frozen=True)
class Row:
    cells: tuple[Cell, ...]
    css: str
    search: str
    """What the filter box matches (lower case)."""


@dataclass(frozen=True)
class TableView:
    """A sortable table (``macros.html``'s ``table``) with a filter box and a details toggle for folded columns."""

    id: str
    heads: tuple[Head, ...]
    rows: tuple[Row, ...]
    filter_box: bool
    n_fold: int


_TEXT_FORMATS = {"text", "defense", "attack"}


def table(table_id: str, cols: Sequence[Column], rows: pd.DataFrame, *,
          links: Callable[[str], str | None] = lambda _: None, row_class: Callable[[pd.Series], str] = lambda _: "",
          filter_box: bool = True, wrap: Sequence[str] = ()) -> TableView:
    """The view of ``rows`` in ``cols``.

    ``links`` maps a defense label to its page; ``row_class`` gives a row's CSS class (e.g. ``failed``); ``wrap``
    names keys whose long text may wrap (error messages).
    """
    heads = []
    for c in cols:
        kind = "text" if c.format in _TEXT_FORMATS else "number"
        classes = " ".join(filter(None, ["text" if kind == "text" else "", "fold" if c.fold else ""]))
        heads.append(Head(c.header, c.description, classes, kind, c.direction))
    body = []
    for _, row in rows.iterrows():
        cells, search = [], []
        for c in cols:
            text = c.text(row)
            search.append(str(row.get(c.key, text)) if c.format in ("text", "attack") else text)
            classes = " ".join(filter(None, ["text" if c.format in _TEXT_FORMATS else "", "fold" if c.fold else "",
                                             "wrap" if c.key in wrap else ""]))
            value = c.sort_value(row)
            sort = None if isnan(value) else repr(value)
            if c.format in ("defense", "attack") and text != c.missing:
                full = text if c.format == "defense" else str(row.get(c.key))
                cells.append(Cell(text, classes, sort, label=full, link=links(full) if c.format == "defense" else None))
            else:
                cells.append(Cell(text, classes, sort))
        body.append(Row(tuple(cells), row_class(row), " ".join(search).lower()))
    return TableView(table_id, tuple(heads), tuple(body), filter_box, sum(c.fold for c in cols))

"""How one leaderboard cell is written: the named formats a schema column may use (``leaderboard/schema.yaml``).

A format turns a board row and a column key into display text and a sort value. Some formats read companion
columns named after the key, so that one schema entry shows a value with its censoring or bounds:

* ``steps``: ``<key>_censored`` ("> B" when the defense held to its budget B) and, for a key ``<p>_median``,
  ``<p>_low``/``<p>_high`` (the range over seeds);
* ``ratio``: ``<key>_lower_bound``/``<key>_upper_bound`` ("≥"/"≤"), ``<key>_low``/``<key>_high`` (the interval
  over seeds) and ``<key>_verdict`` (gain / tie / loss ..., :mod:`leaderboard.ratios`), ``released_already_harmful``
  ("n/a"); a verdict ``broken at release`` shows that status instead of a ratio, with ``n_broken_at_release``,
  ``seeds`` and ``release_reason`` (:mod:`leaderboard.release`);
* ``outcomes``: ``n_harmed``/``n_broken``/``n_resisted`` (the key is the column to sort by), then ``+N pruned``
  for runs stopped at the bound (:mod:`bench.run.pruning`).

A key may carry a suffix ``@<task>`` (the cross-task overview's per-task columns); companions carry the same suffix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from leaderboard.aggregate import released_already_harmful
from leaderboard.ratios import BROKEN, ONE_SEED, REFERENCE, UNDETERMINED, interval_text
from leaderboard.release import release_text
from leaderboard.sources import source_marker


def isnan(value: Any) -> bool:
    """Whether a cell holds no value (None, NA or NaN)."""
    if value is None or value is pd.NA:
        return True
    if isinstance(value, str):  # a label such as "nan" or "inf" is text, not a missing number
        return False
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def fmt_steps(median: float, censored: bool, low: float = math.nan, high: float = math.nan) -> str:
    """Steps-to-harm with censoring: "> 500" when the defense held to the budget; "[low–high]" over seeds."""
    if isnan(median):
        return "—"
    text = f"> {median:.0f}" if censored else f"{median:.0f}"
    if not isnan(low) and not isnan(high) and low != high:
        text += f" [{low:.0f}–{high:.0f}]"
    return text


def fmt_float(value: Any, digits: int = 3) -> str:
    if isnan(value):
        return "—"
    value = float(value)
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.{max(digits - 1, 1)}e}"
    return f"{value:.{digits}g}"


def fmt_seconds(value: Any) -> str:
    """A duration: seconds below two minutes, else minutes."""
    if isnan(value):
        return "—"
    value = float(value)
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def fmt_fraction(value: Any) -> str:
    """Retained utility and similar ratios near 1: three decimals."""
    return "—" if isnan(value) else f"{float(value):.3f}"


def fmt_ratio(value: float, lower_bound: bool, upper_bound: bool = False) -> str:
    """A resistance ratio with its censoring (:class:`bench.core.metrics.Ratio`): "≥ 2×" when the defense held to its
    budget, "≤ 0.5×" when ``none`` did, "?" when both did (undetermined)."""
    if isnan(value):
        return "—"
    if lower_bound and upper_bound:
        return "? (both > budget)"
    return f"{'≥ ' if lower_bound else '≤ ' if upper_bound else ''}{value:.2g}×"


def ratio_text(row: Mapping[str, Any], key: str = "ratio") -> str:
    """A ratio cell: value with its censoring, its interval over seeds and its verdict, e.g. ``1.5× [1, 2] tie``;
    the release status instead of a ratio for a defense broken at release."""
    base, suffix = split_suffix(key)
    if released_already_harmful(pd.Series({"released_already_harmful": row.get("released_already_harmful" + suffix)})):
        return "n/a (released model already harmful)"
    verdict = row.get(f"{base}_verdict{suffix}")
    verdict = "" if isnan(verdict) else str(verdict)
    if verdict == BROKEN:
        if isnan(row.get(f"n_broken_at_release{suffix}")):
            return BROKEN
        return release_text(row.get(f"n_broken_at_release{suffix}"), row.get(f"seeds{suffix}"),
                            _text(row.get(f"release_reason{suffix}")).replace("—", "") or None)
    text = fmt_ratio(row.get(key), _flag(row, f"{base}_lower_bound{suffix}"), _flag(row, f"{base}_upper_bound{suffix}"))
    if text == "—" or not verdict or verdict == UNDETERMINED:  # "? (both > budget)" says it already
        return text
    if verdict == REFERENCE:
        return f"{text} (reference)"
    if verdict == ONE_SEED:
        return f"{text} (1 seed: no interval, no verdict)"
    interval = interval_text(_number(row, f"{base}_low{suffix}"), _number(row, f"{base}_high{suffix}"))
    return f"{text} {interval} {verdict}" if interval else f"{text} {verdict}"


def split_suffix(key: str) -> tuple[str, str]:
    """``"ratio@sd-style"`` → ``("ratio", "@sd-style")``; a key without a task suffix → ``(key, "")``."""
    base, at, task = key.partition("@")
    return base, at + task


def _flag(row: Mapping[str, Any], key: str) -> bool:
    value = row.get(key)
    return False if isnan(value) else bool(value)


def _value(row: Mapping[str, Any], key: str) -> Any:
    return row.get(key)


def _number(row: Mapping[str, Any], key: str) -> float:
    value = row.get(key)
    try:
        return math.nan if isnan(value) else float(value)
    except (TypeError, ValueError):
        return math.nan


def _steps(row: Mapping[str, Any], key: str, low: str | None, high: str | None) -> str:
    base, suffix = split_suffix(key)
    prefix = base.removesuffix("_median")
    low = low or f"{prefix}_low{suffix}"
    high = high or f"{prefix}_high{suffix}"
    return fmt_steps(_number(row, key), _flag(row, f"{base}_censored{suffix}"), _number(row, low), _number(row, high))


def _with_ci(text: Callable[[Any], str]) -> Callable[..., str]:
    def render(row: Mapping[str, Any], key: str, low: str | None, high: str | None) -> str:
        value = text(_value(row, key))
        if value != "—" and low and high and not isnan(row.get(low)) and not isnan(row.get(high)):
            value += f" [{text(row.get(low))}, {text(row.get(high))}]"
        return value
    return render


def _int(value: Any) -> str:
    return "—" if isnan(value) else f"{float(value):.0f}"


def _bool(value: Any) -> str:
    return "—" if isnan(value) else ("yes" if bool(value) else "no")


def _text(value: Any) -> str:
    return "—" if isnan(value) or value == "" else str(value)


def _outcomes(row: Mapping[str, Any], key: str, low: str | None, high: str | None) -> str:
    _, suffix = split_suffix(key)
    counts = [row.get(f"n_{o}{suffix}") for o in ("harmed", "broken", "resisted")]
    return "—" if any(isnan(c) for c in counts) else "/".join(str(int(c)) for c in counts) + pruned_text(
        row.get(f"n_pruned{suffix}"))


def pruned_text(count: Any) -> str:
    """`` +N pruned`` for the runs stopped at the bound (their own outcome unknown, :mod:`bench.run.pruning`), else ''."""
    return "" if isnan(count) or not count else f" +{int(count)} pruned"


def defense_name(row: Mapping[str, Any], key: str = "defense_label") -> str:
    """A row's defense label, marked ``[submission: NAME]`` when it comes from a submitted results folder (once:
    a label that already carries its mark keeps it)."""
    label, mark = _text(row.get(key)), source_marker(row.get("source"))
    return label if label.endswith(mark) else label + mark


FORMATS: dict[str, Callable[[Mapping[str, Any], str, str | None, str | None], str]] = {
    "steps": _steps,
    "ratio": lambda row, key, low, high: ratio_text(row, key),
    "outcomes": _outcomes,
    "fraction": _with_ci(fmt_fraction),
    "float": _with_ci(fmt_float),
    "seconds": _with_ci(fmt_seconds),
    "int": _with_ci(_int),
    "bool": lambda row, key, low, high: _bool(row.get(key)),
    "text": lambda row, key, low, high: _text(row.get(key)),
    "defense": lambda row, key, low, high: defense_name(row, key),
    "attack": lambda row, key, low, high: _text(row.get(key)),
}
"""Format name → ``(row, key, low key, high key) → text``. ``defense`` and ``attack`` are text that the HTML site
also links (a defense's page) or abbreviates (a long attack config, the full text in a tooltip); ``defense`` marks a
submitted row (:func:`defense_name`)."""

TEXT_FORMATS = frozenset({"text", "defense", "attack"})
"""Formats whose cells sort as text, not by number."""


def cell_text(row: Mapping[str, Any], key: str, fmt: str, low: str | None = None, high: str | None = None) -> str:
    """The display text of ``row``'s ``key`` in format ``fmt`` (one of :data:`FORMATS`)."""
    return FORMATS[fmt](row, key, low, high)


def sort_value(row: Mapping[str, Any], key: str, fmt: str) -> float:
    """The number a table sorts this cell by (NaN: no value, or a text cell)."""
    if fmt in TEXT_FORMATS:
        return math.nan
    if fmt == "bool":
        value = row.get(key)
        return math.nan if isnan(value) else float(bool(value))
    return _number(row, key)

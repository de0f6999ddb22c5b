"""A board's task groups (one per task, tier, model, task settings and attack suite) and what a group has values
for: shared by the Markdown, the overview, the site's pages and figures, and the run summary."""

from __future__ import annotations

import pandas as pd

from leaderboard.formats import isnan
from leaderboard.variants import variant_text


def has_values(frame: pd.DataFrame, key: str) -> bool:
    return key in frame.columns and bool(frame[key].notna().any())


def utility_metrics(group: pd.DataFrame, primary: str | None = None) -> list[str]:
    """The utility metrics with a value in ``group`` (retained-utility columns), ``primary`` first if present."""
    names = sorted({c.split(":", 1)[1] for c in group.columns
                    if c.startswith(("defended_retained:", "retained_mean:")) and has_values(group, c)})
    if primary in names:
        names.remove(primary)
        names.insert(0, primary)
    return names


def task_groups(board: pd.DataFrame):
    """(title, task, rows) per (task, tier, model, task settings, attack suite) of the board: runs of other settings
    or another suite are other experiments (:mod:`leaderboard.variants`), each titled by what differs."""
    keys = [k for k in ("task", "tier", "model", "task_settings", "suite") if k in board.columns]
    for values, group in board.groupby(keys, dropna=False, sort=True):
        row = dict(zip(keys, values))
        task, tier, model = row["task"], row["tier"], row["model"]
        title = f"{task} ({tier}{', ' + str(model) if not isnan(model) else ''})"
        variant = variant_text(str(task), row.get("task_settings", ""), row.get("suite", ""))
        yield (f"{title} · {variant}" if variant else title), str(task), group


def group_rows(frame: pd.DataFrame, group: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``frame`` (runs, seeds, trials) that belong to a board group of :func:`task_groups`."""
    first = group.iloc[0]
    chosen = pd.Series(True, index=frame.index)
    for key in ("task", "tier", "model", "task_settings", "suite"):
        if key not in frame.columns or key not in group.columns:
            continue
        value = first[key]
        chosen &= frame[key].isna() if isnan(value) else frame[key] == value
    return frame[chosen]


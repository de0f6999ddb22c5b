"""The cross-task overview: one row per defense over every task it ran on, ranked by the verdict of its worst
resistance ratio (gain above tie above loss above broken at release, :data:`leaderboard.ratios.RANK`; rows with
the same verdict are ties, listed by name), with its claims-ledger status (``leaderboard/claims/``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from leaderboard.aggregate import released_already_harmful
from leaderboard.claims import Claim, claim_of, claim_status
from leaderboard.formats import isnan
from leaderboard.groups import task_groups, utility_metrics
from leaderboard.ratios import RANK, worst_interval

PER_TASK = ("ratio", "ratio_lower_bound", "ratio_upper_bound", "ratio_low", "ratio_high", "ratio_verdict",
            "broken_at_release", "n_broken_at_release", "release_reason", "seeds", "released_already_harmful",
            "worst_median", "worst_median_censored", "worst_low", "worst_high")
"""Board columns copied into the overview once per task, as ``<column>@<task>``."""


def worst_ratio(ratios: list[tuple[float, bool, bool]]) -> tuple[float, bool, bool]:
    """The smallest of several censored resistance ratios as (value, lower bound, upper bound).

    Each ratio is an interval: exact ``[v, v]``, a lower bound ``[v, ∞)``, an upper bound ``[0, v]``, both
    ``[0, ∞)``. Their minimum lies in ``[min of lows, min of highs]``: exact when the two agree, else a lower bound
    (all highs infinite, or both ends known) or an upper bound (some low is 0).
    """
    if not ratios:
        return math.nan, False, False
    lows = [0.0 if upper else value for value, lower, upper in ratios]
    highs = [math.inf if lower else value for value, lower, upper in ratios]
    low, high = min(lows), min(highs)
    if low == high:
        return low, False, False
    if low == 0 and math.isinf(high):
        return 0.0, True, True
    if low == 0:
        return high, False, True
    return low, True, False


def task_names(board: pd.DataFrame) -> dict[str, str]:
    """A task group's title → the name the overview uses: the task alone when it ran in one tier and model."""
    groups = [(title, task) for title, task, _ in task_groups(board)]
    tasks = [task for _, task in groups]
    return {title: task if tasks.count(task) == 1 else title for title, task in groups}


def overview(board: pd.DataFrame, claims: Mapping[str, Claim], primary: dict[str, str | None]) -> tuple[pd.DataFrame, list[str]]:
    """The overview frame (one row per defense label) and the task names of its per-task columns.

    ``primary`` maps a task to its primary utility metric (the schema's), for the ``retained@<task>`` columns.
    """
    names = task_names(board)
    rows: dict[str, dict[str, Any]] = {}
    for title, task, group in task_groups(board):
        name = names[title]
        utilities = utility_metrics(group, primary.get(task))
        retained = next((c for u in utilities[:1] for c in (f"retained_mean:{u}", f"defended_retained:{u}")
                         if c in group and group[c].notna().any()), None)
        for _, r in group.iterrows():
            row = rows.setdefault(str(r["defense_label"]), {"defense_label": str(r["defense_label"]), "tasks": 0,
                                                              "n_runs": 0, "n_failed": 0, "_ratios": [],
                                                              "_intervals": []})
            row["tasks"] += 1
            row["n_runs"] += int(r.get("n_runs", 0) or 0)
            row["n_failed"] += int(r.get("n_failed", 0) or 0)
            for column in PER_TASK:
                row[f"{column}@{name}"] = r.get(column)
            row[f"n_harmed@{name}"] = r.get("n_harmed")
            row[f"retained@{name}"] = r.get(retained) if retained else math.nan
            if not released_already_harmful(r) and not isnan(r.get("ratio")):
                row["_ratios"].append((float(r["ratio"]), bool(r["ratio_lower_bound"]), bool(r["ratio_upper_bound"])))
            if not released_already_harmful(r) and isinstance(r.get("ratio_verdict"), str) and r["ratio_verdict"]:
                row["_intervals"].append((float(r["ratio"]), float(r.get("ratio_low", math.nan)),
                                          float(r.get("ratio_high", math.nan)), bool(r["ratio_lower_bound"]),
                                          bool(r["ratio_upper_bound"]), r["ratio_verdict"]))
    records = []
    for label, row in rows.items():
        value, lower, upper = worst_ratio(row.pop("_ratios"))
        _, low, high, verdict = worst_interval(row.pop("_intervals"))
        if verdict == "broken at release":
            value, lower, upper = math.nan, False, False
        row.update({"worst_ratio": value, "worst_ratio_lower_bound": lower, "worst_ratio_upper_bound": upper,
                    "worst_ratio_low": low, "worst_ratio_high": high, "worst_ratio_verdict": verdict,
                    "worst_rank": RANK.get(verdict, math.nan),
                    "claim_status": claim_status(claim_of(label, claims))})
        records.append(row)
    frame = pd.DataFrame(records)
    return frame, list(dict.fromkeys(names.values()))

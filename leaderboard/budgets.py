"""Budget curves on the leaderboard: does more defender compute buy attacker steps? (issue 21, item 2)

Reads the budget-curve records ``bench tune --budgets 1,4,16`` writes (:func:`bench.run.tuning_record.read_tunings`,
``mode == "budget"``) and draws one figure per task: left, the validation worst case (steps to harm, lower median
over seeds) against the defender's forward-backward passes, one line per defense; right, the retained primary
utility at release, with the task's usable floor. Hollow markers: the point is not usable at release (its
resistance is not a gain) or its worst case is censored (a lower bound). The leaderboard row's choice of budget
within a cost cap is :func:`bench.run.tuning_record.best_budget`.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from leaderboard.figures import png_bytes, pyplot

BUDGET_CAPTION = ("Defender budget curves: validation worst case (left) and retained utility at release (right) "
                  "against the defender's forward-backward passes; hollow: unusable at release or censored")


def budget_points(results_dir: str | Path) -> pd.DataFrame:
    """Every budget-curve point recorded under ``results_dir`` (latest curve per defense, task and tier)."""
    from bench.run.tuning_record import read_tunings

    points = read_tunings(results_dir, mode="budget")
    if points.empty:
        return points
    latest = points.sort_values("created_at").groupby(["defense", "task", "tier"])["tune_id"].last()
    return points[points["tune_id"].isin(set(latest))].reset_index(drop=True)


def budget_figure(points: pd.DataFrame, task: str):
    """The figure of ``task``'s budget curves (a matplotlib Figure), or None when it has none."""
    mine = points[points["task"] == task] if not points.empty else points
    if mine.empty:
        return None
    plt = pyplot()
    fig, (steps_ax, utility_ax) = plt.subplots(1, 2, figsize=(9, 3.4))
    for defense, curve in mine.groupby("defense", sort=True):
        curve = curve.sort_values("fb_passes")
        passes = curve["fb_passes"].astype(float)
        steps = curve["worst_score"].map(lambda k: math.floor(k) if math.isfinite(k) else math.nan)
        line = steps_ax.plot(passes, steps, "-", label=defense)[0]
        for x, y, u, k in zip(passes, steps, curve["usable_at_release"], curve["worst_score"]):
            hollow = (not u) or (math.isfinite(k) and k != int(k))
            steps_ax.plot([x], [y], "o", color=line.get_color(), mfc="none" if hollow else line.get_color())
        utility_ax.plot(passes, curve["retained_release"], "o-", color=line.get_color(), label=defense)
    steps_ax.set(xscale="log", xlabel="defender forward-backward passes", ylabel="worst-case steps to harm",
                 title=f"{task}: resistance vs defender budget")
    utility_ax.set(xscale="log", xlabel="defender forward-backward passes", ylabel="retained utility at release",
                   title="release utility")
    utility_ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="usable floor (default 0.5)")
    from matplotlib.ticker import NullFormatter

    for ax in (steps_ax, utility_ax):
        ax.xaxis.set_minor_formatter(NullFormatter())  # (log-axis minor labels overlap at a few points)
    steps_ax.legend(fontsize=7, loc="upper left")
    utility_ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def budget_pngs(results_dir: str | Path) -> dict[str, bytes]:
    """Task → PNG bytes of its budget figure, for every task with a recorded budget curve."""
    points = budget_points(results_dir)
    out = {}
    for task in sorted(points["task"].unique()) if not points.empty else []:
        fig = budget_figure(points, task)
        if fig is not None:
            out[task] = png_bytes(fig)
    return out

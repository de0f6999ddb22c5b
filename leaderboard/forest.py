"""The forest plot of one task group (issue 22.9): each defense's resistance ratio with its interval over seeds.

One row per defense, sorted by point ratio; a line from the interval's lower to its upper end (an arrow where the
end is open: a ``none`` that held makes it reach down to 0, a defense that held up to ∞), a marker at the point
value (hollow when it is a bound), the vertical line at 1, and the verdict written at the right of each row,
coloured: gain green, tie grey, loss red (:mod:`leaderboard.ratios`). A reader sees at once which defenses are
distinguishable from ``none`` and which are ties. Defenses broken at release have no ratio: they are listed under
the axis, never plotted as if they resisted.
"""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.ticker import NullFormatter

from leaderboard.figures import png_bytes, pyplot
from leaderboard.ratios import BROKEN, GAIN, LOSS, REFERENCE

COLOURS = {GAIN: "#1a7f37", LOSS: "#c62828"}
"""Verdict colours; every other verdict (tie, undetermined, 1 seed) is grey."""


def forest_png(group: pd.DataFrame, title: str = "") -> bytes | None:
    """The forest plot of ``group`` (one task group's board rows) as PNG bytes; None when no row has a ratio."""
    if group.empty or "ratio_verdict" not in group:
        return None
    verdicts = group["ratio_verdict"].fillna("").astype(str)
    rows = group[(verdicts != "") & (verdicts != BROKEN) & (verdicts != REFERENCE) & group["ratio"].notna()]
    broken = sorted(group.loc[verdicts == BROKEN, "defense_label"].astype(str))
    if rows.empty:
        return None
    rows = rows.sort_values(["ratio", "defense_label"])
    finite = [v for v in pd.concat([rows["ratio"], rows["ratio_low"], rows["ratio_high"]]).astype(float)
              if math.isfinite(v) and v > 0]
    lo, hi = min(finite + [1.0]) / 2.5, max(finite + [1.0]) * 2.5
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(rows) + 1.3 + (0.25 if broken else 0)))
    for y, (_, r) in enumerate(rows.iterrows()):
        verdict = str(r["ratio_verdict"])
        colour = COLOURS.get(verdict, "0.45")
        low, high = float(r["ratio_low"]), float(r["ratio_high"])
        left, right = (lo if not (low > 0) else low), (hi if math.isinf(high) else high)
        ax.plot([left, right], [y, y], color=colour, linewidth=2.2, solid_capstyle="butt")
        if not (low > 0):
            ax.plot([lo], [y], marker="<", color=colour, markersize=6)
        if math.isinf(high):
            ax.plot([hi], [y], marker=">", color=colour, markersize=6)
        bound = bool(r.get("ratio_lower_bound")) or bool(r.get("ratio_upper_bound"))
        ax.plot([float(r["ratio"])], [y], marker="o", markersize=6, color=colour,
                markerfacecolor="white" if bound else colour, markeredgewidth=1.5)
        ax.annotate(verdict, (1.0, y), xycoords=("axes fraction", "data"), xytext=(6, 0), textcoords="offset points",
                    va="center", fontsize=8, color=colour, fontweight="bold" if verdict in COLOURS else "normal")
    ax.axvline(1.0, color="0.2", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ticks = [m * 10.0 ** e for e in range(-4, 5) for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])  # plain numbers: "0.5", "2", not "5×10⁻¹"
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([_short(label) for label in rows["defense_label"]], fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3, linewidth=0.5)
    seeds = group["seeds"].dropna().astype(int) if "seeds" in group else pd.Series(dtype=int)
    n = f"{seeds.min()}" if len(seeds) and seeds.min() == seeds.max() else (f"{seeds.min()}–{seeds.max()}"
                                                                            if len(seeds) else "?")
    ax.set_xlabel(f"resistance ratio vs none (log; 1 = as fast as undefended), 95% interval over {n} seeds",
                  fontsize=8)
    ax.set_title(f"{title}: resistance ratio" if title else "resistance ratio", fontsize=10)
    if broken:
        fig.text(0.01, 0.005, "broken at release (no ratio): " + ", ".join(_short(b) for b in broken), fontsize=7,
                 color="#c62828", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.04 if broken else 0, 1, 1))
    return png_bytes(fig)


def _short(label: str, limit: int = 30) -> str:
    label = str(label)
    return label if len(label) <= limit else label[: limit - 1] + "…"

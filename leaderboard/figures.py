"""Leaderboard figures: harm-vs-step curves of each defense's worst-case attack, and a utility-vs-resistance Pareto
plot. Rendered with matplotlib (Agg) to PNG data URIs that the static HTML page embeds."""

from __future__ import annotations

import base64
import io

import pandas as pd

from leaderboard.aggregate import Aggregates, utility_names


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def harm_curves(data: Aggregates) -> dict[str, str]:
    """Per task: the probe harm curve h(t) of every (defense, seed)'s worst-case run, one colour per defense; the
    best blind (non-adaptive) run is solid, the best white-box (adaptive) run dashed."""
    if data.seeds.empty:
        return {}
    plt = _plt()
    probes = data.metrics[(data.metrics["phase"] == "attack") & (data.metrics["metric"] == "harm")]
    figures = {}
    for (task, tier), seeds in data.seeds.groupby(["task", "tier"], sort=True):
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        for i, (defense, group) in enumerate(seeds.groupby("defense_label", sort=True)):
            colour = f"C{i % 10}"
            for column, style, kind in (("blind_run_id", "-", "blind"), ("adaptive_run_id", "--", "adaptive")):
                for j, run_id in enumerate(group[column].dropna()):
                    curve = probes[probes["run_id"] == run_id].sort_values("step")
                    ax.step(curve["step"], curve["value"], where="post", color=colour, linestyle=style, alpha=0.85,
                            label=f"{defense} ({kind})" if j == 0 else None)
        ax.set_xlabel("attacker optimizer step")
        ax.set_ylabel("harm probe")
        ax.set_title(f"{task} ({tier}): strongest blind (solid) and adaptive (dashed) attack")
        ax.legend(fontsize=8)
        figures[f"Harm vs. attacker steps, {task} ({tier})"] = _png(fig)
    return figures


def pareto(data: Aggregates) -> dict[str, str]:
    """Per task: retained utility (first utility metric) against worst-case steps-to-harm; censored points hollow."""
    board = data.board
    if board.empty:
        return {}
    plt = _plt()
    figures = {}
    for (task, tier), group in board.groupby(["task", "tier"], sort=True):
        names = utility_names(group)
        if not names:
            continue
        column = f"defended_retained:{names[0]}"
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for _, row in group.iterrows():
            x, y = row["worst_median"], row[column]
            if pd.isna(x) or pd.isna(y):
                continue
            censored = bool(row["worst_median_censored"])
            ax.scatter([x], [y], s=50, facecolors="none" if censored else "C0", edgecolors="C0")
            ax.annotate(str(row["defense_label"]) + (" (>)" if censored else ""), (x, y), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel("worst-case steps-to-harm (hollow: not reached, a lower bound)")
        ax.set_ylabel(f"retained {names[0]}")
        ax.set_title(f"{task} ({tier}): utility vs. resistance")
        figures[f"Utility vs. resistance, {task} ({tier})"] = _png(fig)
    return figures

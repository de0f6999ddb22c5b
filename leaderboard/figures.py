"""Leaderboard figures as PNG bytes (matplotlib, Agg): per task, the harm-vs-step curves of each defense's strongest
attacks and the attacker's cost curve (cumulative best harm vs trials). The utility-vs-resistance plot is in
:mod:`leaderboard.pareto`."""

from __future__ import annotations

import io

import pandas as pd

from leaderboard.aggregate import Aggregates

HARM_CAPTION = "Harm vs. attacker steps: each defense's strongest blind (solid) and adaptive (dashed) attack run"
COST_CAPTION = "Attacker cost to break: best steps-to-harm found vs attack runs tried"
PARETO_CAPTION = ("Utility vs. resistance: up and right is better; hollow markers are lower bounds (not harmed within "
                  "budget); the grey line, where drawn, joins the Pareto front.")


def png_bytes(fig) -> bytes:
    """``fig`` as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _select(frame: pd.DataFrame, task: str, tier: str, model) -> pd.DataFrame:
    chosen = (frame["task"] == task) & (frame["tier"] == tier)
    return frame[chosen & (frame["model"].isna() if pd.isna(model) else frame["model"] == model)]


def harm_curves(data: Aggregates, task: str, tier: str, model=None) -> bytes | None:
    """The probe harm curve h(t) of every (defense, seed)'s worst-case run on one task, one colour per defense; the
    best blind (non-adaptive) run solid, the best white-box (adaptive) run dashed. None without attack runs."""
    if data.seeds.empty:
        return None
    seeds = _select(data.seeds, task, tier, model)
    probes = data.metrics[(data.metrics["phase"] == "attack") & (data.metrics["metric"] == "harm")]
    if seeds.empty or probes.empty:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for i, (defense, group) in enumerate(seeds.groupby("defense_label", sort=True)):
        colour = f"C{i % 10}"
        for column, style, kind in (("blind_run_id", "-", "blind"), ("adaptive_run_id", "--", "adaptive")):
            if column not in group:
                continue
            for j, run_id in enumerate(group[column].dropna()):
                curve = probes[probes["run_id"] == run_id].sort_values("step")
                ax.step(curve["step"], curve["value"], where="post", color=colour, linestyle=style, alpha=0.85,
                        label=f"{_short(defense)} ({kind})" if j == 0 else None)
    ax.set_xlabel("attacker optimizer step")
    ax.set_ylabel("harm probe")
    ax.set_title(f"{task} ({tier}): strongest blind (solid) and adaptive (dashed) attack", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return png_bytes(fig)


def cost_curve(data: Aggregates, task: str, tier: str, model=None) -> bytes | None:
    """The attacker's cost to break each defense on one task: the best (fewest) steps-to-harm found so far against
    the number of attack runs tried, median over seeds. None when the aggregation has no per-trial table."""
    trials = getattr(data, "trials", None)
    if trials is None or trials.empty:
        return None
    trials = _select(trials, task, tier, model)
    if trials.empty:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for i, (defense, group) in enumerate(trials.groupby("defense_label", sort=True)):
        curve = group.groupby("trial")["best_steps_so_far"].median()
        ax.step(curve.index, curve.values, where="post", color=f"C{i % 10}", label=_short(defense))
    ax.set_xlabel("attack runs tried (LR-search probes included)")
    ax.set_ylabel("best steps-to-harm so far")
    ax.set_title(f"{task} ({tier}): attacker cost to break (median over seeds)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return png_bytes(fig)


def _short(label: str, limit: int = 28) -> str:
    label = str(label)
    return label if len(label) <= limit else label[: limit - 1] + "…"

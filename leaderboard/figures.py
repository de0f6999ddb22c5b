"""Leaderboard figures as PNG bytes (matplotlib, Agg): per task group, small multiples of the harm-vs-step curves
(each defense beside ``none``, a shared log-step axis) and the attacker's cost curve (cumulative best harm vs
trials). The ratio forest plot is in :mod:`leaderboard.forest`, the utility-vs-resistance plot in
:mod:`leaderboard.pareto`."""

from __future__ import annotations

import io

import pandas as pd

from leaderboard.aggregate import Aggregates

HARM_CAPTION = ("Harm vs. attacker steps, one panel per defense (blue) beside 'none' (grey), on a shared log-step "
                "axis: each seed's strongest blind (solid) and white-box (dashed) attack run")
FOREST_CAPTION = ("Resistance ratio per defense with its 95% interval over seeds: log scale, arrows where an end is "
                  "open (down to 0 or up to ∞), sorted; colour and label give the verdict: gain (green), tie "
                  "(grey, the interval contains 1), loss (red); defenses broken at release have no ratio and are listed below")
COST_CAPTION = "Attacker cost to break: best steps-to-harm found vs attack runs tried"
PARETO_CAPTION = ("Utility vs. resistance: up and right is better; hollow markers are lower bounds (not harmed within "
                  "budget); the grey line, where drawn, joins the Pareto front. Defenses broken at release are not "
                  "drawn.")


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


def harm_curves(data: Aggregates, group: pd.DataFrame, title: str = "") -> bytes | None:
    """Small multiples of the probe harm curves h(t) of one task group (board rows ``group``): one panel per
    defense, its worst-case runs (one per seed; best blind attack solid, best white-box attack dashed) in colour
    beside ``none``'s in grey, every panel on the same log-step axis (step 0 drawn at the left edge: a symlog axis,
    linear up to the first probed step) and the same harm scale, so no single long run hides the first steps. None
    without attack runs."""
    from leaderboard.groups import group_rows

    if data.seeds.empty or group.empty:
        return None
    seeds = group_rows(data.seeds, group)
    probes = data.metrics[(data.metrics["phase"] == "attack") & (data.metrics["metric"] == "harm")]
    if seeds.empty or probes.empty:
        return None
    probes = probes[probes["run_id"].isin(set(seeds[[c for c in ("blind_run_id", "adaptive_run_id")
                                                     if c in seeds]].stack().dropna()))]
    curves = {run_id: curve.sort_values("step") for run_id, curve in probes.groupby("run_id")}
    positive = probes.loc[probes["step"] > 0, "step"]
    linear_up_to = float(positive.min()) if len(positive) else 1.0  # step 0 and the first probe interval, linear
    last = float(probes["step"].max()) if len(probes) else 1.0
    ticks = [0.0, linear_up_to] + [10.0 ** k for k in range(1, 8) if linear_up_to * 1.5 < 10.0 ** k <= last * 1.5]
    baseline = seeds[seeds["defense_label"] == "none"]
    defenses = [d for d in sorted(seeds["defense_label"].unique()) if d != "none"] or ["none"]
    plt = pyplot()
    columns = min(4, len(defenses))
    rows = -(-len(defenses) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns + 0.6, 2.0 * rows + 0.7), sharex=True,
                             sharey=True, squeeze=False)
    for ax in axes.flat[len(defenses):]:
        ax.set_visible(False)
    for ax, defense in zip(axes.flat, defenses):
        for frame, colour, width in ((baseline, "0.6", 1.0), (seeds[seeds["defense_label"] == defense], "C0", 1.4)):
            if frame is baseline and defense == "none":
                continue
            for column, style in (("blind_run_id", "-"), ("adaptive_run_id", "--")):
                for run_id in frame.get(column, pd.Series(dtype=object)).dropna():
                    curve = curves.get(run_id)
                    if curve is not None:
                        ax.step(curve["step"], curve["value"], where="post", color=colour, linestyle=style,
                                linewidth=width, alpha=0.9)
        ax.set_xscale("symlog", linthresh=linear_up_to, linscale=0.4)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])  # 0, the first probe, then decades: no crowded labels
        ax.set_title(_short(defense, 34), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, linewidth=0.5)
    for ax in axes[-1]:
        ax.set_xlabel("attacker step (log)", fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("harm probe", fontsize=7)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="C0", label="defense"), Line2D([], [], color="0.6", label="none"),
               Line2D([], [], color="k", label="best blind attack"),
               Line2D([], [], color="k", linestyle="--", label="best white-box attack")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=7, frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(f"{title or 'harm vs. attacker steps'}: worst-case runs, one line per seed", fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return png_bytes(fig)


def cost_curve(data: Aggregates, group: pd.DataFrame, title: str = "") -> bytes | None:
    """The attacker's cost to break each defense of one task group (board rows ``group``): the best (fewest)
    steps-to-harm found so far against the number of attack runs tried, median over seeds. None when the
    aggregation has no per-trial table."""
    from leaderboard.groups import group_rows

    trials = getattr(data, "trials", None)
    if trials is None or trials.empty or group.empty:
        return None
    trials = group_rows(trials, group)
    if trials.empty:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for i, (defense, group) in enumerate(trials.groupby("defense_label", sort=True)):
        curve = group.groupby("trial")["best_steps_so_far"].median()
        ax.step(curve.index, curve.values, where="post", color=f"C{i % 10}", label=_short(defense))
    ax.set_xlabel("attack runs tried (LR-search probes included)")
    ax.set_ylabel("best steps-to-harm so far")
    ax.set_title(f"{title}: attacker cost to break (median over seeds)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return png_bytes(fig)


def _short(label: str, limit: int = 28) -> str:
    label = str(label)
    return label if len(label) <= limit else label[: limit - 1] + "…"

"""The short human summary ``bench run`` prints: per defense, the worst case, what it cost, and per-family detail.

Every number comes from :func:`leaderboard.aggregate.build`, the same aggregation the leaderboard shows.
"""

from __future__ import annotations

import pandas as pd

from leaderboard.aggregate import Aggregates, utility_names
from leaderboard.formats import fmt_float, fmt_fraction, fmt_seconds, fmt_steps, pruned_text, ratio_text
from leaderboard.groups import group_rows, task_groups
from leaderboard.ratios import METHOD
from leaderboard.render import family_table, released_note
from leaderboard.utility import task_bound
from leaderboard.variants import mismatch_notes, missing_baseline_note


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _bounded(row: pd.Series, limit: int | str) -> str:
    """The utility-bounded worst case at a utility-drop limit ('': within the task's own bound), '—' when no attack
    run kept that much utility."""
    prefix = f"bounded{limit}"
    if f"{prefix}_median" not in row:
        return "—"
    return fmt_steps(row[f"{prefix}_median"], bool(row[f"{prefix}_median_censored"]), row[f"{prefix}_low"],
                     row[f"{prefix}_high"])


def summary_text(aggregates: Aggregates) -> str:
    """The summary of ``aggregates`` (:func:`leaderboard.aggregate.build` over the runs of one ``bench run``)."""
    runs, board = aggregates.runs, aggregates.board
    if board.empty:
        return "no runs."
    lines = []
    lines += [f"NOTE: {note}" for note in mismatch_notes(board)]
    for title, _, group in task_groups(board):
        task_runs = group_rows(runs, group)
        probe = task_runs["purpose"] == "lr-probe"
        failed = task_runs["status"] != "success"
        n_probes, n_probe_failed = int(probe.sum()), int((probe & failed).sum())
        probes = f" (+{n_probes} LR-search probe runs, {n_probe_failed} failed)" if n_probes else ""
        seeds = sorted(task_runs["seed"].unique().tolist())
        lines.append(f"{title} — {len(task_runs) - n_probes} attack runs, {int((~probe & failed).sum())} "
                     f"failed{probes}; {len(seeds)} seed{'s' if len(seeds) != 1 else ''} {seeds}")
        note = released_note(group)
        if note:
            lines.append(f"WARNING: {note}")
        bound = task_bound(str(group["task"].iloc[0]))
        lines.append(f"utility bound: {bound.describe()}" + (f" ({bound.why})" if bound.why else ""))
        utilities = utility_names(group)
        headers = ["defense", "worst-case steps-to-harm", "by attack", "adaptive worst case", "within utility bound",
                   "vs none", "outcomes H/B/R"]
        headers += [f"retained {u}" for u in utilities] + ["max |Δ out|", "top Hessian eig.", "defense time"]
        rows = []
        for _, r in group.sort_values("defense_label").iterrows():
            row = [str(r["defense_label"]),
                   fmt_steps(r["worst_median"], bool(r["worst_median_censored"]), r["worst_low"], r["worst_high"]),
                   str(r["worst_attack"] or "—"),
                   fmt_steps(r["adaptive_median"], bool(r["adaptive_median_censored"]), r["adaptive_low"],
                             r["adaptive_high"]) if r["adaptive_run"] else "—",
                   _bounded(r, ""),
                   ratio_text(r),
                   f"{int(r['n_harmed'])}/{int(r['n_broken'])}/{int(r['n_resisted'])}"
                   + pruned_text(r.get("n_pruned"))]
            for u in utilities:
                low, high = r.get(f"retained_low:{u}"), r.get(f"retained_high:{u}")
                ci = f" [{fmt_fraction(low)}, {fmt_fraction(high)}]" if pd.notna(low) and pd.notna(high) else ""
                row.append(fmt_fraction(r.get(f"retained_mean:{u}")) + ci)
            row += [fmt_float(r.get("defended_max_abs_diff")), fmt_float(r.get("defended_hessian_top_eig")),
                    fmt_seconds(r.get("defended_defense_seconds"))]
            rows.append(row)
        lines += _table(headers, rows)
        missing = missing_baseline_note(group)
        if missing:
            lines.append(missing)
        families = family_table(task_runs)
        if not families.empty:
            lines.append("")
            lines.append("per attack family (worst case over learning rates and seeds):")
            fam_rows = [[f["defense"], f["family"], family_steps(f), str(f["attack"]),
                         f"{f['harmed']}/{f['broken']}/{f['resisted']}" + pruned_text(f.get("pruned"))]
                        for _, f in families.iterrows()]
            lines += ["  " + x for x in _table(["defense", "family", "steps-to-harm", "best config", "H/B/R"], fam_rows)]
        failed = task_runs[task_runs["status"] != "success"]
        for _, f in failed.head(5).iterrows():
            lines.append(f"FAILED {f['run_id']}: {f['defense_label']} / {f['attack_label']} (see `bench show {f['run_id']}`)")
        lines.append("")
    lines.append("steps-to-harm: attacker steps until harm >= tau while the model stays usable; '> B' = not within "
                 "budget B. vs none: '≥' / '≤' = a bound (the defense / none was not harmed within budget); " + METHOD +
                 " 'broken at release': the defended model was unusable before any attack; no ratio. "
                 "H/B/R = harmed / broken / resisted attack runs; +N pruned: runs stopped once they could no longer "
                 "lower a worst case (every worst case shown is exact; --exhaustive runs them out). "
                 "adaptive worst case: over white-box attacks only. "
                 "within utility bound: the worst case over the attack runs whose attacked model stayed within the "
                 "task's utility bound, printed under the task ('—' = none did). retained: mean over seeds [95% CI "
                 "over seeds; one seed: bootstrap CI over items]. defense time: seconds to apply (train) the defense, mean over seeds.")
    return "\n".join(lines)


def family_steps(family) -> str:
    """A family's worst case; ``≥ s (pruned)`` when it is censored and some of its runs were stopped at the bound
    (their own crossing, if any, lies past ``s``: a bound, not the family's exact figure)."""
    if bool(family["censored"]) and family.get("pruned", 0):
        return f"≥ {int(family['steps'])} (pruned)"
    return fmt_steps(family["steps"], bool(family["censored"]))


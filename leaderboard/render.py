"""Rendering aggregated results: Markdown tables, a static sortable HTML page, and the ``bench run`` summary.

All user-provided strings (plugin names, labels, config values) are escaped in HTML output.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd

from bench.metrics import worst_case
from leaderboard.aggregate import released_already_harmful, utility_names
from leaderboard.sources import source_marker


def _isnan(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def fmt_steps(median: float, censored: bool, low: float = math.nan, high: float = math.nan) -> str:
    """Steps-to-harm with censoring: "> 500" when the defense held to the budget; "[low–high]" over seeds."""
    if _isnan(median):
        return "—"
    text = f"> {median:.0f}" if censored else f"{median:.0f}"
    if not _isnan(low) and not _isnan(high) and low != high:
        text += f" [{low:.0f}–{high:.0f}]"
    return text


def fmt_float(value: Any, digits: int = 3) -> str:
    if _isnan(value):
        return "—"
    value = float(value)
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.{max(digits - 1, 1)}e}"
    return f"{value:.{digits}g}"


def fmt_seconds(value: Any) -> str:
    """A duration: seconds below two minutes, else minutes."""
    if _isnan(value):
        return "—"
    value = float(value)
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def fmt_fraction(value: Any) -> str:
    """Retained utility and similar ratios near 1: three decimals."""
    return "—" if _isnan(value) else f"{float(value):.3f}"


def fmt_ratio(value: float, lower_bound: bool, upper_bound: bool = False) -> str:
    """A resistance ratio with its censoring (:class:`bench.metrics.Ratio`): "≥ 2×" when the defense held to its
    budget, "≤ 0.5×" when ``none`` did, "?" when both did (undetermined)."""
    if _isnan(value):
        return "—"
    if lower_bound and upper_bound:
        return "? (both > budget)"
    return f"{'≥ ' if lower_bound else '≤ ' if upper_bound else ''}{value:.2g}×"


def released_note(group: pd.DataFrame) -> str | None:
    """The line shown above a task's results when its released model was harmful before any attack, or None."""
    harmful = group[group.apply(released_already_harmful, axis=1)] if not group.empty else group
    if harmful.empty:
        return None
    rate = harmful["released_harm"].mean() if "released_harm" in harmful else math.nan
    share = f"{rate:.0%}" if not _isnan(rate) else "?"
    return (f"the released model already complies: {share} of held-out prompts before any attack. It is not a "
            "defense result: runs on a model that complies report steps-to-harm 0, and no resistance ratio is given.")


def ratio_text(row: pd.Series) -> str:
    if released_already_harmful(row):
        return "n/a (released model already harmful)"
    return fmt_ratio(row["ratio"], bool(row["ratio_lower_bound"]), bool(row["ratio_upper_bound"]))


@dataclass(frozen=True)
class Column:
    header: str
    text: Callable[[pd.Series], str]
    sort_value: Callable[[pd.Series], float]
    description: str


def _num(name: str) -> Callable[[pd.Series], float]:
    return lambda r: float(r[name]) if name in r and not _isnan(r[name]) else math.nan


def columns(board: pd.DataFrame) -> list[Column]:
    """The leaderboard's columns (DESIGN §6), including one retained-utility column per utility metric."""
    cols = [
        Column("Defense", lambda r: str(r["defense_label"]) + source_marker(r.get("source")), lambda r: math.nan,
               "defense and its non-default config; [submission: NAME] marks results contributed with `bench submit`"),
        Column("Worst-case steps-to-harm", lambda r: fmt_steps(r["worst_median"], bool(r["worst_median_censored"]), r["worst_low"], r["worst_high"]),
               _num("worst_median"), "fewest attacker steps to usable harm over every attack run (median over seeds, [range]); '> B' = not reached within budget B"),
        Column("Best attack", lambda r: str(r["worst_attack"] or "—"), lambda r: math.nan, "the attack config that achieved the worst case"),
        Column("Adaptive (white-box)", lambda r: fmt_steps(r["adaptive_median"], bool(r["adaptive_median_censored"]), r["adaptive_low"], r["adaptive_high"]) if r["adaptive_run"] else "not run",
               _num("adaptive_median"), "worst case over defense-aware attacks only"),
        Column("Resistance ratio", ratio_text, _num("ratio"),
               "worst-case steps-to-harm / that of 'none' on the same seeds (median over seeds); "
               "'≥' when the defense was never harmed within budget, '≤' when 'none' was not; n/a when the released "
               "model was harmful before any attack"),
        Column("Outcomes H/B/R", lambda r: f"{int(r['n_harmed'])}/{int(r['n_broken'])}/{int(r['n_resisted'])}", _num("n_harmed"),
               "attack runs that harmed / broke the model / were resisted"),
        Column("Max harm AUC", lambda r: fmt_float(r["harm_auc_max"]), _num("harm_auc_max"), "largest mean harm over the budget among attack runs"),
    ]
    for name in utility_names(board):
        key = f"defended_retained:{name}"
        cols.append(Column(
            f"Retained {name}",
            lambda r, n=name, k=key: (fmt_fraction(r[k]) + (f" [{fmt_fraction(r[f'defended_retained_low:{n}'])}, "
                                                             f"{fmt_fraction(r[f'defended_retained_high:{n}'])}]"
                                                             if not _isnan(r.get(f"defended_retained_low:{n}")) else "")),
            _num(key), f"utility of the defended model relative to the released one ({name}), 95% bootstrap CI"))
    cols += [
        Column("Max |Δ output|", lambda r: fmt_float(r.get("defended_max_abs_diff")), _num("defended_max_abs_diff"),
               "largest output change between released and defended model on benign inputs"),
        _divergence_column(board),
        Column("Top Hessian eig.", lambda r: fmt_float(r.get("defended_hessian_top_eig")), _num("defended_hessian_top_eig"),
               "largest Hessian eigenvalue of the harmful loss on the defended model"),
        Column("Params added", lambda r: fmt_float(r.get("defended_params_added"), 6), _num("defended_params_added"), ""),
        Column("Defense time (s)", lambda r: fmt_float(r.get("defended_defense_seconds")), _num("defended_defense_seconds"), ""),
        Column("Seeds", lambda r: str(int(r["seeds"])), _num("seeds"), ""),
        Column("Failed runs", lambda r: str(int(r["n_failed"])), _num("n_failed"), "runs that crashed (kept and counted, never dropped)"),
    ]
    return cols


def _divergence_column(board: pd.DataFrame) -> Column:
    """Function preservation as the task recorded it: mean KL for logits, mean MSE for regression (diffusion)."""
    def recorded(key: str) -> bool:
        return key in board and bool(board[key].notna().any())

    if recorded("defended_mean_mse") and not recorded("defended_mean_kl"):
        key, header, description = "defended_mean_mse", "MSE", "mean squared output error released vs defended"
    else:
        key, header, description = "defended_mean_kl", "KL", "mean KL(released ‖ defended)"
    return Column(header, lambda r: fmt_float(r.get(key)), _num(key), description + " on benign inputs")


def _groups(board: pd.DataFrame):
    for keys, group in board.groupby(["task", "tier", "model"], dropna=False, sort=True):
        task, tier, model = keys
        title = f"{task} ({tier}{', ' + str(model) if not _isnan(model) else ''})"
        yield title, group.sort_values(["worst_median", "defense_label"], ascending=[False, True])


def markdown(board: pd.DataFrame) -> str:
    if board.empty:
        return "_No results yet: run `bench run` first._\n"
    parts = []
    for title, group in _groups(board):
        cols = columns(group)
        parts.append(f"### {title}\n")
        note = released_note(group)
        if note:
            parts.append(f"**Warning: {note}**\n")
        parts.append("| " + " | ".join(c.header for c in cols) + " |")
        parts.append("|" + "|".join("---" for _ in cols) + "|")
        for _, row in group.iterrows():
            parts.append("| " + " | ".join(c.text(row).replace("|", "\\|") for c in cols) + " |")
        parts.append("")
    parts.append("Steps-to-harm counts attacker optimizer steps until harm ≥ τ while the model is still usable; "
                 "'> B' means not reached within the budget. Resistance ratio: '≥' is a lower bound (the defense "
                 "was not harmed within budget), '≤' an upper bound ('none' was not). Outcomes: harmed / broken "
                 "(unusable or diverged without usable harm) / resisted.")
    return "\n".join(parts) + "\n"


def family_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Worst case per (defense, attack family) over learning rates and seeds — shows which recipes fail."""
    rows = []
    ok = runs[(runs["status"] == "success") & (runs["purpose"].fillna("attack") == "attack")].dropna(subset=["steps_to_harm"])
    for (defense, family), group in ok.groupby(["defense_label", "attack_family"], sort=True):
        best = worst_case(group["steps_to_harm"].astype(int).tolist(), group["censored"].fillna(True).astype(bool).tolist(),
                          group["harm_auc"].fillna(0.0).tolist())
        counts = group["outcome"].value_counts()
        rows.append({"defense": defense, "family": family, "steps": best.steps_to_harm, "censored": best.censored,
                     "attack": group.iloc[best.index]["attack_label"], "runs": len(group),
                     "harmed": int(counts.get("harmed", 0)), "broken": int(counts.get("broken", 0)),
                     "resisted": int(counts.get("resisted", 0))})
    return pd.DataFrame(rows)


_SORT_JS = """
document.querySelectorAll('table.board th').forEach((th, i) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
  const key = td => { const v = parseFloat(td.dataset.v); return isNaN(v) ? td.textContent : v; };
  [...body.rows].sort((a, b) => { const x = key(a.cells[i]), y = key(b.cells[i]);
    return (typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y))) * dir; })
    .forEach(r => body.appendChild(r));
}));
"""


def html_page(board: pd.DataFrame, runs: pd.DataFrame, *, title: str = "Training-resistance leaderboard",
              figures: dict[str, str] | None = None) -> str:
    """A self-contained HTML page: one sortable table per task, per-family breakdown, optional embedded figures."""
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>"]
    if board.empty:
        body.append("<p>No results yet: run <code>bench run</code> first.</p>")
    for section, group in _groups(board):
        cols = columns(group)
        body.append(f"<h2>{esc(section)}</h2>")
        note = released_note(group)
        if note:
            body.append(f"<p class='warning'><strong>Warning: {esc(note)}</strong></p>")
        body.append("<table class='board'><thead><tr>")
        body += [f"<th title='{esc(c.description, quote=True)}'>{esc(c.header)}</th>" for c in cols]
        body.append("</tr></thead><tbody>")
        for _, row in group.iterrows():
            cells = []
            for c in cols:
                value = c.sort_value(row)
                data = "" if _isnan(value) else f" data-v='{value!r}'"
                cells.append(f"<td{data}>{esc(c.text(row))}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        body.append("</tbody></table>")
    families = family_table(runs) if not runs.empty else pd.DataFrame()
    if not families.empty:
        body.append("<h2>Per attack family (worst case over learning rates and seeds)</h2><table class='board'><thead><tr>")
        heads = ["Defense", "Family", "Steps-to-harm", "Best config", "Runs", "Harmed", "Broken", "Resisted"]
        body += [f"<th>{h}</th>" for h in heads]
        body.append("</tr></thead><tbody>")
        for _, r in families.iterrows():
            cells = [r["defense"], r["family"], fmt_steps(r["steps"], bool(r["censored"])), r["attack"], r["runs"],
                     r["harmed"], r["broken"], r["resisted"]]
            body.append("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in cells) + "</tr>")
        body.append("</tbody></table>")
    for caption, data_uri in (figures or {}).items():
        body.append(f"<figure><img alt='{esc(caption, quote=True)}' src='{esc(data_uri, quote=True)}'>"
                    f"<figcaption>{esc(caption)}</figcaption></figure>")
    body.append("<p class='note'>Steps-to-harm: attacker optimizer steps until harm ≥ τ while the model is still usable; "
                "'&gt; B' = not reached within budget B. Resistance ratio: '≥' a lower bound (the defense was not "
                "harmed within budget), '≤' an upper bound ('none' was not). Outcomes: harmed / broken / resisted. "
                "Every number comes from the Parquet files under results/.</p>")
    style = ("body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}"
             "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{cursor:pointer;background:#f3f3f3}"
             "td:first-child,th:first-child{text-align:left}.note{color:#555;font-size:90%}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{style}</style></head>"
            f"<body>{''.join(body)}<script>{_SORT_JS}</script></body></html>\n")

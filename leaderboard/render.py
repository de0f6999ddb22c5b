"""Leaderboard tables from the declared schema (``leaderboard/schema.yaml``): the columns of one table bound to its
rows (:func:`columns`), the Markdown leaderboard, and the per-attack-family breakdown. The HTML site
(:mod:`leaderboard.site`) renders the same columns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import pandas as pd

from bench.core.metrics import worst_case
from leaderboard.aggregate import released_already_harmful
from leaderboard.claims import Claim, claims_markdown
from leaderboard.formats import cell_text, isnan, sort_value
from leaderboard.groups import has_values, task_groups, utility_metrics
from leaderboard.ratios import METHOD
from leaderboard.schema import Schema, Table, load_schema
from leaderboard.variants import mismatch_notes, missing_baseline_note


def released_note(group: pd.DataFrame) -> str | None:
    """The line shown above a task's results when its released model was harmful before any attack, or None."""
    harmful = group[group.apply(released_already_harmful, axis=1)] if not group.empty else group
    if harmful.empty:
        return None
    rate = harmful["released_harm"].mean() if "released_harm" in harmful else math.nan
    share = f"{rate:.0%}" if not isnan(rate) else "?"
    return (f"the released model already complies: {share} of held-out prompts before any attack. It is not a "
            "defense result: runs on a model that complies report steps-to-harm 0, and no resistance ratio is given.")



@lru_cache(maxsize=1)
def default_schema() -> Schema:
    """The schema shipped with the package (read once)."""
    return load_schema()


@dataclass(frozen=True)
class Column:
    """A schema column bound to one table: its header, its cell text and sort value for a row."""

    key: str
    header: str
    format: str
    direction: str
    description: str
    fold: bool
    low: str | None = None
    high: str | None = None
    missing: str = "—"

    def text(self, row) -> str:
        text = cell_text(row, self.key, self.format, self.low, self.high)
        return self.missing if text == "—" else text

    def sort_value(self, row) -> float:
        return sort_value(row, self.key, self.format)


def columns(group: pd.DataFrame, table: Table | None = None, *, tasks: list[str] | None = None) -> list[Column]:
    """The columns of ``table`` that ``group`` (one task's board rows, or the overview) has values for.

    ``table`` defaults to the shipped schema's table for the group's task. ``{utility}`` expands to every utility
    metric of the group (all but the primary one folded); ``{task}`` to each of ``tasks`` (the overview).
    """
    if table is None:
        table = default_schema().table_for(str(group["task"].iloc[0]) if "task" in group and len(group) else "")
    utilities = utility_metrics(group, table.primary_utility)
    bound = []
    for spec in table.columns:
        if "{utility}" in spec.key:
            fills = [("utility", u, spec.fold or u != utilities[0]) for u in utilities]
        elif "{task}" in spec.key:
            fills = [("task", t, spec.fold) for t in tasks or []]
        else:
            fills = [(None, None, spec.fold)]
        for name, value, fold in fills:
            fill = (lambda text, name=name, value=value: text.replace("{" + name + "}", value)) if name \
                else (lambda text: text)
            key = fill(spec.key)
            if key not in group.columns or (spec.hide_empty and not has_values(group, key)):
                continue
            if spec.hidden_by and has_values(group, fill(spec.hidden_by)):
                continue
            bound.append(Column(key, fill(spec.name), spec.format, spec.direction, fill(spec.tooltip), fold,
                                fill(spec.low) if spec.low else None, fill(spec.high) if spec.high else None,
                                spec.missing))
    return bound


def sort_rows(group: pd.DataFrame, table: Table) -> pd.DataFrame:
    """``group`` in the table's declared order (rows without a value last; ties by defense label). A defense broken
    at release (:mod:`leaderboard.release`) comes after every usable one, whatever its sort value."""
    key = table.sort.key
    broken = group.get("broken_at_release", pd.Series(False, index=group.index)).fillna(False).astype(bool)
    ordered = group.assign(_broken=broken.values)
    if key not in group.columns:
        return ordered.sort_values(["_broken", "defense_label"]).drop(columns="_broken")
    return ordered.sort_values(["_broken", key, "defense_label"],
                               ascending=[True, table.sort.direction == "lower", True],
                               na_position="last").drop(columns="_broken")


FOOTNOTE = ("Steps-to-harm counts attacker optimizer steps until harm ≥ τ while the model is still usable; "
            "'> B' means not reached within the budget. Resistance ratio: '≥' is a lower bound (the defense "
            "was not harmed within budget), '≤' an upper bound ('none' was not); " + METHOD + " 'broken at "
            "release': the defended model was unusable (below the task's usable floor, or non-finite outputs) "
            "before any attack, so no ratio is computed and it ranks last. Outcomes: harmed / broken "
            "(unusable or diverged without usable harm) / resisted.")


def seeds_text(group: pd.DataFrame) -> str:
    """How many seeds a task's rows ran: ``3 seeds``, or ``1–3 seeds`` when rows differ."""
    seeds = group["seeds"].dropna().astype(int) if "seeds" in group else pd.Series(dtype=int)
    if seeds.empty:
        return "seeds unknown"
    low, high = int(seeds.min()), int(seeds.max())
    return f"{low} seed{'s' if low != 1 else ''}" if low == high else f"{low}–{high} seeds"


def md_cell(text: str) -> str:
    """A Markdown table cell: ``|`` escaped, and ``<`` too, so that no label can open an HTML tag where the Markdown
    is rendered (a defense label is user input); a line break would end the row, so it becomes a space."""
    return " ".join(text.split("\n")).replace("|", "\\|").replace("<", "&lt;")


def markdown(board: pd.DataFrame, schema: Schema | None = None, *, details: bool = False,
             claims: Mapping[str, Claim] | None = None, figures: Mapping[str, str] | None = None,
             tuning: Mapping[str, str] | None = None, tuning_only: Sequence[str] = ()) -> str:
    """One Markdown table per task: the schema's unfolded columns (every column with ``details``); with ``claims``
    (:func:`leaderboard.claims.load_claims`), the ledger entries of the defenses shown follow the tables; with
    ``figures`` (per task title, Markdown: :func:`leaderboard.md_figures.write_figures`), each under its table;
    with ``tuning`` (per task title, :func:`leaderboard.tuning_view.markdown_sections`), the task's budget curves
    and defender tuning after that; ``tuning_only``: sections of tuned tasks without a table, after the tables."""
    if board.empty:
        return "_No results yet: run `bench run` first._\n"
    schema = schema or default_schema()
    parts = overview_markdown(board, schema, claims or {}) if board["task"].nunique() > 1 else []
    parts += [f"**Note: {note}**\n" for note in mismatch_notes(board)]
    for title, task, group in task_groups(board):
        table = schema.table_for(task)
        cols = [c for c in columns(group, table) if details or not c.fold]
        parts.append(f"### {title} — {seeds_text(group)}\n")
        note = released_note(group)
        if note:
            parts.append(f"**Warning: {note}**\n")
        parts.append("| " + " | ".join(c.header for c in cols) + " |")
        parts.append("|" + "|".join("---" for _ in cols) + "|")
        for _, row in sort_rows(group, table).iterrows():
            parts.append("| " + " | ".join(md_cell(c.text(row)) for c in cols) + " |")
        parts.append("")
        missing = missing_baseline_note(group)
        if missing:
            parts += [f"_{missing}_", ""]
        if figures and figures.get(title):
            parts += [figures[title], ""]
        if tuning and tuning.get(title):
            parts += [tuning[title], ""]
    parts += list(tuning_only)
    parts.append(FOOTNOTE + ("" if details else " Detail columns: `--format md --details`, or the HTML site."))
    if claims is not None:
        ledger = claims_markdown(board["defense_label"], claims)
        parts += ["", ledger] if ledger else []
    return "\n".join(parts) + "\n"


OVERVIEW_NOTE = ("Each task cell: resistance ratio against `none` [interval over seeds] and its verdict · worst-case "
                 "steps-to-harm (median [range] over seeds) · retained primary utility (defended / released). '—': "
                 "the defense does not apply to the task (or did not run on it). Rows ranked by the verdict of the "
                 "worst ratio over the tasks each defense ran on (gain, then tie, then loss, then broken at "
                 "release); rows with the same verdict are ties, listed by name.")


def _named_groups(board: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The board's task groups under the names the overview uses (:func:`leaderboard.overview.task_names`)."""
    from leaderboard.overview import task_names

    names = task_names(board)
    return {names[title]: group for title, _, group in task_groups(board)}


def overview_markdown(board: pd.DataFrame, schema: Schema, claims: Mapping[str, Claim]) -> list[str]:
    """The cross-task overview as Markdown lines: one row per defense, one compact cell per task (the same frame
    and ranking as the site's overview page, :func:`leaderboard.overview.overview`)."""
    from leaderboard.formats import defense_name, fmt_fraction, ratio_text
    from leaderboard.overview import overview

    primary = {task: schema.table_for(task).primary_utility for task in board["task"].unique()}
    frame, tasks = overview(board, claims, primary)
    frame = sort_rows(frame, schema.overview)
    seeds = {name: seeds_text(group) for name, group in _named_groups(board).items()}
    headers = [f"{task} ({seeds[task]})" if task in seeds else task for task in tasks]
    lines = ["### Overview\n", "| Defense | Paper's claim | Worst ratio | " + " | ".join(headers) + " |",
             "|" + "|".join("---" for _ in range(3 + len(tasks))) + "|"]
    for row in frame.to_dict("records"):
        cells = []
        for task in tasks:
            if isnan(row.get(f"worst_median@{task}")) and isnan(row.get(f"ratio_verdict@{task}")):
                cells.append("—")
                continue
            steps = cell_text(row, f"worst_median@{task}", "steps")
            cells.append(f"{ratio_text(row, f'ratio@{task}')} · {steps} · {fmt_fraction(row.get(f'retained@{task}'))}")
        lines.append("| " + " | ".join(md_cell(c) for c in [
            defense_name(row), cell_text(row, "claim_status", "text"), ratio_text(row, "worst_ratio"), *cells]) + " |")
    return [*lines, "", OVERVIEW_NOTE, ""]


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
                     "resisted": int(counts.get("resisted", 0)), "pruned": int(counts.get("pruned", 0))})
    return pd.DataFrame(rows)


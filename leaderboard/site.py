"""The leaderboard as one self-contained static folder (``bench leaderboard --format html``).

``index.html`` (the cross-task overview), one page per task (its table, harm curves, the utility-vs-resistance plot,
the attacker's cost curve, sample sheets, the per-family breakdown and the failed runs), one page per defense
(:mod:`leaderboard.defense_page`), the figures under ``img/``, the stylesheet and script under ``assets/`` and the
aggregated table as ``leaderboard.csv``. Nothing is fetched from the network when the pages are viewed.
"""

from __future__ import annotations

import dataclasses
import shutil
from importlib import resources
from pathlib import Path

import pandas as pd

from leaderboard.aggregate import Aggregates
from leaderboard.defense_page import defense_body, first_error_line, read_run_infos
from leaderboard.figures import FOREST_CAPTION, cost_curve, harm_curves
from leaderboard.forest import forest_png
from leaderboard.formats import defense_name, isnan
from leaderboard.html import ASSETS, esc, href, page, short_label, slug, table
from leaderboard.claims import load_claims
from leaderboard.overview import overview
from leaderboard.figures import COST_CAPTION, HARM_CAPTION, PARETO_CAPTION
from leaderboard.pareto import pareto_png, task_points
from leaderboard.render import (FOOTNOTE, Column, columns, default_schema, family_table, group_rows, released_note,
                                sort_rows, task_groups)
from leaderboard.variants import mismatch_notes, missing_baseline_note
from leaderboard.samples import samples_sheets
from leaderboard.schema import Schema

TITLE = "Training-resistance leaderboard"


def build_site(data: Aggregates, results_dir: str | Path, out_dir: str | Path, *, schema: Schema | None = None,
               submissions: str | Path | None = None, title: str = TITLE) -> Path:
    """Write the site for ``data`` (aggregated from ``results_dir`` and the ``submissions`` folder, if any) into
    ``out_dir``; return its ``index.html``."""
    out = Path(out_dir)
    aggregated = data.board  # written unmarked to leaderboard.csv
    data = _marked(data)
    (out / "img").mkdir(parents=True, exist_ok=True)
    (out / "assets").mkdir(exist_ok=True)
    for name in ASSETS:
        with resources.as_file(resources.files("leaderboard") / "assets" / name) as source:
            shutil.copyfile(source, out / "assets" / name)
    schema = schema or default_schema()
    claims = load_claims()
    board, runs = data.board, data.runs
    infos = read_run_infos(runs, results_dir, submissions) if not runs.empty else {}
    labels = sorted(set(map(str, runs.get("defense_label", pd.Series(dtype=str)).dropna())))
    defense_files = {label: slug(label, "defense") + ".html" for label in labels}
    groups = list(task_groups(board)) if not board.empty else []
    task_files = {title_: slug(title_, "task") + ".html" for title_, _, _ in groups}
    nav = [("Overview", "index.html")] + [(t, f) for t, f in task_files.items()]
    footer = (f"Built from {len(runs)} runs in {esc(results_dir)}: every number comes from the Parquet files there "
              "(the aggregated table: <a href='leaderboard.csv'>leaderboard.csv</a>).")

    def write(name: str, heading: str, body: str) -> None:
        (out / name).write_text(page(heading, body, nav=nav, current=name, footer=footer), encoding="utf-8")

    write("index.html", title, _overview_body(title, board, runs, schema, claims, defense_files, task_files))
    wants_samples = any("samples" in schema.table_for(task).plots for _, task, _ in groups)
    sheets = {p.name: p for p in samples_sheets(results_dir, data.seeds, out / "img")} if wants_samples else {}
    for title_, task, group in groups:
        body = _task_body(title_, task, group, data, schema.table_for(task), infos, defense_files, sheets, out)
        write(task_files[title_], f"{title_} — {title}", body)
    for label, name in defense_files.items():
        body = defense_body(label, board, runs, infos, schema, claims, lambda t: task_files.get(t, "index.html"))
        write(name, f"{label} — {title}", body)
    aggregated.to_csv(out / "leaderboard.csv", index=False)
    return out / "index.html"


def _marked(data: Aggregates) -> Aggregates:
    """``data`` with every defense label marked by its source (:func:`leaderboard.formats.defense_name`), so that a
    submitted defense gets its own overview row, page, curve and marker."""
    changes = {}
    for name in ("runs", "seeds", "board", "trials"):
        frame = getattr(data, name, None)
        if isinstance(frame, pd.DataFrame) and not frame.empty and "source" in frame:
            changes[name] = frame.assign(defense_label=[defense_name(r) for r in frame.to_dict("records")])
    return dataclasses.replace(data, **changes)


def _overview_body(title: str, board: pd.DataFrame, runs: pd.DataFrame, schema: Schema, claims,
                   defense_files: dict[str, str], task_files: dict[str, str]) -> str:
    parts = [f"<h1>{esc(title)}</h1>"]
    if board.empty:
        return parts[0] + "<p>No results yet: run <code>bench run</code> first.</p>"
    primary = {task: schema.table_for(task).primary_utility for task in board["task"].unique()}
    frame, tasks = overview(board, claims, primary)
    n_failed = int((runs["status"] != "success").sum())
    parts.append(f"<p class='lead'>{frame.shape[0]} defenses on {len(task_files)} task(s), {len(runs)} runs "
                 f"({n_failed} failed, listed on each task's page). Ranked by the verdict of each defense's worst "
                 "resistance ratio over the tasks it ran on (gain, tie, loss, broken at release; the same verdict "
                 "is a tie, listed by name); click a header to sort, a defense for its claims, config and runs.</p>")
    parts += [f"<p class='warning'>{esc(note)}</p>" for note in mismatch_notes(board)]
    seeds = "; ".join(f"{t}: {_seeds(g)}" for t, _, g in task_groups(board))
    parts.append(f"<p class='note'>Seeds per task: {esc(seeds)}.</p>")
    cols = columns(frame, schema.overview, tasks=tasks)
    frame = sort_rows(frame, schema.overview)
    parts.append(table("overview", cols, frame, links=defense_files.get))
    items = "".join(f"<li><a href='{href(f)}'>{esc(t)}</a></li>" for t, f in task_files.items())
    parts.append(f"<h2>Tasks</h2><ul>{items}</ul><p class='note'>{esc(FOOTNOTE)}</p>")
    return "".join(parts)


def _task_body(title: str, task: str, group: pd.DataFrame, data: Aggregates, spec, infos: dict,
               defense_files: dict[str, str], sheets: dict[str, Path], out: Path) -> str:
    parts = [f"<h1>{esc(title)}</h1>"]
    note = released_note(group)
    if note:
        parts.append(f"<p class='warning'><strong>Warning:</strong> {esc(note)}</p>")
    rows = sort_rows(group, spec)
    parts.append(table("board", columns(group, spec), rows, links=defense_files.get,
                       row_class=lambda r: "failed" if int(r.get("n_failed", 0) or 0) else ""))
    missing = missing_baseline_note(group)
    if missing:
        parts.append(f"<p class='warning'>{esc(missing)}</p>")
    parts.append(f"<p class='note'>{esc(FOOTNOTE)}</p>")
    stem = slug(title, "task")
    figures = []
    for plot in spec.plots:
        if plot == "forest":
            figures.append(_figure(out, f"{stem}-forest.png", forest_png(group, title), FOREST_CAPTION))
        elif plot == "harm_curves":
            figures.append(_figure(out, f"{stem}-harm.png", harm_curves(data, group, title), HARM_CAPTION))
        elif plot == "pareto":
            figures.append(_pareto(out, f"{stem}-pareto.png", title, rows, spec, defense_files))
        elif plot == "cost_curve":
            figures.append(_figure(out, f"{stem}-cost.png", cost_curve(data, group, title), COST_CAPTION))
    parts.append("<div class='plots'>" + "".join(figures) + "</div>")
    tier = group["tier"].iloc[0]
    sheet = sheets.get(f"{task}-{tier}-samples.png".replace("/", "_"))
    if "samples" in spec.plots and sheet:
        parts.append(f"<h2>Samples</h2><figure><img src='img/{href(sheet.name)}' alt='sample sheets'><figcaption>"
                     "Before and after each defense's worst-case attack</figcaption></figure>")
    task_runs = group_rows(data.runs, group)
    parts.append(_families(task_runs, defense_files))
    parts.append(_failed(task_runs, infos, defense_files))
    return "".join(parts)


def _seeds(group: pd.DataFrame) -> str:
    from leaderboard.render import seeds_text

    return seeds_text(group)


def _figure(out: Path, name: str, png: bytes | None, caption: str) -> str:
    if png is None:
        return ""
    (out / "img" / name).write_bytes(png)
    return f"<figure><img src='img/{href(name)}' alt='{esc(caption)}'><figcaption>{esc(caption)}</figcaption></figure>"


def _pareto(out: Path, name: str, title: str, rows: pd.DataFrame, spec, defense_files: dict[str, str]) -> str:
    points, utility = task_points(rows, spec)
    png = pareto_png(points, title=f"{title}: utility vs. resistance", utility=utility) if points else None
    if png is None:
        return ""
    (out / "img" / name).write_bytes(png)
    legend = "".join(
        f"<tr><td>{p.number}</td><td class='text'>{short_label(p.label, link=defense_files.get(p.label))}</td>"
        f"<td>{esc(('> ' if p.censored else '') + ('—' if isnan(p.steps) else f'{p.steps:.0f}'))}</td>"
        f"<td>{esc('—' if isnan(p.utility) else f'{p.utility:.3f}')}</td></tr>" for p in points)
    return (f"<figure><img src='img/{href(name)}' alt='utility vs resistance'><figcaption>{esc(PARETO_CAPTION)}"
            "</figcaption><table class='legend'><thead><tr><th>#</th><th class='text'>Defense</th>"
            f"<th>Steps</th><th>Retained {esc(utility)}</th></tr></thead><tbody>{legend}</tbody></table></figure>")


_FAMILY_COLUMNS = [
    Column("defense", "Defense", "defense", "none", "", False),
    Column("family", "Family", "text", "none", "optimizer family of the attack", False),
    Column("steps", "Steps-to-harm", "steps", "higher", "worst case over learning rates and seeds", False),
    Column("attack", "Best config", "attack", "none", "", False),
    Column("runs", "Runs", "int", "none", "", False),
    Column("harmed", "Harmed", "int", "none", "", False),
    Column("broken", "Broken", "int", "none", "", False),
    Column("resisted", "Resisted", "int", "none", "", False),
]


def _families(task_runs: pd.DataFrame, defense_files: dict[str, str]) -> str:
    families = family_table(task_runs) if not task_runs.empty else pd.DataFrame()
    if families.empty:
        return ""
    families = families.rename(columns={"censored": "steps_censored"})
    return (f"<details><summary>Per attack family: worst case over learning rates and seeds ({len(families)} rows)"
            f"</summary>{table('families', _FAMILY_COLUMNS, families, links=defense_files.get)}</details>")


_FAILED_COLUMNS = [
    Column("defense_label", "Defense", "defense", "none", "", False),
    Column("attack_label", "Attack", "attack", "none", "", False),
    Column("seed", "Seed", "int", "none", "", False),
    Column("run_id", "Run id", "text", "none", "`bench show <run id>` prints its traceback", False),
    Column("error", "Error", "text", "none", "", False),
]


def _failed(task_runs: pd.DataFrame, infos: dict, defense_files: dict[str, str]) -> str:
    failed = task_runs[task_runs["status"] != "success"].copy()
    if failed.empty:
        return "<p class='note'>No failed runs on this task.</p>"
    failed["error"] = [first_error_line(infos.get(r)) or "(no error recorded)" for r in failed["run_id"]]
    return (f"<h2>Failed runs ({len(failed)})</h2><p class='note'>Kept and counted in the table's last column, never "
            "dropped.</p>" + table("failed", _FAILED_COLUMNS, failed, links=defense_files.get,
                                   row_class=lambda r: "failed", wrap=("error",)))

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

from leaderboard import tuning_view
from leaderboard.aggregate import Aggregates
from leaderboard.claims import load_claims
from leaderboard.defense_page import defense_context, first_error_line, read_run_infos
from leaderboard.figures import COST_CAPTION, FOREST_CAPTION, HARM_CAPTION, PARETO_CAPTION, cost_curve, harm_curves
from leaderboard.forest import forest_png
from leaderboard.formats import defense_name, isnan
from leaderboard.groups import group_rows, task_groups
from leaderboard.html import ASSETS, TableView, render, slug, table
from leaderboard.overview import overview
from leaderboard.pareto import pareto_png, task_points
from leaderboard.render import FOOTNOTE, Column, columns, default_schema, family_table, released_note, sort_rows
from leaderboard.samples import samples_sheets
from leaderboard.schema import Schema
from leaderboard.variants import mismatch_notes, missing_baseline_note

TITLE = "Training-resistance leaderboard"


def build_site(data: Aggregates, results_dir: str | Path, out_dir: str | Path, *, schema: Schema | None = None,
               submissions: str | Path | None = None, title: str = TITLE, tuning: str | Path | None = None) -> Path:
    """Write the site for ``data`` (aggregated from ``results_dir`` and the ``submissions`` folder, if any) into
    ``out_dir``; return its ``index.html``. ``tuning``: the results folder whose ``bench tune`` records are shown
    (default ``results_dir``)."""
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
    frame = {"nav": [("Overview", "index.html")] + [(t, f) for t, f in task_files.items()], "n_runs": len(runs),
             "results_dir": str(results_dir)}  # what every page's frame shows (templates/base.html)

    def write(name: str, template: str, heading: str, context: dict) -> None:
        page = render(template, title=heading, current=name, **frame, **context)
        (out / name).write_text(page, encoding="utf-8")

    write("index.html", "overview.html", title, _overview(title, board, runs, schema, claims, defense_files, task_files))
    wants_samples = any("samples" in schema.table_for(task).plots for _, task, _ in groups)
    sheets = {p.name: p for p in samples_sheets(results_dir, data.seeds, out / "img")} if wants_samples else {}
    tunings = tuning_view.load(tuning if tuning is not None else results_dir)  # bench tune's records: budget curves and defender tuning
    tuned = {t: key for key, t in tuning_view.board_titles(tunings, groups).items() if t is not None}
    for title_, task, group in groups:
        context = _task(title_, task, group, data, schema.table_for(task), infos, defense_files, sheets, out)
        context["tuning"] = (tuning_view.site_task(tunings, tuned[title_], title_, out / "img",
                                                   lambda id_, rows: _text_table(id_, rows, defense_files))
                             if title_ in tuned else None)
        write(task_files[title_], "task.html", f"{title_} — {title}", context)
    for label, name in defense_files.items():
        context = defense_context(label, board, runs, infos, schema, claims, lambda t: task_files.get(t, "index.html"))
        context["tuning_lines"] = tuning_view.defense_lines(tunings, label)
        write(name, "defense.html", f"{label} — {title}", context)
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


def _overview(title: str, board: pd.DataFrame, runs: pd.DataFrame, schema: Schema, claims,
              defense_files: dict[str, str], task_files: dict[str, str]) -> dict:
    """What ``overview.html`` shows."""
    if board.empty:
        return {"heading": title, "view": None}
    primary = {task: schema.table_for(task).primary_utility for task in board["task"].unique()}
    frame, tasks = overview(board, claims, primary)
    cols = columns(frame, schema.overview, tasks=tasks)
    return {"heading": title, "n_defenses": frame.shape[0], "n_tasks": len(task_files),
            "n_failed": int((runs["status"] != "success").sum()), "notes": mismatch_notes(board),
            "seeds": "; ".join(f"{t}: {_seeds(g)}" for t, _, g in task_groups(board)),
            "view": table("overview", cols, sort_rows(frame, schema.overview), links=defense_files.get),
            "tasks": list(task_files.items()), "footnote": FOOTNOTE}


def _task(title: str, task: str, group: pd.DataFrame, data: Aggregates, spec, infos: dict,
          defense_files: dict[str, str], sheets: dict[str, Path], out: Path) -> dict:
    """What ``task.html`` shows; writes the task's figures under ``out/img``."""
    rows = sort_rows(group, spec)
    stem = slug(title, "task")
    plots = []
    for plot in spec.plots:
        if plot == "forest":
            plots.append(_figure(out, f"{stem}-forest.png", forest_png(group, title), FOREST_CAPTION))
        elif plot == "harm_curves":
            plots.append(_figure(out, f"{stem}-harm.png", harm_curves(data, group, title), HARM_CAPTION))
        elif plot == "pareto":
            plots.append(_pareto(out, f"{stem}-pareto.png", title, rows, spec, defense_files))
        elif plot == "cost_curve":
            plots.append(_figure(out, f"{stem}-cost.png", cost_curve(data, group, title), COST_CAPTION))
    tier = group["tier"].iloc[0]
    sheet = sheets.get(f"{task}-{tier}-samples.png".replace("/", "_"))
    task_runs = group_rows(data.runs, group)
    return {"heading": title, "released": released_note(group),
            "board": table("board", columns(group, spec), rows, links=defense_files.get,
                           row_class=lambda r: "failed" if int(r.get("n_failed", 0) or 0) else ""),
            "missing_baseline": missing_baseline_note(group), "footnote": FOOTNOTE,
            "plots": [p for p in plots if p is not None],
            "sheet": sheet.name if "samples" in spec.plots and sheet else None,
            "families": _families(task_runs, defense_files), "failed": _failed(task_runs, infos, defense_files)}


def _seeds(group: pd.DataFrame) -> str:
    from leaderboard.render import seeds_text

    return seeds_text(group)


def _figure(out: Path, name: str, png: bytes | None, caption: str) -> dict | None:
    if png is None:
        return None
    (out / "img" / name).write_bytes(png)
    return {"name": name, "caption": caption, "legend": None}


def _pareto(out: Path, name: str, title: str, rows: pd.DataFrame, spec, defense_files: dict[str, str]) -> dict | None:
    points, utility = task_points(rows, spec)
    png = pareto_png(points, title=f"{title}: utility vs. resistance", utility=utility) if points else None
    if png is None:
        return None
    (out / "img" / name).write_bytes(png)
    legend = [{"number": p.number, "label": p.label, "link": defense_files.get(p.label),
               "steps": ("> " if p.censored else "") + ("—" if isnan(p.steps) else f"{p.steps:.0f}"),
               "utility": "—" if isnan(p.utility) else f"{p.utility:.3f}"} for p in points]
    return {"name": name, "caption": PARETO_CAPTION, "legend": legend, "utility": utility}


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


def _families(task_runs: pd.DataFrame, defense_files: dict[str, str]) -> TableView | None:
    families = family_table(task_runs) if not task_runs.empty else pd.DataFrame()
    if families.empty:
        return None
    families = families.rename(columns={"censored": "steps_censored"})
    return table("families", _FAMILY_COLUMNS, families, links=defense_files.get)


def _text_table(table_id: str, rows: pd.DataFrame, defense_files: dict[str, str]) -> TableView:
    """A sortable table of a frame of preformatted text (:mod:`leaderboard.tuning_view`); its Defense column links
    to the defense's page where the site has one."""
    cols = [Column(name, name, "defense" if name == "Defense" else "text", "none", "", False) for name in rows.columns]
    return table(table_id, cols, rows, links=defense_files.get, filter_box=False)


_FAILED_COLUMNS = [
    Column("defense_label", "Defense", "defense", "none", "", False),
    Column("attack_label", "Attack", "attack", "none", "", False),
    Column("seed", "Seed", "int", "none", "", False),
    Column("run_id", "Run id", "text", "none", "`bench show <run id>` prints its traceback", False),
    Column("error", "Error", "text", "none", "", False),
]


def _failed(task_runs: pd.DataFrame, infos: dict, defense_files: dict[str, str]) -> TableView | None:
    failed = task_runs[task_runs["status"] != "success"].copy()
    if failed.empty:
        return None
    failed["error"] = [first_error_line(infos.get(r)) or "(no error recorded)" for r in failed["run_id"]]
    return table("failed", _FAILED_COLUMNS, failed, links=defense_files.get, row_class=lambda r: "failed",
                 wrap=("error",))

"""A defense's page of the leaderboard site: its claims-ledger entry, its configuration, its results on each task,
every attack run against it (failed ones included) and the provenance of those runs (code commit, library versions,
run ids), read from each run's ``run.json``."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import DataError
from bench.run.results import read_run_json
from leaderboard.claims import Claim, claim_of, claim_status, item_label, source_url
from leaderboard.groups import task_groups
from leaderboard.html import table
from leaderboard.render import Column, columns
from leaderboard.schema import Schema
from leaderboard.sources import run_folder

_ARXIV_ID = re.compile(r"^\d{4}\.\d{4,5}(v\d+)?$")

RUN_COLUMNS = [
    Column("task", "Task", "text", "none", "task (tier)", False),
    Column("attack_label", "Attack", "attack", "none", "the attack and its non-default config", False),
    Column("knowledge", "Knowledge", "text", "none", "blind or white-box (adaptive)", False),
    Column("seed", "Seed", "int", "none", "", False),
    Column("status", "Status", "text", "none", "success or failed (failed runs are kept and shown)", False),
    Column("outcome", "Outcome", "text", "none", "harmed / broken / resisted", False),
    Column("steps_to_harm", "Steps-to-harm", "steps", "higher", "'> B': not harmed within budget B", False),
    Column("harm_auc", "Harm AUC", "float", "lower", "mean harm over the budget", False),
    Column("error", "Error", "text", "none", "the error of a failed run (`bench show <run id>` for its traceback)", False),
    Column("purpose", "Purpose", "text", "none", "attack, or lr-probe (LR-search probes stay out of the worst case)", True),
    Column("diverged", "Diverged", "bool", "none", "", True),
    Column("run_id", "Run id", "text", "none", "results/<run id>/ holds run.json and metrics.parquet", True),
]


def read_run_infos(runs: pd.DataFrame, results_dir: str | Path, submissions: str | Path | None) -> dict[str, dict[str, Any]]:
    """``run.json`` of each run: under ``results_dir``, or ``<submissions>/<name>/`` for a run whose ``source`` is
    ``submission:<name>`` (runs without a readable one are left out)."""
    infos = {}
    for run_id, source in zip(runs["run_id"], runs.get("source", pd.Series([None] * len(runs)))):
        try:
            infos[str(run_id)] = read_run_json(run_folder(source, results_dir, submissions) / str(run_id))
        except DataError:
            continue
    return infos


def first_error_line(info: dict[str, Any] | None) -> str:
    error = (info or {}).get("error") or ""
    return str(error).strip().splitlines()[0] if str(error).strip() else ""


def _counted(values) -> str:
    counts = Counter(v for v in values if v not in (None, ""))
    return ", ".join(f"{v} ({n} run{'s' if n != 1 else ''})" for v, n in counts.most_common()) or "not recorded"


def provenance(infos: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(name, value, tooltip) rows: code commits, versions and devices of ``infos``' runs, with run counts."""
    prov = [info.get("provenance") or {} for info in infos]
    rows = [
        ("git commit", _counted(f"{p.get('git_sha') or '?'}{' (dirty)' if p.get('git_dirty') else ''}" for p in prov),
         "the harness's code version each run used (dirty: uncommitted changes)"),
        ("bench version", _counted(p.get("bench_version") for p in prov), ""),
        ("device", _counted(info.get("device") for info in infos), ""),
    ]
    libraries = sorted({name for p in prov for name in (p.get("libraries") or {})})
    rows += [(name, _counted((p.get("libraries") or {}).get(name) for p in prov), "library version") for name in libraries]
    started = sorted(str(info["started_at"]) for info in infos if info.get("started_at"))
    if started:
        rows.append(("started", f"{started[0]} … {started[-1]}", "first and last run start"))
    return rows


def claim_rows(claim: Claim, measured: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """(name, value, tooltip) rows of a claims-ledger entry beside what this benchmark measured: ``measured`` holds,
    per task, (task title, column header, value text) of the claim's ``measured_metric``."""
    quoted = ([("quoted", f"“{claim.quote}” — {claim.source} (read at {claim.read_at or '?'})",
                "the sentence the claim is taken from, and where it was read")] if claim.quote else [])
    return [("claim", claim.claim if claim.claim is not None else "No claim.", "what the paper reports"), *quoted,
            ("setting", claim.setting, "the paper's model, data and attacker"),
            *([(f"measured here: {measured[0][1]}", "; ".join(f"{title}: {value}" for title, _, value in measured),
                f"the leaderboard's {claim.measured_metric} on each task")] if measured else [])]


def _measured(label: str, board: pd.DataFrame, schema: Schema, claims: Mapping[str, Claim]) -> list[tuple[str, str, str]]:
    """(task title, header, value text) of the claim's ``measured_metric`` on every task ``label`` ran on."""
    claim = claim_of(label, claims)
    if claim is None or not claim.measured_metric:
        return []
    found = []
    for title, task, group in task_groups(board[board["defense_label"] == label]):
        for column in columns(group, schema.table_for(task)):
            if column.key == claim.measured_metric:
                found.append((title, column.header, column.text(group.iloc[0])))
    return found


def _results_by_task(rows: pd.DataFrame, schema: Schema, task_link: Callable[[str], str]) -> dict[str, list]:
    """One column per task (title and link), one row per schema column (the union over tasks, in schema order): its
    header, tooltip and, per task, the cell (text, and whether it is an attack label) or None."""
    if rows.empty:
        return {"titles": [], "rows": []}
    cells: dict[str, dict[str, dict[str, Any]]] = {}  # header → task title → cell
    tips: dict[str, str] = {}
    titles = []
    for title, task, group in task_groups(rows):
        titles.append(title)
        for column in columns(group, schema.table_for(task)):
            if column.key != "defense_label":
                cells.setdefault(column.header, {})[title] = {"text": column.text(group.iloc[0]),
                                                              "attack": column.format == "attack"}
                tips.setdefault(column.header, column.description)
    return {"titles": [(t, task_link(t)) for t in titles],
            "rows": [(name, tips[name], [values.get(t) for t in titles]) for name, values in cells.items()]}


def defense_context(label: str, board: pd.DataFrame, runs: pd.DataFrame, infos: dict[str, dict[str, Any]],
                    schema: Schema, claims: Mapping[str, Claim], task_link: Callable[[str], str]) -> dict[str, Any]:
    """What ``defense.html`` shows for one defense label."""
    mine = runs[runs["defense_label"] == label].copy()
    claim = claim_of(label, claims)
    configs = Counter(json.dumps((infos.get(r) or {}).get("spec", {}).get("defense", "not recorded"), indent=1,
                                 sort_keys=True) for r in mine["run_id"])
    mine["error"] = [first_error_line(infos.get(r)) for r in mine["run_id"]]
    mine["steps_to_harm_censored"] = mine["censored"] if "censored" in mine else False
    mine = mine.sort_values(["task", "status", "steps_to_harm"], na_position="last")
    return {"label": label, "n_runs_here": len(mine), "n_tasks": mine["task"].nunique(),
            "n_failed": int((mine["status"] != "success").sum()),
            "claim": claim, "claim_status": claim_status, "item_label": item_label, "source_url": source_url,
            "arxiv_link": bool(claim and claim.arxiv and _ARXIV_ID.match(str(claim.arxiv))),
            "claim_rows": claim_rows(claim, _measured(label, board, schema, claims)) if claim else [],
            "measured": _results_by_task(board[board["defense_label"] == label], schema, task_link),
            "configs": configs.most_common(),
            "runs": table("runs", RUN_COLUMNS, mine, row_class=lambda r: "failed" if r["status"] != "success" else "",
                          wrap=("error",)),
            "provenance": provenance([infos[r] for r in mine["run_id"] if r in infos])}

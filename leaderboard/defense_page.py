"""A defense's page of the leaderboard site: its claims-ledger entry, its configuration, its results on each task,
every attack run against it (failed ones included) and the provenance of those runs (code commit, library versions,
run ids), read from each run's ``run.json``."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from bench.errors import DataError
from bench.results import read_run_json
from leaderboard.html import esc, href, key_values, short_label, table
from leaderboard.claims import Claim, claim_of, claim_status, item_label, source_url
from leaderboard.render import Column, columns, task_groups
from leaderboard.schema import Schema
from leaderboard.sources import SUBMISSION_PREFIX

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
        folder = Path(results_dir)
        if submissions is not None and isinstance(source, str) and source.startswith(SUBMISSION_PREFIX):
            folder = Path(submissions) / source.removeprefix(SUBMISSION_PREFIX)
        try:
            infos[str(run_id)] = read_run_json(folder / str(run_id))
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


def claim_html(label: str, claims: Mapping[str, Claim], measured: list[tuple[str, str, str]]) -> str:
    """The claims-ledger entry of ``label``'s defense beside what this benchmark measured: ``measured`` holds, per
    task, (task title, column header, value text) of the claim's ``measured_metric``."""
    claim = claim_of(label, claims)
    if claim is None:
        return (f"<p class='note'>No claims-ledger entry for {esc(label)} (leaderboard/claims/; composed defenses "
                "and plugins have none).</p>")
    arxiv = claim.arxiv
    link = (f" <a href='https://arxiv.org/abs/{esc(arxiv)}'>arXiv {esc(arxiv)}</a>" if arxiv and _ARXIV_ID.match(str(arxiv))
            else f" arXiv {esc(arxiv)}" if arxiv else "")
    status = claim_status(claim)
    css = "broken" if claim.known_broken else "status"
    quoted = ([("quoted", f"“{claim.quote}” — {claim.source} (read at {claim.read_at or '?'})",
                "the sentence the claim is taken from, and where it was read")] if claim.quote else [])
    parts = [f"<p><strong>{esc(claim.paper)}</strong>{link} <span class='{css}'>{esc(status)}</span></p>",
             key_values([("claim", claim.claim if claim.claim is not None else "No claim.", "what the paper reports"),
                         *quoted,
                         ("setting", claim.setting, "the paper's model, data and attacker"),
                         *([(f"measured here: {measured[0][1]}",
                               "; ".join(f"{title}: {value}" for title, _, value in measured),
                               f"the leaderboard's {claim.measured_metric} on each task")] if measured else [])])]
    if claim.items:
        items = "".join(
            f"<li><strong>{esc(item_label(item))}</strong>: {esc(item.summary)} <q>{esc(item.quote)}</q> — "
            f"{_source(item.source)} <span class='note'>(read at {esc(item.read_at)})</span>"
            + (f" <span class='note'>{esc(item.note)}</span>" if item.note else "") + "</li>" for item in claim.items)
        parts.append("<h3>What others found, and the paper's own limits</h3>"
                     "<p class='note'>The status counts verified items about this method; unverified items and "
                     f"items about a variant are shown but not counted.</p><ul>{items}</ul>")
    return "".join(parts)


def _source(source: str) -> str:
    url = source_url(source)
    return f"<a href='{esc(url)}'>{esc(source)}</a>" if url else esc(source)


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


def _results_by_task(rows: pd.DataFrame, schema: Schema, task_link: Callable[[str], str]) -> str:
    """One column per task, one row per schema column (the union over tasks, in schema order)."""
    if rows.empty:
        return "<p class='note'>No aggregated results (every run failed or none ran).</p>"
    cells: dict[str, dict[str, str]] = {}  # header → task title → cell HTML
    tips: dict[str, str] = {}
    titles = []
    for title, task, group in task_groups(rows):
        titles.append(title)
        for column in columns(group, schema.table_for(task)):
            if column.key != "defense_label":
                text = column.text(group.iloc[0])
                cells.setdefault(column.header, {})[title] = (short_label(text) if column.format == "attack"
                                                              else esc(text))
                tips.setdefault(column.header, column.description)
    heads = "".join(f"<th scope='col'><a href='{href(task_link(t))}'>{esc(t)}</a></th>" for t in titles)
    body = "".join(f"<tr><th scope='row' title='{esc(tips[name])}'>{esc(name)}</th>"
                   + "".join(f"<td>{values.get(t, '—')}</td>" for t in titles) + "</tr>"
                   for name, values in cells.items())
    return (f"<h2>Measured here</h2><div class='table-wrap'><table class='kv'><thead><tr><th></th>{heads}</tr>"
            f"</thead><tbody>{body}</tbody></table></div>")


def defense_body(label: str, board: pd.DataFrame, runs: pd.DataFrame, infos: dict[str, dict[str, Any]],
                 schema: Schema, claims: Mapping[str, Claim], task_link: Callable[[str], str]) -> str:
    """The page body for one defense label."""
    mine = runs[runs["defense_label"] == label].copy()
    parts = [f"<h1>{esc(label)}</h1>",
             f"<p class='lead'>{len(mine)} runs on {mine['task'].nunique()} task(s); "
             f"{int((mine['status'] != 'success').sum())} failed.</p>",
             "<h2>The paper's claim</h2>", claim_html(label, claims, _measured(label, board, schema, claims))]
    parts.append(_results_by_task(board[board["defense_label"] == label], schema, task_link))
    parts.append("<h2>Configuration</h2>")
    configs = Counter(json.dumps((infos.get(r) or {}).get("spec", {}).get("defense", "not recorded"), indent=1,
                                 sort_keys=True) for r in mine["run_id"])
    for text, n in configs.most_common():
        parts.append(f"<p class='note'>{n} run{'s' if n != 1 else ''}:</p><pre>{esc(text)}</pre>")
    mine["error"] = [first_error_line(infos.get(r)) for r in mine["run_id"]]
    mine["steps_to_harm_censored"] = mine["censored"] if "censored" in mine else False
    mine = mine.sort_values(["task", "status", "steps_to_harm"], na_position="last")
    parts.append("<h2>Every attack run</h2>")
    parts.append(table("runs", RUN_COLUMNS, mine, row_class=lambda r: "failed" if r["status"] != "success" else "",
                       wrap=("error",)))
    parts.append("<h2>Provenance</h2>")
    parts.append(key_values(provenance([infos[r] for r in mine["run_id"] if r in infos])))
    return "".join(parts)

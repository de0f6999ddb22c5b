"""The defender budget each leaderboard row ran at (issue 21: "the leaderboard row uses the best budget within a
declared cost cap, and says which").

Per board row: the defense's forward-backward passes as its training report recorded them in each seed's
``run.json`` (``defense_report.info.fb_passes``, written by every trained defense, :mod:`defenses._trained`; mean
over seeds), and, when the row's defense is a preset written from a budget curve (``bench tune --budgets ...
--write-preset``), the factor of today's default training length it trains at, from the preset record
(:mod:`bench.core.tuning_presets`: ``budget_factor``, chosen within the cost cap
:data:`bench.run.tuning_record.COST_CAP`). Defenses that do not train report no passes and show none.

One ``run.json`` is read per seed (its first readable successful run): every run of a seed shares its defended
model.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.core.tuning_presets import preset_record
from bench.errors import DataError
from bench.run.results import read_run_json
from leaderboard.sources import run_folder

PASSES = "defender_passes"
"""Board column: mean forward-backward passes of the defense's training over seeds (NaN: it does not train)."""
BUDGET = "defender_budget"
"""Board column: the passes as text, with the budget-curve factor where the row's preset records one."""


def seed_passes(runs: pd.DataFrame, keys: list[str], results_dir: str | Path,
                submissions: str | Path | None = None) -> pd.DataFrame:
    """``keys`` (a seed's identity) plus ``fb_passes`` for every seed group of ``runs`` (NaN where no run recorded
    any: an untrained defense, or no readable ``run.json``)."""
    rows = []
    ok = runs[runs["status"] == "success"] if "status" in runs else runs
    for values, group in ok.groupby(keys, dropna=False, sort=False):
        passes = math.nan
        for run_id, source in zip(group["run_id"], group.get("source", pd.Series([None] * len(group)))):
            try:
                report = read_run_json(run_folder(source, results_dir, submissions) / str(run_id)).get("defense_report")
            except DataError:
                continue
            # a successful run built its seed's defended stage: its report is the seed's (one read per seed)
            value = ((report or {}).get("info") or {}).get("fb_passes")
            passes = float(value) if isinstance(value, (int, float)) else math.nan
            break
        rows.append({**dict(zip(keys, values)), "fb_passes": passes})
    return pd.DataFrame(rows, columns=[*keys, "fb_passes"])


def budget_text(passes: float, label: str, task: str) -> str:
    """``1,600 passes``, and ``(4× default)`` when ``label`` is a budget-curve preset (``(4× default on T)`` when it
    was measured on another task than ``task``); "—" without passes."""
    if passes is None or math.isnan(passes):
        return "—"
    text = f"{passes:,.0f} passes"
    record = preset_record(str(label).split("(", 1)[0].split(" [", 1)[0]) or {}
    factor = record.get("budget_factor")
    if isinstance(factor, (int, float)):
        where = "" if record.get("task") in (None, task) else f" on {record['task']}"
        text += f" ({factor:g}× default{where}, budget curve)"
    return text


def _key(values) -> tuple:
    """A row's identity with every missing value as None (None, NaN and pandas' NA alike)."""
    return tuple(None if v is None or (not isinstance(v, str) and pd.isna(v)) else v for v in values)


def annotate(board: pd.DataFrame, runs: pd.DataFrame, defense_keys: list[str], results_dir: str | Path,
             submissions: str | Path | None = None) -> pd.DataFrame:
    """``board`` with :data:`PASSES` and :data:`BUDGET` per row (rows keyed by ``defense_keys``)."""
    if board.empty:
        return board
    per_seed = seed_passes(runs, [*defense_keys, "seed"], results_dir, submissions)
    found: dict[tuple, list[float]] = {}
    for values in per_seed.to_dict("records"):
        if not math.isnan(values["fb_passes"]):
            found.setdefault(_key(values[k] for k in defense_keys), []).append(values["fb_passes"])
    out = board.copy()
    keys = [_key(r) for r in out[defense_keys].itertuples(index=False)]
    out[PASSES] = [sum(found[k]) / len(found[k]) if k in found else math.nan for k in keys]
    out[BUDGET] = [budget_text(p, label, task) if not math.isnan(p) else math.nan
                   for p, label, task in zip(out[PASSES], out["defense_label"], out["task"])]
    return out

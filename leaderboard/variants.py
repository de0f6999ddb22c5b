"""Runs of one task made under different task settings or attack suites are different experiments (issue 22.6).

The aggregation keys every worst case and ratio by ``(task, tier, model, task_settings, suite)``
(:data:`leaderboard.aggregate.TASK_KEYS`): a defense attacked with an ad-hoc ``--attack`` set, or on a task whose
budget or threshold was changed, is never pooled with, nor compared against, runs of the default suite and settings.
Here: the title of such a group (its settings as the values that differ from the task's defaults, its suite when
not the default) and the message shown where one task ran under several.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

DEFAULT_SUITE = "default"


def settings_diff(task: str, settings: str) -> str:
    """The task settings (canonical JSON of the resolved config) as ``k=v`` pairs that differ from the task's
    defaults (its preset's, for ``task.preset``); ``""`` when they are the defaults or were not recorded; a short
    hash when the task is not registered here (a submission's plugin task)."""
    if not isinstance(settings, str) or not settings:
        return ""
    try:
        values = json.loads(settings)
    except json.JSONDecodeError:
        return settings[:40]
    defaults = _defaults(task)
    if defaults is None:
        import hashlib

        return f"settings {hashlib.sha256(settings.encode()).hexdigest()[:8]}"
    changed = {k: v for k, v in sorted(values.items()) if _norm(defaults.get(k)) != _norm(v)}
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in changed.items())


def _defaults(task: str) -> dict[str, Any] | None:
    from bench.config import build_config, config_to_dict
    from bench.errors import BenchError
    from bench.registry import TASKS

    try:
        resolved = TASKS.resolve(task)
        cfg = build_config(resolved.cls.Config, dict(resolved.preset_args), where=f"task {task!r}")
    except (BenchError, KeyError, TypeError, ValueError):
        return None
    return json.loads(json.dumps(config_to_dict(cfg), sort_keys=True, default=str))


def _norm(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def variant_text(task: str, settings: str, suite: str) -> str:
    """``""`` for the task's defaults under the default suite; else e.g. ``budget=30 · suite full-ft(lr=0.01)``."""
    parts = [settings_diff(task, settings)]
    if isinstance(suite, str) and suite and suite != DEFAULT_SUITE:
        parts.append(f"suite {suite}")
    return " · ".join(p for p in parts if p)


def mismatch_notes(board: pd.DataFrame) -> list[str]:
    """One message per (task, tier, model) that ran under more than one (task settings, suite): their rows are
    shown in separate tables, each with its own worst case and ratios."""
    notes = []
    if board.empty or "suite" not in board:
        return notes
    for (task, tier), group in board.groupby(["task", "tier"], sort=True):
        variants = group[["task_settings", "suite"]].drop_duplicates()
        if len(variants) > 1:
            shown = "; ".join(variant_text(task, s, u) or "default settings and suite" for s, u in
                              variants.itertuples(index=False))
            notes.append(f"{task} ({tier}) ran under {len(variants)} different task settings / attack suites in this "
                         f"folder ({shown}): each has its own table, worst case and ratios; they are never pooled.")
    return notes


def missing_baseline_note(group: pd.DataFrame) -> str | None:
    """The line shown under a table whose rows have no ``none`` run under the same settings and suite (no ratio)."""
    if group.empty or (group["defense_label"].astype(str) == "none").any():
        return None
    return ("No 'none' runs under these task settings and attack suite: no resistance ratio can be computed (run "
            "the same request with the baseline, e.g. `bench run` without --no-baseline).")

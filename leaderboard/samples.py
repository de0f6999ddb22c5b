"""One samples sheet per task: each defense's worst-case attack run, before and after, stacked into a PNG.

Runs of tasks that preview samples (e.g. text-to-image) write ``<run>/samples.png``; this picks, per defense
config, the run that decided the attacker's worst case (lowest seed) and stacks those sheets, so one picture shows
what the attack did to each defense's model.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.run.results import SAMPLES_PNG
from bench.toolkit.images import stack_pngs
from leaderboard.formats import fmt_steps


def samples_sheets(results_dir: str | Path, seeds: pd.DataFrame, out_dir: str | Path | None = None) -> list[Path]:
    """Write ``<out_dir>/<task>-<tier>-samples.png`` for every task with previewed runs; return their paths.

    ``seeds`` is the per-seed table of :func:`leaderboard.aggregate.build` over runs under ``results_dir``;
    ``out_dir`` defaults to ``results_dir``.
    """
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir
    written = []
    if seeds.empty:
        return written
    for (task, tier), group in seeds.groupby(["task", "tier"], sort=True):
        sheets = []
        for defense, rows in group.sort_values("seed").groupby("defense_label", sort=False):
            first = rows.iloc[0]
            run_id = first["worst_run_id"]
            path = results_dir / str(run_id) / SAMPLES_PNG if run_id else None
            if path is None or not path.is_file():
                continue
            steps = fmt_steps(first["worst_steps"], bool(first["worst_censored"]))
            sheets.append((f"{defense} (seed {first['seed']}): worst case {first['worst_attack']}, "
                           f"steps-to-harm {steps}", path))
        if sheets:
            name = f"{task}-{tier}-samples.png".replace("/", "_")
            written.append(stack_pngs(sorted(sheets, key=lambda s: not s[0].startswith("none ")),
                                      out_dir / name))
    return written


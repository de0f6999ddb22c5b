"""Where leaderboard rows come from: the local results folder and the submissions ``bench submit`` copied in.

:func:`load_all` reads the long-format metrics of a results folder (``source`` = ``results``) and of every
``<submissions>/<name>/`` folder (``source`` = ``submission:<name>``) into one table. A run id hashes a run's resolved
spec, so a submitted run whose id was already read is the same experiment: the first read wins (the results folder,
then the submissions in name order) and no run counts twice. The aggregation keeps ``source`` as part of a board
row's identity (:data:`leaderboard.aggregate.DEFENSE_KEYS`), and the renderers mark submitted rows
(:func:`source_marker`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from bench.run.results import read_metrics, run_directories

RESULTS_SOURCE = "results"
SUBMISSION_PREFIX = "submission:"


def default_submissions_dir() -> Path:
    """``leaderboard/submissions`` of this checkout: where ``bench submit`` copies a folder for review as a PR."""
    return Path(__file__).resolve().parent / "submissions"


def submission_source(name: str) -> str:
    return f"{SUBMISSION_PREFIX}{name}"


def submissions(submissions_dir: str | Path) -> list[tuple[str, Path]]:
    """``(name, folder)`` of every submission (a sub-folder holding run directories), in name order."""
    root = Path(submissions_dir)
    if not root.is_dir():
        return []
    return [(p.name, p) for p in sorted(root.iterdir()) if p.is_dir() and run_directories(p)]


def load_all(results_dir: str | Path, submissions_dir: str | Path | None = None, *,
             run_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """The metrics of ``results_dir`` and of every submission under ``submissions_dir``, with a ``source`` column.

    ``run_ids`` keeps only those runs (of any source). See the module docstring for runs read twice.
    """
    frames = []
    seen: set[str] = set()
    folders = [(RESULTS_SOURCE, Path(results_dir))]
    if submissions_dir is not None:
        folders += [(submission_source(name), folder) for name, folder in submissions(submissions_dir)]
    for source, folder in folders:
        df = read_metrics(folder).to_pandas()
        df = df[~df["run_id"].isin(seen)]
        seen.update(df["run_id"].unique())
        frames.append(df.assign(source=source))
    metrics = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if run_ids is not None:
        metrics = metrics[metrics["run_id"].isin(set(run_ids))]
    return metrics


def run_folder(source: object, results_dir: str | Path, submissions_dir: str | Path | None) -> Path:
    """The folder holding a run of ``source``: ``results_dir``, or ``<submissions_dir>/<name>/`` for
    ``submission:<name>``."""
    if submissions_dir is not None and isinstance(source, str) and source.startswith(SUBMISSION_PREFIX):
        return Path(submissions_dir) / source.removeprefix(SUBMISSION_PREFIX)
    return Path(results_dir)


def source_marker(source: object) -> str:
    """The text shown after a defense label: ``""`` for local results, `` [submission: NAME]`` for a submission."""
    if isinstance(source, str) and source.startswith(SUBMISSION_PREFIX):
        return f" [submission: {source.removeprefix(SUBMISSION_PREFIX)}]"
    return ""

"""Writing a results folder's leaderboard files: the one call ``bench compare`` (and any script) makes.

:func:`write_outputs` renders what ``bench leaderboard`` renders for the same folder — the static site
(:func:`leaderboard.site.build_site`: overview, task and defense pages, figures) and the aggregated table as
Parquet — into one output folder, so callers do not depend on how the leaderboard command lays its files out.
"""

from __future__ import annotations

from pathlib import Path

from bench.errors import DataError

INDEX_NAME = "index.html"
TABLE_NAME = "leaderboard.parquet"


def write_outputs(results_dir: str | Path, out_dir: str | Path, *, official_only: bool = False,
                  sources: str | Path | None = None) -> list[Path]:
    """Render the leaderboard of every run under ``results_dir`` into ``out_dir``; return the site's index page and
    the table written.

    ``sources``: a submissions folder read too (:func:`leaderboard.aggregate.build`). Raises DataError when there
    is no run to show.
    """
    from leaderboard.aggregate import build
    from leaderboard.site import build_site

    results_dir, out_dir = Path(results_dir), Path(out_dir)
    data = build(results_dir, official_only=official_only, sources=sources)
    if data.runs.empty:
        raise DataError(f"no runs found in {results_dir}; `bench run --results {results_dir}` writes them")
    index = build_site(data, results_dir, out_dir, submissions=sources)
    table_path = out_dir / TABLE_NAME
    data.board.to_parquet(table_path, index=False)
    return [index, table_path]

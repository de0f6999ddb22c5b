"""Writing a results folder's leaderboard files: the one call ``bench compare`` (and any script) makes.

:func:`write_outputs` renders what ``bench leaderboard`` renders for the same folder — the self-contained HTML page
(tables, harm curves, the utility-vs-resistance plot, sample sheets) and the aggregated table as Parquet — into one
output folder, so callers do not depend on how the leaderboard command lays its files out.
"""

from __future__ import annotations

from pathlib import Path

from bench.errors import DataError

HTML_NAME = "leaderboard.html"
TABLE_NAME = "leaderboard.parquet"


def write_outputs(results_dir: str | Path, out_dir: str | Path, *, official_only: bool = False,
                  sources: str | Path | None = None) -> list[Path]:
    """Render the leaderboard of every run under ``results_dir`` into ``out_dir``; return the files written.

    ``sources``: a submissions folder read too (:func:`leaderboard.aggregate.build`). Raises DataError when there
    is no run to show.
    """
    from leaderboard.aggregate import build
    from leaderboard.figures import harm_curves, pareto
    from leaderboard.render import html_page
    from leaderboard.samples import sample_figures

    results_dir, out_dir = Path(results_dir), Path(out_dir)
    data = build(results_dir, official_only=official_only, sources=sources)
    if data.runs.empty:
        raise DataError(f"no runs found in {results_dir}; `bench run --results {results_dir}` writes them")
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, table_path = out_dir / HTML_NAME, out_dir / TABLE_NAME
    figures = {**harm_curves(data), **pareto(data), **sample_figures(results_dir, data.seeds)}
    html_path.write_text(html_page(data.board, data.runs, figures=figures))
    data.board.to_parquet(table_path, index=False)
    return [html_path, table_path]

"""``bench leaderboard``: aggregate every run under a results directory into Markdown, HTML and a table file."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("leaderboard", help="build the leaderboard from result files")
    p.add_argument("--results", default="results", help="results directory (default: results)")
    p.add_argument("--html", metavar="FILE", help="HTML output (default: <results>/leaderboard.html)")
    p.add_argument("--table", metavar="FILE", help="aggregated table, .csv or .parquet (default: <results>/leaderboard.parquet)")
    p.add_argument("--official", action="store_true", help="only runs not marked --dev")
    p.add_argument("--submissions", metavar="DIR",
                   help="folder of submitted results shown too, marked [submission: NAME] (default: "
                        "leaderboard/submissions of this checkout, when it exists)")
    return p


def main(args: argparse.Namespace) -> int:
    from bench.errors import DataError
    from leaderboard.aggregate import build
    from leaderboard.figures import harm_curves, pareto
    from leaderboard.render import html_page, markdown
    from leaderboard.samples import sample_figures
    from leaderboard.sources import default_submissions_dir

    results = Path(args.results)
    if not results.is_dir():
        raise DataError(f"results directory {results} does not exist (run `bench run` first)")
    submissions = Path(args.submissions) if args.submissions else default_submissions_dir()
    if args.submissions and not submissions.is_dir():
        raise DataError(f"submissions folder {submissions} does not exist")
    data = build(results, official_only=args.official, sources=submissions if submissions.is_dir() else None)
    if data.runs.empty:
        hint = " (runs made with --dev are left out by --official)" if args.official else ""
        raise DataError(f"no {'official ' if args.official else ''}runs found in {results}{hint}; "
                        f"`bench run --results {results}` writes them")
    board = data.board
    print(markdown(board), end="")
    html_path = Path(args.html) if args.html else results / "leaderboard.html"
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(html_page(board, data.runs, figures={**harm_curves(data), **pareto(data),
                                                                        **sample_figures(results, data.seeds)}))
    table_path = Path(args.table) if args.table else results / "leaderboard.parquet"
    if table_path.suffix == ".csv":
        board.to_csv(table_path, index=False)
    else:
        board.to_parquet(table_path, index=False)
    print(f"\nwrote {html_path} and {table_path}")
    return 0

"""``bench leaderboard``: aggregate every run under a results directory into a static site, Markdown or a table file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.cli import flags

EPILOG = """examples:
  bench leaderboard                                   # the site in results/site/ (open index.html); Markdown to stdout
  bench leaderboard --results runs --out /tmp/site    # the site elsewhere (nothing written under runs/)
  bench leaderboard --format md --details > board.md  # Markdown with the detail columns
  bench leaderboard --format md --out docs/board.md   # Markdown and its figures (docs/board-figures/)
  bench leaderboard --sweep grid.yaml --format md     # only the runs of one sweep file
  bench leaderboard --format csv --out board.csv      # the aggregated table (also: --format parquet)
  bench leaderboard --tuning results-tune --format md --out docs/board.md   # budget curves recorded elsewhere
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("leaderboard", help="build the leaderboard from result files", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    flags.results(p, written=False)
    p.add_argument("--format", choices=("html", "md", "csv", "parquet"), default="html",
                   help="html: a static site folder (default); md: Markdown; csv/parquet: the aggregated table")
    p.add_argument("--out", metavar="PATH", help="html: the site folder (default: <results>/site); md: a file, "
                   "its figures in a folder beside it, FILE-figures/ (default: stdout only, no figures); "
                   "csv/parquet: the file (default: <results>/leaderboard.<format>)")
    p.add_argument("--details", action="store_true", help="Markdown: include the detail columns the site folds")
    p.add_argument("--schema", metavar="FILE", help="leaderboard schema YAML (default: the shipped leaderboard/schema.yaml)")
    p.add_argument("--official", action="store_true", help="only runs not marked --dev")
    p.add_argument("--sweep", metavar="YAML", help="only the runs of this sweep file (the ones it planned and the "
                   "ones it chose from their results), not everything else the results folder holds")
    p.add_argument("--submissions", metavar="DIR",
                   help="folder of submitted results shown too, marked [submission: NAME] (default: "
                        "leaderboard/submissions of this checkout, when it exists)")
    p.add_argument("--tuning", metavar="DIR", help="results folder whose tuning/ records (bench tune: budget curves, "
                   "defender tuning) are shown under the task tables (default: --results)")
    p.add_argument("--html", metavar="FILE", help=argparse.SUPPRESS)  # replaced by --format html --out DIR
    p.add_argument("--table", metavar="FILE", help=argparse.SUPPRESS)  # deprecated: --format csv|parquet --out FILE
    return p


def main(args: argparse.Namespace) -> int:
    from bench.errors import ConfigError, DataError
    from leaderboard import tuning_view
    from leaderboard.aggregate import build
    from leaderboard.claims import load_claims
    from leaderboard.groups import task_groups
    from leaderboard.render import default_schema, markdown
    from leaderboard.schema import load_schema
    from leaderboard.sources import default_submissions_dir

    if args.html:
        raise ConfigError("--html FILE was replaced by `--format html --out DIR`: the leaderboard is now a folder "
                          "of pages (open DIR/index.html)")
    schema = load_schema(args.schema) if args.schema else default_schema()
    results = Path(args.results)
    if not results.is_dir():
        raise DataError(f"results directory {results} does not exist (run `bench run` first)")
    folder = Path(args.submissions) if args.submissions else default_submissions_dir()
    if args.submissions and not folder.is_dir():
        raise DataError(f"submissions folder {folder} does not exist")
    submissions = folder if folder.is_dir() else None
    run_ids = None
    if args.sweep:
        from bench.exec.sweep_run import sweep_run_ids
        from bench.plan.sweep import plan_file

        run_ids, missing = sweep_run_ids(plan_file(args.sweep), results)
        if missing:
            print(f"bench leaderboard: {missing} run(s) of {args.sweep} are not in {results} yet (and whatever they "
                  f"lead to): `bench sweep {args.sweep} --results {results}` runs them", file=sys.stderr)
    data = build(results, run_ids, official_only=args.official, sources=submissions)
    if data.runs.empty:
        hint = " (runs made with --dev are left out by --official)" if args.official else ""
        raise DataError(f"no {'official ' if args.official else ''}runs found in {results}{hint}; "
                        f"`bench run --results {results}` writes them")
    figures = None
    if args.format == "md" and args.out:
        from leaderboard.md_figures import write_figures

        figures = write_figures(data, schema, args.out)
    # the defender tuning records (bench tune) of the tasks shown; budget figures beside the others (after them:
    # write_figures clears stale PNGs)
    tuning_dir = Path(args.tuning) if args.tuning else results
    if args.tuning and not (tuning_dir / "tuning").is_dir():
        raise DataError(f"{tuning_dir} has no tuning/ folder of bench tune records")
    tunings = tuning_view.load(tuning_dir)
    groups = list(task_groups(data.board)) if not data.board.empty else []
    tuning, tuning_only = tuning_view.markdown_sections(tunings, groups, args.out if args.format == "md" else None)
    text = markdown(data.board, schema, details=args.details, claims=load_claims(), figures=figures, tuning=tuning,
                    tuning_only=tuning_only)
    print(text, end="")
    written = []
    if args.format == "html":
        from leaderboard.site import build_site

        written.append(build_site(data, results, Path(args.out) if args.out else results / "site", schema=schema,
                                  submissions=submissions, tuning=tuning_dir))
    elif args.format == "md" and args.out:
        from leaderboard.md_figures import figures_folder

        Path(args.out).write_text(text, encoding="utf-8")
        written += [Path(args.out), figures_folder(args.out)]
    elif args.format in ("csv", "parquet"):
        written.append(_write_table(data.board, Path(args.out) if args.out else results / f"leaderboard.{args.format}",
                                    args.format))
    if args.table:
        print("bench leaderboard: --table FILE is deprecated; use --format csv|parquet --out FILE", file=sys.stderr)
        path = Path(args.table)
        written.append(_write_table(data.board, path, "csv" if path.suffix == ".csv" else "parquet"))
    if written:
        print(f"\nwrote {', '.join(map(str, written))}")
    return 0


def _write_table(board, path: Path, fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        board.to_csv(path, index=False)
    else:
        board.to_parquet(path, index=False)
    return path

"""``bench compare``: run what is missing for a new defense and the baselines, print the comparison, write the site."""

from __future__ import annotations

import argparse
import time

from bench.cli.run import add_executor_arguments

EPILOG = """examples:
  bench compare --plugin my_defense.py --defense weight-noise --task vision-digits            # seeds 0,1,2
  bench compare --plugin my_defense.py --defense weight-noise scale=1e-2 --task vision-digits --dry-run
  bench compare --defense specdef alpha=1e6 --task vision-digits --baselines none,repnoise,tar --jobs 2
  bench compare --plugin my_defense.py --defense weight-noise --task vision-digits --attack full-ft lr=1e-2

Runs already completed in the results folder are reused (a second call runs nothing). The table printed is the
task's leaderboard for the compared runs, the new defense in bold; the leaderboard of the whole results folder is
written to <results>/site/. Then `bench submit <results> --name NAME` checks the folder for a pull request.
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("compare", help="run a defense and the baselines under the same attacks, and compare them",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--defense", nargs="+", required=True, metavar=("NAME", "KEY=VALUE"),
                   help="the defense to compare (name, name.preset or a+b) and its config values")
    p.add_argument("--task", nargs="+", required=True, metavar=("NAME", "KEY=VALUE"),
                   help="task name and config values")
    p.add_argument("--attack", nargs="+", default=[], metavar=("NAME", "KEY=VALUE"),
                   help="one attack config instead of the task's default suite (for a quick look; the leaderboard "
                        "and `bench submit` want the default suite)")
    p.add_argument("--baselines", metavar="NAMES",
                   help="comma-separated defenses to compare with (default: every built-in defense); none always runs")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--tier", default="tiny", help="tiny (default, embedded model, CPU) or real (needs --model)")
    p.add_argument("--model", help="real tier: Hugging Face hub id or local path")
    p.add_argument("--results", default="results", help="results directory, read and written (default: results)")
    p.add_argument("--out", metavar="DIR", help="where the leaderboard site goes (default: <results>/site)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the runs the comparison needs and which are already done; run nothing")
    p.add_argument("--no-refine", dest="refine", action="store_false",
                   help="skip the half-decade LR refinement around each family's best point")
    p.add_argument("--search", choices=("grid", "lr-search"), help="LR strategy for every family (default: the task's)")
    p.add_argument("--device", metavar="DEVICE",
                   help="cpu, cuda or cuda:N (default: cpu on the tiny tier, cuda when available on the real tier)")
    p.add_argument("--threads", type=int, metavar="N", help="torch intra-op threads (default: 1 on the tiny tier)")
    p.add_argument("--allow-function-drift", action="store_true",
                   help="measure a defense whose outputs drifted beyond its declared tolerance instead of stopping")
    p.add_argument("--dev", action="store_true", help="mark results as unofficial")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-suite lines")
    p.add_argument("--allow-stale", action="store_true",
                   help="keep completed runs whose code changed since they ran (plugin or harness source, library "
                        "versions) instead of running them again; they are marked stale in run.json")
    add_executor_arguments(p)
    p.add_argument("overrides", nargs="*", metavar="PART.KEY=VALUE", help="dotted overrides, e.g. defense.alpha=1e6")
    return p


def main(args: argparse.Namespace) -> int:
    from bench.compare import compare, plan_comparison
    from bench.cli.sweep import print_code_changes, print_dry_run, print_problems, run_planned
    from bench.experiment import build_request

    request = build_request(task=args.task, defense=args.defense, attack=args.attack, overrides=args.overrides,
                            tier=args.tier, model=args.model, seeds=args.seeds, refine=args.refine,
                            search=args.search)
    baselines = args.baselines.split(",") if args.baselines is not None else None
    comparison = plan_comparison(request, baselines)
    if args.dry_run:
        print(f"comparing {request.defense} with: {', '.join(comparison.baselines)}")
        return print_dry_run(comparison.plan, args.results)
    start = time.perf_counter()
    report = run_planned(comparison.plan, args, lambda **kw: compare(comparison, args.results, site_dir=args.out, **kw))
    if report is None:
        return 130
    wall = time.perf_counter() - start
    print(report.table, end="")
    runs = len(report.sweep.records)
    print_code_changes(report.sweep)
    print(f"\n{runs} runs ({report.resumed} already done, {runs - report.resumed} run now) in {wall:.1f} s; "
          f"results in {args.results}/")
    if report.site:
        print(f"leaderboard of {args.results}/: {', '.join(str(p) for p in report.site)}")
    print(f"next: `bench submit {args.results} --name NAME --claims CLAIMS.yaml` checks the folder for a pull request")
    return print_problems(report.sweep, args.results)

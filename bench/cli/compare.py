"""``bench compare``: run what is missing for a new defense and the baselines, print the comparison, write the site."""

from __future__ import annotations

import argparse
import time

from bench.cli import flags

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
    flags.plugins(p, required=True)
    p.add_argument("--baselines", metavar="NAMES",
                   help="comma-separated defenses to compare with (default: every built-in defense); none always runs")
    flags.seeds(p, default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    flags.model(p, tier="tiny")
    flags.results(p)
    p.add_argument("--out", metavar="DIR", help="where the leaderboard site goes (default: <results>/site)")
    flags.dry_run(p, what="the runs the comparison needs")
    flags.lr_strategy(p, refine=True)
    flags.device(p)
    flags.measurement(p)
    flags.executor(p)
    flags.overrides(p)
    return p


def main(args: argparse.Namespace) -> int:
    from bench.apps.compare import compare, plan_comparison
    from bench.cli.sweep import print_code_changes, print_dry_run, print_problems, run_planned
    from bench.plan.experiment import build_request

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

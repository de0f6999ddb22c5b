"""``bench run``: one defense (plus the ``none`` baseline) on one task, against one attack or the default suite."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from bench.cli import flags

EPILOG = """examples:
  bench run --defense specdef --task vision-digits
  bench run --defense specdef alpha=1e6 dtype=float64 --task vision-digits --seeds 0,1,2
  bench run --defense specdef --task vision-digits --attack full-ft optimizer=adam lr=1e-3
  bench run --defense specdef --task vision-digits --search lr-search     # ~4x fewer attacker steps
  bench run --config experiments/vision-digits/specdef-float64.yaml defense.alpha=1e5
  bench run --defense mydef --task vision-digits --plugin ./my_defense.py
  bench run --defense mydef+specdef specdef.alpha=1e6 --task vision-digits --plugin ./my_defense.py
  bench run --defense specdef --task llm-harmful-qa --tier real --model ./my-llama --device cuda:1
  bench run --defense specdef --task vision-digits --seeds 0,1,2,3 --executor ray --address auto
  bench run --defense specdef --task sd-style --tier real --model ./sd --executor slurm --partition gpu \\
      --gpus-per-run 1 --time-limit 120
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("run", help="run a defense against a task's attack suite", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    flags.plugins(p)
    p.add_argument("--config", metavar="YAML", help="experiment file (overridden by command-line values)")
    flags.model(p)
    flags.device(p)
    flags.seeds(p, default=None, help="comma-separated seeds (default 0)")
    flags.results(p)
    flags.baseline(p)
    flags.lr_strategy(p)
    flags.exhaustive(p)
    p.add_argument("--no-resume", dest="resume", action="store_false", help="re-run runs already completed")
    flags.measurement(p)
    flags.executor(p)
    flags.overrides(p)
    return p


def main(args: argparse.Namespace) -> int:
    from bench.cli.sweep import print_code_changes
    from bench.exec.suite_run import run_suite
    from bench.plan.experiment import build_request
    from bench.run.devices import resolve_device
    from bench.run.stages import Session
    from leaderboard.aggregate import build
    from leaderboard.samples import samples_sheets
    from leaderboard.summary import summary_text

    request = build_request(config=args.config, task=args.task, defense=args.defense, attack=args.attack,
                            overrides=args.overrides, tier=args.tier, model=args.model, seeds=args.seeds,
                            baseline=args.baseline, refine=args.refine, search=args.search)
    if args.exhaustive:
        request = dataclasses.replace(request, exhaustive=True)
    threads = flags.set_threads(args.threads, {request.tier})
    session = Session(results_dir=args.results, official=not args.dev, device=args.device,
                      allow_function_drift=args.allow_function_drift, progress=not args.quiet)
    resolve_device(args.device, request.tier)  # a bad or unavailable --device stops here, before any model is built
    executor = flags.executor_for(args, session, request.tier, threads)
    start = time.perf_counter()
    try:
        report = run_suite(request, session, executor=executor, resume=args.resume, allow_stale=args.allow_stale)
    except KeyboardInterrupt:
        print(f"\ninterrupted: completed runs are kept in {args.results}/; run the same command again to resume.",
              file=sys.stderr)
        return 130
    wall = time.perf_counter() - start
    resumed = sum(r.resumed for r in report.records)
    aggregates = build(args.results, report.run_ids)
    print(summary_text(aggregates))
    for sheet in samples_sheets(args.results, aggregates.seeds):
        print(f"samples before/after the worst-case attack of each defense: {sheet}")
    print_code_changes(report)
    print(f"\n{len(report.records)} runs ({resumed} already done) in {wall:.1f} s; results in {args.results}/ "
          f"(`bench leaderboard --results {args.results}` to compare)")
    if report.failed:
        errors = sorted({r.error or "unknown error" for r in report.failed})
        print(f"\n{len(report.failed)} run(s) failed:", file=sys.stderr)
        for error in errors[:5]:
            print(f"  {error}", file=sys.stderr)
        return 1
    return 0

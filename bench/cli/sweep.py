"""``bench sweep``: run every (task, tier, defense, attack, seed) of a sweep file, or list them with ``--dry-run``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from bench.cli import flags

EPILOG = """examples:
  bench sweep experiments/sweeps/readme-vision-digits.yaml --dry-run     # every run, and which are done
  bench sweep experiments/sweeps/readme-vision-digits.yaml --results results/readme
  bench validate experiments/sweeps/*.yaml                               # every error of every grid at once

A sweep file has plural keys (tasks, tiers, defenses, attacks, seeds); see bench/plan/sweep.py for the schema.
Completed runs in the results folder are skipped, so the same command resumes an interrupted sweep.
"""
MAX_FAILED_SHOWN = 20


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("sweep", help="run a grid of tasks × tiers × defenses × attacks × seeds from a sweep file",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="YAML", help="sweep file")
    flags.dry_run(p, what="the runs the sweep would do")
    flags.results(p)
    flags.device(p)
    flags.measurement(p)
    flags.exhaustive(p)
    flags.executor(p)
    return p


def main(args: argparse.Namespace) -> int:
    from bench.plan.sweep import plan_file

    sweep_plan = plan_file(args.file)
    if getattr(args, "exhaustive", False):  # (bench compare shares this module's runner, not this flag)
        sweep_plan = dataclasses.replace(sweep_plan, suites=tuple(
            dataclasses.replace(p, request=dataclasses.replace(p.request, exhaustive=True))
            for p in sweep_plan.suites))
    if args.dry_run:
        return print_dry_run(sweep_plan, args.results)
    return _run(sweep_plan, args)


def print_dry_run(sweep_plan, results: str) -> int:
    """List every run of a plan known before any result, with its state in `results` (done, failed, todo)."""
    from bench.exec.sweep_run import run_states

    listed: set[str] = set()
    counts = {"done": 0, "stale": 0, "pruned": 0, "failed": 0, "todo": 0}
    later = 0
    for index, planned in enumerate(sweep_plan.suites, 1):
        print(f"suite {index}/{len(sweep_plan.suites)}: {planned.where}, seeds {list(planned.request.seeds)}")
        states = run_states(results, [spec.run_id for spec in planned.runs], {s.run_id: s for s in planned.runs},
                            exhaustive=planned.request.exhaustive)
        for spec in planned.runs:
            if spec.run_id in listed:
                continue  # also in an earlier suite: it runs (or resumes) once
            listed.add(spec.run_id)
            counts[states[spec.run_id]] += 1
            print(f"  {states[spec.run_id]:<6} {spec.run_id}  {spec.canonical_name}")
        if planned.later:
            print(f"  + up to {planned.later} more run(s) chosen from results (LR-search full runs, refinement)")
        later += planned.later
    for where, same in sweep_plan.collapsed:
        print(f"collapsed: {where} has the same runs as {same}")
    print_not_applicable(sweep_plan)
    print(f"\n{len(sweep_plan.suites)} suites; {len(listed)} runs known before any result: "
          f"{counts['done']} done, {counts['todo']} to run, {counts['failed']} failed before (run again), "
          f"{counts['stale']} stale (their code changed: run again, or kept with --allow-stale); "
          + (f"{counts['pruned']} pruned at the bound (run in full: --exhaustive); " if counts["pruned"] else "") +
          f"results in {results}/")
    if later:
        print(f"only the first wave is known: up to {later} more run(s) are chosen from its results (full runs at "
              "the LR-search probes' best rates, half-decade refinement around each family's best)")
    return 0


def print_not_applicable(sweep_plan) -> None:
    for where, why in sweep_plan.not_applicable:
        print(f"not applicable, skipped: {where}: {why}")


def _run(sweep_plan, args: argparse.Namespace) -> int:
    from bench.exec.sweep_run import run_sweep
    from leaderboard.aggregate import build
    from leaderboard.samples import samples_sheets
    from leaderboard.summary import summary_text

    start = time.perf_counter()
    report = run_planned(sweep_plan, args, lambda **kw: run_sweep(sweep_plan, **kw))
    if report is None:
        return 130
    wall = time.perf_counter() - start
    records = report.records
    aggregates = build(args.results, report.run_ids)
    print(summary_text(aggregates))
    for sheet in samples_sheets(args.results, aggregates.seeds):
        print(f"samples before/after the worst-case attack of each defense: {sheet}")
    resumed = sum(r.resumed for r in records)
    print_code_changes(report)
    print(f"\n{len(records)} runs ({resumed} already done) in {len(sweep_plan.suites)} suites in {wall:.1f} s; "
          f"results in {args.results}/ (`bench leaderboard --results {args.results}` to compare)")
    print_not_applicable(sweep_plan)
    return print_problems(report, args.results)


def run_planned(sweep_plan, args: argparse.Namespace, execute):
    """Run a planned sweep with the command line's session, device, thread and executor options (``bench sweep``,
    ``bench compare``): ``execute(make_session=, on_suite=, make_executor=)`` runs it. Returns its report, or None
    after Ctrl-C (completed runs are kept)."""
    from bench.run.devices import resolve_device
    from bench.run.stages import Session

    tiers = {planned.request.tier for planned in sweep_plan.suites}
    threads = flags.set_threads(args.threads, tiers)
    for tier in sorted(tiers):
        resolve_device(args.device, tier)  # a bad or unavailable --device stops here, before any model is built

    def make_session() -> Session:
        return Session(results_dir=args.results, official=not args.dev, device=args.device,
                       allow_function_drift=args.allow_function_drift, progress=not args.quiet)

    def announce(index: int, planned) -> None:
        if not args.quiet:
            print(f"suite {index + 1}/{len(sweep_plan.suites)}: {planned.where}", file=sys.stderr)

    try:
        return execute(make_session=make_session, on_suite=announce, allow_stale=args.allow_stale,
                       make_executor=lambda session, tier: flags.executor_for(args, session, tier, threads))
    except KeyboardInterrupt:
        print(f"\ninterrupted: completed runs are kept in {args.results}/; run the same command again to resume.",
              file=sys.stderr)
        return None


def print_code_changes(report) -> None:
    """Say how many completed runs ran again (or were kept, marked stale) because their code changed, and why."""
    from bench.run.fingerprint import resume_lines

    for line in resume_lines(report.rerun, report.kept_stale):
        print(line)


def print_problems(report, results: str) -> int:
    """Print the suites that stopped and the runs that failed (to stderr); return the exit code they make."""
    for planned, err in report.stopped:
        print(f"suite stopped before its runs: {planned.where}: {err}", file=sys.stderr)
    if report.failed:
        print(f"\n{len(report.failed)} run(s) failed (`bench show RUN_ID --results {results}` for details):",
              file=sys.stderr)
        for record in report.failed[:MAX_FAILED_SHOWN]:
            error = (record.error or "unknown error").splitlines()[0]
            print(f"  {record.spec.run_id}  {record.spec.canonical_name}: {error}", file=sys.stderr)
        if len(report.failed) > MAX_FAILED_SHOWN:
            print(f"  ... and {len(report.failed) - MAX_FAILED_SHOWN} more", file=sys.stderr)
    if report.stopped:
        return 2
    return 1 if report.failed else 0

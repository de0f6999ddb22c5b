"""``bench run``: one defense (plus the ``none`` baseline) on one task, against one attack or the default suite."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

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
    p.add_argument("--task", nargs="+", default=[], metavar=("NAME", "KEY=VALUE"), help="task name and config values")
    p.add_argument("--defense", nargs="+", default=[], metavar=("NAME", "KEY=VALUE"), help="defense (name, name.preset, or a+b to apply defenses in order) and config values "
                        "(PART.KEY=VALUE for a part of a+b)")
    p.add_argument("--attack", nargs="+", default=[], metavar=("NAME", "KEY=VALUE"),
                   help="one attack config instead of the task's default suite")
    p.add_argument("--config", metavar="YAML", help="experiment file (overridden by command-line values)")
    p.add_argument("--tier", help="tiny (default, embedded model, CPU) or real (needs --model)")
    p.add_argument("--model", help="real tier: Hugging Face hub id or local path")
    p.add_argument("--device", metavar="DEVICE",
                   help="cpu, cuda or cuda:N (default: cpu on the tiny tier, cuda when available on the real tier); "
                        "recorded in each run.json")
    p.add_argument("--allow-function-drift", action="store_true",
                   help="measure a defense whose outputs drifted beyond its declared tolerance instead of stopping "
                        "(each run records it)")
    p.add_argument("--seeds", "--seed", dest="seeds", help="comma-separated seeds (default 0)")
    p.add_argument("--results", default="results", help="results directory (default: results)")
    p.add_argument("--no-baseline", dest="baseline", action="store_false", default=None,
                   help="do not also run the undefended 'none' baseline")
    p.add_argument("--no-refine", dest="refine", action="store_false", default=None,
                   help="skip the half-decade LR refinement around each family's best point")
    p.add_argument("--search", choices=("grid", "lr-search"),
                   help="LR strategy for every family: exhaustive per-decade grid, or short probe runs then full runs "
                        "at the best learning rates (default: the task's choice)")
    p.add_argument("--exhaustive", action="store_true",
                   help="run every attack run to its end: no bound pruning (by default a run stops once it can no "
                        "longer lower any reported worst case, recorded as pruned at that step)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="re-run runs already completed")
    p.add_argument("--allow-stale", action="store_true",
                   help="keep completed runs whose code changed since they ran (plugin or harness source, library "
                        "versions) instead of running them again; they are marked stale in run.json")
    p.add_argument("--dev", action="store_true", help="mark results as unofficial (hidden from the leaderboard by --official)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch intra-op threads (default: 1 on the tiny tier, where more only adds contention; torch's "
                        "choice otherwise)")
    add_executor_arguments(p)
    p.add_argument("overrides", nargs="*", metavar="PART.KEY=VALUE", help="dotted overrides, e.g. defense.alpha=1e6")
    return p


def add_executor_arguments(p: argparse.ArgumentParser) -> None:
    """Where runs execute (shared by ``bench run`` and ``bench sweep``)."""
    p.add_argument("--executor", default="local", help="local (default), ray or slurm (see README: Running at scale)")
    p.add_argument("--jobs", default="auto", metavar="N",
                   help="runs at a time: auto (local: one per core on the tiny tier, one per GPU on the real tier; "
                        "ray/slurm: as many as the cluster schedules) or N")
    p.add_argument("--isolation", choices=("none", "subprocess"),
                   help="none: runs share this process; subprocess (the default with more than one job): each run "
                        "in its own worker process, so a crash, os._exit or out-of-memory kill fails only that run")
    p.add_argument("--run-timeout", type=float, metavar="SECONDS", help="kill and fail a run after this long")
    engine = p.add_argument_group("ray and slurm executors")
    engine.add_argument("--address", metavar="ADDRESS",
                        help="ray: the cluster to join (auto: the one `ray start --head` runs here; "
                             "ray://HOST:10001); default: a local Ray instance")
    engine.add_argument("--partition", metavar="NAME", help="slurm: the partition to queue runs in")
    engine.add_argument("--gpus-per-run", type=float, metavar="N",
                        help="GPUs each run reserves (default: 1 on the real tier — with ray, when the cluster has "
                             "GPUs — else 0)")
    engine.add_argument("--cpus-per-run", type=float, metavar="N", help="CPU cores each run reserves (default: 1)")
    engine.add_argument("--time-limit", type=float, metavar="MINUTES",
                        help="slurm: each run's time limit (default: --run-timeout, else 120)")
    engine.add_argument("--mem", type=float, metavar="GB", help="memory each run reserves")
    engine.add_argument("--slurm-param", action="append", default=[], metavar="KEY=VALUE",
                        help="slurm: an extra #SBATCH option, e.g. account=lab (repeatable)")


def set_threads(threads: int | None, tiers: set[str]) -> int | None:
    """Set torch's intra-op threads for this process (its workers get the same); returns the number set, if any.

    Default: 1 when every tier is tiny — tiny models gain nothing from a second thread, and on a busy machine the
    spin-waiting of several threads made each step up to 100x slower (measured); torch's choice otherwise.
    """
    if threads is None:
        threads = 1 if tiers == {"tiny"} else None
    if threads is None:
        return None
    if threads < 1:
        from bench.errors import ConfigError

        raise ConfigError(f"--threads must be at least 1, got {threads}")
    import torch

    torch.set_num_threads(threads)
    return threads


def executor_for(args: argparse.Namespace, session, request_tier: str, threads: int | None):
    """The executor the command line asks for, with the worker options every run shares."""
    from bench.errors import ConfigError
    from bench.executors import EngineOptions, make_executor
    from bench.worker import WorkerOptions

    options = WorkerOptions(results_dir=str(session.results_dir), cache_root=str(session.cache.root),
                            device=session.device, threads=threads, plugins=tuple(args.plugin),
                            official=session.official, allow_function_drift=session.allow_function_drift)
    params = []
    for item in args.slurm_param:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--slurm-param must be KEY=VALUE, got {item!r}")
        params.append((key.strip(), value))
    engine = EngineOptions(address=args.address, partition=args.partition, gpus_per_run=args.gpus_per_run,
                           cpus_per_run=args.cpus_per_run, time_limit=args.time_limit, mem_gb=args.mem,
                           slurm_params=tuple(params))
    return make_executor(args.executor, session, options, tier=request_tier, jobs=args.jobs,
                         isolation=args.isolation, run_timeout=args.run_timeout, engine=engine)


def main(args: argparse.Namespace) -> int:
    from bench.devices import resolve_device
    from bench.experiment import build_request
    from bench.runner import Session
    from bench.cli.sweep import print_code_changes
    from bench.suite import run_suite
    from leaderboard.aggregate import build
    from leaderboard.samples import samples_sheets
    from leaderboard.summary import summary_text

    request = build_request(config=args.config, task=args.task, defense=args.defense, attack=args.attack,
                            overrides=args.overrides, tier=args.tier, model=args.model, seeds=args.seeds,
                            baseline=args.baseline, refine=args.refine, search=args.search)
    if args.exhaustive:
        request = dataclasses.replace(request, exhaustive=True)
    threads = set_threads(args.threads, {request.tier})
    session = Session(results_dir=args.results, official=not args.dev, device=args.device,
                      allow_function_drift=args.allow_function_drift, progress=not args.quiet)
    resolve_device(args.device, request.tier)  # a bad or unavailable --device stops here, before any model is built
    executor = executor_for(args, session, request.tier, threads)
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

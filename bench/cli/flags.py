"""The command-line flags that ``bench run``, ``bench sweep``, ``bench compare`` and ``bench tune`` share, each
defined once here (name, meaning and help text); a command adds the groups it takes and states only what differs
(a default, or whether a flag is required); and what the parsed flags set up: torch threads, the executor."""

from __future__ import annotations

import argparse

PLUGIN = ("NAME", "KEY=VALUE")


def plugins(p: argparse.ArgumentParser, *, required: bool = False, attack: bool = True) -> None:
    """``--task``, ``--defense`` (and ``--attack``): a plugin name with its config values."""
    default: list[str] | None = None if required else []
    p.add_argument("--task", nargs="+", required=required, default=default, metavar=PLUGIN,
                   help="task name and config values")
    p.add_argument("--defense", nargs="+", required=required, default=default, metavar=PLUGIN,
                   help="defense (name, name.preset, or a+b to apply defenses in order) and config values "
                        "(PART.KEY=VALUE for a part of a+b)")
    if attack:
        p.add_argument("--attack", nargs="+", default=[], metavar=PLUGIN,
                       help="one attack config instead of the task's default suite (for a quick look; the leaderboard "
                            "and `bench submit` want the default suite)")


def model(p: argparse.ArgumentParser, *, tier: str | None = None) -> None:
    """``--tier`` and ``--model``; ``tier``: the default (None: the experiment file's, else tiny)."""
    p.add_argument("--tier", default=tier, help="tiny (default, embedded model, CPU) or real (needs --model)")
    p.add_argument("--model", help="real tier: Hugging Face hub id or local path")


def seeds(p: argparse.ArgumentParser, *, default: str | None, help: str) -> None:
    """``--seeds`` (alias ``--seed``): comma-separated seeds."""
    p.add_argument("--seeds", "--seed", dest="seeds", default=default, help=help)


def baseline(p: argparse.ArgumentParser, *, default: bool | None = None) -> None:
    """``--no-baseline``; ``default``: None (the experiment file's, else on) or True."""
    p.add_argument("--no-baseline", dest="baseline", action="store_false", default=default,
                   help="do not also run the undefended 'none' baseline (no resistance ratio)")


def lr_strategy(p: argparse.ArgumentParser, *, refine: bool | None = None) -> None:
    """``--no-refine`` and ``--search``; ``refine``: the default (None: the experiment file's, else on)."""
    p.add_argument("--no-refine", dest="refine", action="store_false", default=refine,
                   help="skip the half-decade LR refinement around each family's best point")
    p.add_argument("--search", choices=("grid", "lr-search"),
                   help="LR strategy for every family: exhaustive per-decade grid, or short probe runs then full runs "
                        "at the best learning rates (default: the task's choice)")


def results(p: argparse.ArgumentParser, *, written: bool = True) -> None:
    """``--results``; ``written``: the command writes runs there too (else it only reads them)."""
    p.add_argument("--results", default="results",
                   help=f"results directory, read{' and written' if written else ''} (default: results)")


def dry_run(p: argparse.ArgumentParser, *, what: str) -> None:
    """``--dry-run``; ``what``: what the command would list."""
    p.add_argument("--dry-run", action="store_true", help=f"list {what} and which are already done; run nothing")


def device(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--threads``."""
    p.add_argument("--device", metavar="DEVICE",
                   help="cpu, cuda or cuda:N (default: cpu on the tiny tier, cuda when available on the real tier); "
                        "recorded in each run.json")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch intra-op threads (default: 1 when every tier is tiny, where more only adds "
                        "contention; torch's choice otherwise)")


def measurement(p: argparse.ArgumentParser, *, drift: bool = True, stale: bool = True) -> None:
    """``--dev``, ``--quiet``, and (``drift``) ``--allow-function-drift`` and (``stale``) ``--allow-stale``."""
    if drift:
        p.add_argument("--allow-function-drift", action="store_true",
                       help="measure a defense whose outputs drifted beyond its declared tolerance instead of "
                            "stopping (each run records it)")
    p.add_argument("--dev", action="store_true",
                   help="mark results as unofficial (hidden from the leaderboard by --official)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-suite lines")
    if stale:
        p.add_argument("--allow-stale", action="store_true",
                       help="keep completed runs whose code changed since they ran (plugin or harness source, library "
                            "versions) instead of running them again; they are marked stale in run.json")


def exhaustive(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exhaustive", action="store_true",
                   help="run every attack run to its end: no bound pruning (by default a run stops once it can no "
                        "longer lower any reported worst case, recorded as pruned at that step; in a sweep file: "
                        "`exhaustive: true`)")


def overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="PART.KEY=VALUE", help="dotted overrides, e.g. defense.alpha=1e6")


def executor(p: argparse.ArgumentParser) -> None:
    """Where runs execute: the executor, its parallelism and isolation, and the Ray and Slurm resources."""
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
    from bench.exec.executors import EngineOptions, make_executor
    from bench.exec.worker import WorkerOptions

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

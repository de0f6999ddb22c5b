"""Issue 23's goal commands, timed as a user runs them: wall seconds, CPU seconds (children included), the yardstick.

Each goal command is run ``--repeats`` times in a fresh subprocess with its own empty results folder (so no run is
resumed) and a warm stage cache: before the timed repeats, one untimed run per checkout fills the cache. With several
``--checkout`` folders (e.g. ``/work/main`` as the baseline and this tree) the checkouts alternate repeat by repeat,
each with its own cache under ``--root``, so a busy machine disturbs both alike; the ratio of their medians is
printed, and every repeat's results are compared with the first checkout's first repeat
(:mod:`benchmarks.same_results`: every metric bit for bit, wall-clock ones excepted): a speed-up must not change a
number.

CPU seconds are the user + system time of the command and every process it waited for (its workers), from
``getrusage(RUSAGE_CHILDREN)``. The machine yardstick (:mod:`benchmarks.yardstick`) is measured before and after.

    python benchmarks/goals.py                                       # headline and vision suite, 3 repeats, this tree
    python benchmarks/goals.py --goals headline --checkout /work/main --checkout . --repeats 3
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: import the yardstick next to it
from same_results import differences, scheduling_differences  # noqa: E402
from yardstick import yardstick_line  # noqa: E402

GOALS = {
    "headline": (["--defense", "specdef", "--task", "sd-style"], 60.0),
    "vision": (["--defense", "specdef", "--task", "vision-digits"], 60.0),
}
"""Goal name -> (``bench run`` arguments, issue 23's wall-time goal in seconds, warm cache)."""


@dataclass(frozen=True)
class Timing:
    wall: float
    cpu: float
    runs: int
    code: int


def bench_run(checkout: Path, args: list[str], cache: Path, results: Path) -> tuple[Timing, str]:
    """Run ``bench run`` from ``checkout`` in a fresh process; its timing and combined output."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "BENCH_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bench", "run", *args, "--results", str(results), "--quiet"],
                          cwd=checkout, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    runs = len(list(results.glob("*/run.json")))
    return Timing(wall, cpu, runs, done.returncode), done.stdout + done.stderr


def summarise(label: str, timings: list[Timing], goal: float) -> str:
    walls, cpus = [t.wall for t in timings], [t.cpu for t in timings]
    return (f"  {label:<28} wall median {statistics.median(walls):6.1f} s (range {min(walls):.1f}-{max(walls):.1f},"
            f" goal {goal:.0f})  CPU median {statistics.median(cpus):6.1f} s (range {min(cpus):.1f}-{max(cpus):.1f})"
            f"  runs {timings[0].runs}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--goals", default=",".join(GOALS), help=f"comma-separated, of {sorted(GOALS)}")
    parser.add_argument("--checkout", action="append", type=Path,
                        help="a checkout to run the harness from (repeatable; default: this tree)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", type=Path, help="keep caches and results here (default: a temporary folder)")
    parser.add_argument("--no-warmup", action="store_true", help="the caches under --root are warm already")
    parser.add_argument("--seed-cache", type=Path,
                        help="copy this cache folder into each checkout's cache first (e.g. one that already holds "
                             "the tiny released models, so the untimed warm-up only builds stages)")
    args = parser.parse_args(argv)
    goals = args.goals.split(",")
    unknown = [g for g in goals if g not in GOALS]
    if unknown:
        parser.error(f"unknown goal(s) {unknown}; choose from {sorted(GOALS)}")
    checkouts = [c.resolve() for c in (args.checkout or [Path(__file__).resolve().parent.parent])]
    root = args.root or Path(tempfile.mkdtemp(prefix="goals-"))
    print(yardstick_line(), flush=True)
    failed = False
    for goal in goals:
        command, target = GOALS[goal]
        print(f"{goal}: bench run {' '.join(command)}  (warm cache, {args.repeats} repeats, alternating)", flush=True)
        timings: dict[int, list[Timing]] = {i: [] for i in range(len(checkouts))}
        folders: list[Path] = []
        for i, checkout in enumerate(checkouts):
            cache = root / f"cache-{i}"
            if args.seed_cache and not cache.exists():
                shutil.copytree(args.seed_cache, cache)
            if args.no_warmup:
                continue
            warm, _ = bench_run(checkout, command, cache, root / f"{goal}-{i}-warmup")
            print(f"  warm-up {checkout}: {warm.wall:.1f} s wall, {warm.cpu:.1f} CPU-s", flush=True)
        for repeat in range(args.repeats):
            for i, checkout in enumerate(checkouts):
                results = root / f"{goal}-{i}-r{repeat}"
                timing, text = bench_run(checkout, command, root / f"cache-{i}", results)
                timings[i].append(timing)
                folders.append(results)
                print(f"  repeat {repeat} {checkout}: {timing.wall:.1f} s wall, {timing.cpu:.1f} CPU-s, exit "
                      f"{timing.code}", flush=True)
                if timing.code:
                    failed = True
                    print(text[-3000:])
        for i, checkout in enumerate(checkouts):
            print(summarise(str(checkout), timings[i], target))
        if len(checkouts) > 1:
            base = timings[0]
            for i in range(1, len(checkouts)):
                wall = statistics.median(t.wall for t in timings[i]) / statistics.median(t.wall for t in base)
                cpu = statistics.median(t.cpu for t in timings[i]) / statistics.median(t.cpu for t in base)
                print(f"  {checkouts[i]} / {checkouts[0]}: wall {wall:.2f}x, CPU {cpu:.2f}x")
        found = [line for folder in folders[1:] for line in differences(folders[0], folder)]
        stopped = [line for folder in folders[1:] for line in scheduling_differences(folders[0], folder)]
        if stopped:  # the bound a run starts with depends on which runs had finished: compared up to the stop
            print(f"  {len(stopped)} run(s) stopped at the bound in one repeat and not in another (compared up to the "
                  "earlier stop)")
        for line in found[:20]:
            print(f"  differs: {line}")
        print(f"  per-run metrics identical across every repeat and checkout: {not found}", flush=True)
        failed |= bool(found)
    print(yardstick_line())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

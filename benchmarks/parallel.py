"""Parallel runs and the cache: one small sweep with ``--jobs 1`` and ``--jobs N``, each with a cold and a warm cache.

Runs ``bench run`` four times as a user would (each in a fresh results folder): cold cache / ``--jobs 1``, warm
cache / ``--jobs 1``, cold / ``--jobs N``, warm / ``--jobs N``. "Cold" is an empty ``$BENCH_CACHE_DIR`` (the tiny
released model and every stage are built), "warm" reuses the folder the cold run filled. Prints the wall time of
each, the speedups (N jobs vs 1, warm vs cold) measured in this one run, and checks that every run's metrics are
identical across the four (wall-clock metrics excepted).

    python benchmarks/parallel.py                                   # vision-digits, AdamW LR grid, 2 defenses
    python benchmarks/parallel.py --jobs 2 --seeds 0,1 --attack-args optimizer=sgd
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq


def sweep(results: Path, cache: Path, jobs: int, args) -> float:
    command = [sys.executable, "-m", "bench", "run", "--defense", "specdef", "--task", args.task, "--quiet",
               "--results", str(results), "--jobs", str(jobs), "--seeds", args.seeds,
               *(f"task.{kv}" for kv in args.task_args.split())]
    if args.attack_args:
        command += ["--attack", "full-ft", *args.attack_args.split()]
    start = time.perf_counter()
    subprocess.run(command, env=dict(os.environ, BENCH_CACHE_DIR=str(cache)), check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def metrics(results: Path) -> dict[str, list]:
    out = {}
    for path in sorted(results.glob("*/metrics.parquet")):
        df = pq.read_table(path).to_pandas()
        df = df[~df["metric"].str.endswith("seconds")]
        out[path.parent.name] = df[["phase", "step", "split", "metric", "value"]].astype(str).values.tolist()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="vision-digits")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--seeds", default="0,1,2,3")
    p.add_argument("--task-args", default="budget=100 curvature_iters=0 bootstrap=100",
                   help="space-separated task overrides (default: %(default)s)")
    p.add_argument("--attack-args", default="optimizer=adam lr=1e-3",
                   help="one attack config (space-separated); empty: the task's whole default suite")
    args = p.parse_args(argv)
    times, outputs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for jobs in (1, args.jobs):
            cache = root / f"cache-{jobs}"
            for state in ("cold", "warm"):
                results = root / f"results-{state}-{jobs}"
                times[state, jobs] = sweep(results, cache, jobs, args)
                outputs[state, jobs] = metrics(results)
                print(f"{state} cache, --jobs {jobs}: {times[state, jobs]:7.1f} s ({len(outputs[state, jobs])} runs)",
                      flush=True)
    reference = outputs["cold", 1]
    identical = all(out == reference for out in outputs.values())
    print(f"\nspeedup --jobs {args.jobs} vs --jobs 1: warm {times['warm', 1] / times['warm', args.jobs]:.2f}x, "
          f"cold {times['cold', 1] / times['cold', args.jobs]:.2f}x")
    print(f"speedup warm vs cold cache: --jobs 1 {times['cold', 1] / times['warm', 1]:.2f}x, "
          f"--jobs {args.jobs} {times['cold', args.jobs] / times['warm', args.jobs]:.2f}x")
    print(f"per-run results identical across all four: {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())

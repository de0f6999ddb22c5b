"""Does the cheap ``lr-search`` strategy find the same worst case as the exhaustive per-decade grid?

On ``vision-digits`` (tiny), for ``none`` and a defense (default ``specdef``), this runs every family of the task's
default suite twice in one process, once as an exhaustive grid (every decade at the full budget) and once as an LR
search (short probe runs per decade, full runs at the ``--keep`` best), both followed by the same half-decade
refinement. It prints, per (defense, family), the worst-case steps-to-harm each strategy found, the optimizer steps
each spent, and the ratio, plus the totals.

    python benchmarks/lr_search_vs_grid.py
    python benchmarks/lr_search_vs_grid.py --defense specdef --probe-steps 20 --keep 2 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections import defaultdict

import torch

from bench.core.metrics import worst_case
from bench.exec.suite_run import run_suite
from bench.plan.request import SuiteRequest
from bench.run.stages import Session
from tasks.vision.task import VisionDigits


def run_strategy(search: str, args, results: str) -> tuple[dict, dict, float]:
    original = VisionDigits.default_attacks

    def sweeps(self, cfg, tier):
        return [dataclasses.replace(s, search=search, probe_steps=args.probe_steps, keep=args.keep)
                for s in original(self, cfg, tier)]

    VisionDigits.default_attacks = sweeps
    try:
        start = time.perf_counter()
        request = SuiteRequest(task="vision-digits", defense=args.defense, seeds=args.seeds,
                               task_args={"curvature_iters": 0, "bootstrap": 0})
        report = run_suite(request, Session(results, progress=False))
        seconds = time.perf_counter() - start
    finally:
        VisionDigits.default_attacks = original
    worst, steps = defaultdict(list), defaultdict(int)
    for record in report.records:
        key = (record.spec.defense.label, record.family)
        steps[key] += int(record.summary.steps_run or 0)
        if record.spec.purpose == "attack" and record.status == "success":
            worst[key].append(record)
    found = {}
    for key, records in worst.items():
        best = worst_case([int(r.summary.steps_to_harm or 0) for r in records],
                          [bool(r.summary.censored) for r in records])
        found[key] = ("> " if best.censored else "") + str(best.steps_to_harm)
    return found, steps, seconds


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--defense", default="specdef")
    p.add_argument("--probe-steps", type=int, default=20)
    p.add_argument("--keep", type=int, default=2)
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    args.seeds = tuple(int(s) for s in args.seeds.split(","))
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        grid, grid_steps, grid_s = run_strategy("grid", args, f"{tmp}/grid")
        search, search_steps, search_s = run_strategy("lr-search", args, f"{tmp}/search")
    print(f"vision-digits tiny, seeds {list(args.seeds)}, lr-search: {args.probe_steps}-step probes, keep {args.keep}\n")
    header = f"{'defense':<10} {'family':<52} {'grid':>7} {'search':>7} {'same':>5} {'grid steps':>11} {'search steps':>13} {'saved':>6}"
    print(header + "\n" + "-" * len(header))
    agree = 0
    for key in sorted(grid):
        same = grid[key] == search.get(key)
        agree += same
        saved = 1 - search_steps[key] / max(grid_steps[key], 1)
        print(f"{key[0]:<10} {key[1][:52]:<52} {grid[key]:>7} {search.get(key, '—'):>7} {'yes' if same else 'NO':>5} "
              f"{grid_steps[key]:>11} {search_steps[key]:>13} {saved:>6.0%}")
    total_grid, total_search = sum(grid_steps.values()), sum(search_steps.values())
    print(f"\nsame worst case in {agree}/{len(grid)} families; optimizer steps {total_grid} (grid) vs {total_search} "
          f"(lr-search) = {total_search / total_grid:.2f}x; wall {grid_s:.1f} s vs {search_s:.1f} s = "
          f"{search_s / grid_s:.2f}x")


if __name__ == "__main__":
    main()

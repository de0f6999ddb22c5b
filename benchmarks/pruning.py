"""Bound pruning (issue 23, lever 1): a task's default suite with pruning and with ``--exhaustive``, in this process,
one after the other into fresh results folders, with the attack steps each ran, its CPU seconds, the ratios, and a
check that every worst case the leaderboard reports is the same.

    python benchmarks/pruning.py [--task vision-digits] [--defense specdef] [--seeds 0] [--repeats 1]

Attack steps (optimizer steps plus the exact crossing's replayed steps) do not depend on the machine; CPU seconds
do, so a one-line yardstick (single-thread float32 1024³ matmul, GFLOP/s) measured in the same process is printed
with them. With ``--repeats N`` the two modes alternate (exhaustive first, then pruned first, ...) and the ratio is
reported as the median and range over the pairs.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from yardstick import yardstick  # the one machine yardstick, next to this script

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPORTED = ["worst_steps", "worst_censored", "worst_attack", "worst_run_id", "adaptive_steps", "adaptive_censored",
            "adaptive_run_id", "blind_steps", "blind_censored", "blind_run_id", "worst_harm_auc", "ratio",
            "ratio_lower_bound", "ratio_upper_bound"]
"""Per-seed columns that pruning must leave as they are (with the ``bounded*`` worst cases, added below)."""


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_mode(args, results: Path, exhaustive: bool) -> dict:
    from bench.exec.suite_run import run_suite
    from bench.plan.request import SuiteRequest
    from bench.run.stages import Session

    request = SuiteRequest(task=args.task, defense=args.defense, seeds=tuple(args.seeds), exhaustive=exhaustive)
    cpu, wall = _cpu(), time.perf_counter()
    report = run_suite(request, Session(results, progress=False))
    cpu, wall = _cpu() - cpu, time.perf_counter() - wall
    steps = sum(int(r.summary.get("steps_run") or 0) + int(r.summary.get("replay_steps") or 0)
                for r in report.records)
    pruned = sum(r.summary.get("pruned_at_bound") is not None for r in report.records)
    return {"cpu": cpu, "wall": wall, "steps": steps, "runs": len(report.records), "pruned": pruned,
            "failed": len(report.failed), "run_ids": report.run_ids, "results": results}


def reported(result: dict):
    from leaderboard.aggregate import build

    seeds = build(result["results"], result["run_ids"]).seeds
    columns = [c for c in seeds.columns if c in REPORTED or (c.startswith("bounded") and c.endswith(
        ("_steps", "_censored", "_run_id")))]
    return seeds.sort_values(["defense_label", "seed"])[["defense_label", "seed", *columns]].reset_index(drop=True)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="vision-digits")
    parser.add_argument("--defense", default="specdef")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(yardstick().line())
    with tempfile.TemporaryDirectory() as warm:  # the released model and its stages, once, outside the timing
        from bench.exec.suite_run import run_suite
        from bench.plan.request import SuiteRequest
        from bench.run.stages import Session

        run_suite(SuiteRequest(task=args.task, defense=args.defense, seeds=tuple(args.seeds), families=(),
                               attack="full-ft", attack_args={"budget": 5}), Session(Path(warm), progress=False))
    pairs = []
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(args.repeats):
            order = (True, False) if repeat % 2 == 0 else (False, True)
            pair = {}
            for exhaustive in order:
                name = "exhaustive" if exhaustive else "pruned"
                pair[name] = run_mode(args, Path(root) / f"{name}-{repeat}", exhaustive)
                r = pair[name]
                print(f"{name:10s} {r['runs']} runs ({r['pruned']} pruned, {r['failed']} failed): "
                      f"{r['steps']} attack steps, {r['cpu']:.1f} CPU-s, {r['wall']:.1f} s wall")
            same = reported(pair["exhaustive"]).equals(reported(pair["pruned"]))
            print(f"  every reported worst case, run and ratio identical: {same}")
            pairs.append(pair)
    for key, label in (("steps", "attack steps"), ("cpu", "CPU-s")):
        ratios = [p["exhaustive"][key] / max(p["pruned"][key], 1e-9) for p in pairs]
        print(f"{label}: exhaustive / pruned = {statistics.median(ratios):.2f}x "
              f"(range {min(ratios):.2f}-{max(ratios):.2f} over {len(ratios)} pair(s))")


if __name__ == "__main__":
    main()

"""The adaptive fallback run once (bench.run.shared_runs): the four adaptive families on an undefended model, each in its
own results folder (nothing to share: what every run cost before issue 23) and all in one folder (shared), with
identical per-run results checked.

    python benchmarks/shared_runs.py [--lrs 1e-2,1e-3,1e-4] [--budget 200] [--repeats 2]

Prints trajectories trained, CPU seconds (this process: the runs are in-process) and wall seconds of each mode,
their ratio (modes interleaved per repeat, so the ratios are paired; other processes on the machine disturb the wall
times, read the CPU seconds), and whether every run's attack metrics were the same in both modes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from yardstick import yardstick  # the one machine yardstick, next to this script

FAMILIES = ("adaptive-collapse", "adaptive-freeze", "adaptive-inject", "adaptive-split")
TIMINGS = {"attack_seconds", "probe_seconds", "replay_seconds", "snapshot_seconds", "wall_seconds", "reused_from"}


def attack_values(directory: Path):
    import pyarrow.parquet as pq

    df = pq.read_table(directory / "metrics.parquet").to_pandas()
    df = df[df["phase"].isin(["attack", "post_attack", "summary"]) & ~df["metric"].isin(TIMINGS)]
    return df[["phase", "step", "split", "metric", "value"]].sort_values(["phase", "metric", "split", "step"]) \
        .reset_index(drop=True)


def sweep(folder: Path, specs, *, shared: bool, cache) -> tuple[int, float, float]:
    from bench.run.runner import run
    from bench.run.stages import Session

    sessions = {}
    cpu, wall = time.process_time(), time.perf_counter()
    trained = 0
    for spec in specs:
        name = "all" if shared else spec.attack.name
        session = sessions.setdefault(name, Session(folder / name, cache, progress=False))
        result = run(spec, session)
        assert result.status == "success", result.error
        trained += "reused_from" not in result.summary
    return trained, time.process_time() - cpu, time.perf_counter() - wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", default="1e-2,1e-3,1e-4")
    parser.add_argument("--budget", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from bench.cache import Cache
    from bench.core.spec import make_spec

    cache = Cache()
    quick = {"curvature_iters": 0, "bootstrap": 0}
    specs = [make_spec(task="vision-digits", defense="none", attack=family, task_args=quick,
                       attack_args={"optimizer": "adam", "lr": float(lr), "budget": args.budget})
             for lr in args.lrs.split(",") for family in FAMILIES]
    print(yardstick().line())
    print(f"{len(specs)} runs: {len(FAMILIES)} adaptive families x {len(args.lrs.split(','))} learning rates on "
          f"vision-digits/none, budget {args.budget}")
    measured: dict[str, list[tuple[int, float, float]]] = {"alone": [], "shared": []}
    same = True
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="shared-runs-") as tmp:
            folders = {mode: Path(tmp) / mode for mode in measured}
            order = ("alone", "shared") if repeat % 2 == 0 else ("shared", "alone")
            for mode in order:
                measured[mode].append(sweep(folders[mode], specs, shared=mode == "shared", cache=cache))
            for spec in specs:
                alone = attack_values(folders["alone"] / spec.attack.name / spec.run_id)
                shared = attack_values(folders["shared"] / "all" / spec.run_id)
                same &= alone.equals(shared)
    for mode, rows in measured.items():
        print(f"{mode:<7} trained {rows[0][0]:>3} of {len(specs)}  cpu {statistics.median(r[1] for r in rows):7.1f} s"
              f"  wall {statistics.median(r[2] for r in rows):7.1f} s")
    cpu = [a[1] / s[1] for a, s in zip(measured["alone"], measured["shared"])]
    wall = [a[2] / s[2] for a, s in zip(measured["alone"], measured["shared"])]
    print(f"alone/shared: cpu x{statistics.median(cpu):.2f} [{min(cpu):.2f}-{max(cpu):.2f}], "
          f"wall x{statistics.median(wall):.2f} [{min(wall):.2f}-{max(wall):.2f}]")
    print(f"every run's attack metrics identical in both modes: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

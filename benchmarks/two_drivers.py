"""Two identical sweeps started at once on one results folder: how many runs each driver executed, and their wall
times. Run claims (:mod:`bench.run.run_claim`) should make every run execute once and both drivers print the full table.

    python benchmarks/two_drivers.py [--jobs 1] [--budget 30] [--seeds 0,1]

A run's executor is read from its claim (``.claim.json``: the process that ran it, and that process's parent, i.e.
the driver when runs go to worker processes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SWEEP = """\
tasks: [{{name: vision-digits, args: {{budget: {budget}, curvature_iters: 0, bootstrap: 0}}}}]
defenses: [specdef]
attacks:
  - {{name: full-ft, args: {{optimizer: adam, lr: 1.0e-3}}}}
  - {{name: full-ft, args: {{optimizer: adam, lr: 1.0e-2}}}}
  - {{name: full-ft, args: {{optimizer: sgd, lr: 1.0e-1}}}}
seeds: [{seeds}]
"""


def two_drivers(folder: Path, *, jobs: int, budget: int, seeds: str) -> dict:
    sweep = folder / "sweep.yaml"
    sweep.write_text(SWEEP.format(budget=budget, seeds=seeds))
    results = folder / "results"
    argv = [sys.executable, "-m", "bench", "sweep", str(sweep), "--results", str(results), "--quiet",
            "--jobs", str(jobs)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    start = time.monotonic()
    drivers = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for _ in range(2)]
    walls, outputs = [], []
    for driver in drivers:
        out, err = driver.communicate(timeout=1800)
        walls.append(time.monotonic() - start)
        outputs.append((driver.returncode, out, err))
    executed = {driver.pid: 0 for driver in drivers}
    for claim in results.glob("*/.claim.json"):
        owner = json.loads(claim.read_text())
        for pid in (owner["pid"], owner["parent_pid"]):
            if pid in executed:
                executed[pid] += 1
                break
    runs = sum(1 for _ in results.glob("*/run.json"))
    return {"runs": runs, "executed": [executed[d.pid] for d in drivers], "walls": walls, "outputs": outputs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--budget", type=int, default=30)
    parser.add_argument("--seeds", default="0, 1")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        found = two_drivers(Path(tmp), jobs=args.jobs, budget=args.budget, seeds=args.seeds)
    for i, (code, out, _err) in enumerate(found["outputs"]):
        table = [line for line in out.splitlines() if line.startswith(("none ", "specdef "))]
        print(f"driver {i + 1}: exit {code}, executed {found['executed'][i]} of {found['runs']} runs, "
              f"wall {found['walls'][i]:.1f} s, table rows: {len(table)}")
    print(f"runs executed in all: {sum(found['executed'])} (runs recorded: {found['runs']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

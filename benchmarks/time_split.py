"""Where a command's run time went, from what its runs recorded (no re-run): training, probes, replay, the rest.

Every run's ``run.json`` records its wall time and, for an attack, ``attack_seconds`` (the attack's loop, grid probes
included), ``probe_seconds`` (those probes), ``replay_seconds`` (the exact-crossing replay: its steps and probes) and
``snapshot_seconds``. This script sums them over a results folder, split by the run's purpose (the attack runs and
the LR-search probe runs), and prints each part's share:

* **training**: attack seconds less grid probes and snapshots;
* **grid probes**: the probes every ``eval_every`` steps (sampling, proxy, judges; confirmations);
* **replay**: exact crossing (steps again, probes after each);
* **rest**: the run's wall time less the above (loading stages, post-attack evaluation, samples image, writing).

The figures are seconds of the runs themselves (they ran in parallel, so they add up to more than the command's
wall time); on a busy machine they stretch, but their shares hold roughly. With two folders (e.g. a baseline and a
change, the same command) each part's ratio is printed too.

    python benchmarks/time_split.py results/
    python benchmarks/time_split.py results-main/ results-branch/
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

PARTS = ("training", "grid probes", "replay", "rest")


def split(results: Path) -> dict[str, dict[str, float]]:
    """Seconds per part, per purpose (plus "all"), over the successful runs under ``results``."""
    from bench.run.summary import RunSummary

    out: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(PARTS, 0.0))
    for path in sorted(results.glob("*/run.json")):
        run = json.loads(path.read_text())
        if run.get("status") != "success":
            continue
        s = RunSummary.from_json(run.get("summary"))
        attack, probes = s.attack_seconds or 0.0, s.probe_seconds or 0.0
        replay, snapshots = s.replay_seconds or 0.0, s.snapshot_seconds or 0.0
        parts = {"training": attack - probes - snapshots, "grid probes": probes, "replay": replay}
        parts["rest"] = run.get("wall_seconds", 0.0) - sum(parts.values())
        for purpose in (run.get("purpose", "attack"), "all"):
            for name, value in parts.items():
                out[purpose][name] += value
    return dict(out)


def show(label: str, table: dict[str, dict[str, float]]) -> None:
    print(label)
    for purpose, parts in sorted(table.items()):
        total = sum(parts.values())
        cells = "  ".join(f"{name} {value:7.1f} s ({value / total:4.0%})" for name, value in parts.items())
        print(f"  {purpose:<10} total {total:7.1f} s   {cells}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+", help="one results folder, or a baseline and a change")
    args = parser.parse_args(argv)
    if len(args.results) > 2:
        parser.error("give one or two results folders")
    tables = [split(r) for r in args.results]
    for folder, table in zip(args.results, tables):
        show(str(folder), table)
    if len(tables) == 2:
        base, new = tables[0].get("all", {}), tables[1].get("all", {})
        print("change / baseline, all runs: " + "  ".join(
            f"{name} {new[name] / base[name]:.2f}x" for name in PARTS if base.get(name)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

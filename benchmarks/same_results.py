"""Whether two results folders hold the same numbers: a speed-up must not change a measurement (issue 23).

Compares, run by run (the run id is the hash of the resolved spec, so the same run has the same folder name under
both), every metric row of ``metrics.parquet`` (the summary: steps-to-harm, exact and grid steps, outcome counts,
harm AUC; the probe curve; the evaluations; retained utility with its CI) and the outcome in ``run.json``, bit for
bit, except:

* wall-clock metrics (``*_seconds``), which no two runs share;
* the rows of a replayed interval (split ``replay``) for utility and usable where one side did not measure them
  (NaN): since the replay screens a step by its harm first (:meth:`~bench.contracts.TaskInstance.probe_harm`), a step
  below tau carries harm only. Harm is compared on every replayed step, and utility/usable wherever both measured it;
* a run stopped at the bound on one side only, or at another step (:mod:`bench.run.pruning`): whether a run is capped
  depends on which runs had finished when it started, so it varies with scheduling under parallel workers. Such a
  pair is compared up to the earlier stop (released and defended rows, and the attack's rows to that step) and
  listed apart; every worst case the tables report is the same either way (that is the pruning's guarantee).

Prints one line per difference and a verdict; exit status 1 when they differ.

    python benchmarks/same_results.py results-main results-branch
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

KEY = ("phase", "step", "split", "metric")


def _rows(run: Path) -> dict[tuple, float]:
    import pyarrow.parquet as pq

    rows = pq.read_table(run / "metrics.parquet", columns=[*KEY, "value"]).to_pylist()
    return {tuple(r[k] for k in KEY): r["value"] for r in rows if not r["metric"].endswith("seconds")}


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


def _runs(folder: Path) -> set[str]:
    return {p.parent.name for p in folder.glob("*/metrics.parquet")}


def _outcome_and_stop(run: Path) -> tuple[str | None, int | None]:
    """The run's outcome and the step it was stopped at the bound (None: not stopped), from its run.json."""
    info = json.loads((run / "run.json").read_text())
    step = (info.get("summary") or {}).get("pruned_at_bound")
    return info.get("outcome"), None if step is None else int(step)


def scheduling_differences(a: Path, b: Path) -> list[str]:
    """The runs stopped at the bound in one folder and not in the other (or at another step), each with its stops."""
    out = []
    for run in sorted(_runs(a) & _runs(b)):
        stops = _outcome_and_stop(a / run)[1], _outcome_and_stop(b / run)[1]
        if stops[0] != stops[1]:
            out.append(f"run {run}: stopped at the bound at step {stops[0]} vs {stops[1]} (None: not stopped)")
    return out


def differences(a: Path, b: Path) -> list[str]:
    """Every difference between results folders ``a`` and ``b`` (empty: the same numbers), runs stopped at the bound
    at different steps compared up to the earlier stop (:func:`scheduling_differences` lists them)."""
    runs_a, runs_b = _runs(a), _runs(b)
    out = [f"run {r} only in {a}" for r in sorted(runs_a - runs_b)]
    out += [f"run {r} only in {b}" for r in sorted(runs_b - runs_a)]
    for run in sorted(runs_a & runs_b):
        rows_a, rows_b = _rows(a / run), _rows(b / run)
        (outcome_a, stop_a), (outcome_b, stop_b) = _outcome_and_stop(a / run), _outcome_and_stop(b / run)
        if stop_a != stop_b:
            limit = min(s for s in (stop_a, stop_b) if s is not None)
            rows_a, rows_b = (_before_stop(rows, limit) for rows in (rows_a, rows_b))
        elif outcome_a != outcome_b:
            out.append(f"run {run}: outcome {outcome_a} vs {outcome_b}")
        for key in sorted(rows_a.keys() | rows_b.keys(), key=str):
            va, vb = rows_a.get(key), rows_b.get(key)
            unmeasured = key[2] == "replay" and key[3] in ("utility", "usable") and (
                va is None or vb is None or math.isnan(va) or math.isnan(vb))
            if not unmeasured and not _same(va, vb):
                out.append(f"run {run}: {'/'.join(map(str, key))}: {va!r} vs {vb!r}")
    return out


def _before_stop(rows: dict[tuple, float], step: int) -> dict[tuple, float]:
    """The rows a run stopped at ``step`` shares with the same run taken further: released, defended, attack to it."""
    return {k: v for k, v in rows.items()
            if k[0] in ("released", "defended") or (k[0] == "attack" and k[1] is not None and k[1] <= step)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    found = differences(args.a, args.b)
    for line in [*scheduling_differences(args.a, args.b), *found]:
        print(line)
    runs = len(list(args.a.glob("*/metrics.parquet")))
    print(f"{runs} runs compared: {'the same numbers' if not found else f'{len(found)} differences'}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

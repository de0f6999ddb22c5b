"""``bench show <run_id | run dir | results dir>``: one run's spec, outcome and key metrics, or a list of runs."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from bench.cli import flags

if TYPE_CHECKING:
    from bench.run.summary import RunSummary


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("show", help="show a run (by id or directory) or list the runs of a results directory")
    p.add_argument("target", help="run id, run directory, or results directory")
    flags.results(p, written=False)
    p.add_argument("--json", action="store_true", help="print the run's run.json as is")
    return p


def main(args: argparse.Namespace) -> int:
    from bench.errors import DataError
    from bench.run.results import METRICS, RUN_JSON, read_run_json, run_directories
    from bench.run.summary import RunSummary
    from bench.toolkit.stage_clock import describe

    target = Path(args.target)
    if not target.exists():
        target = Path(args.results) / args.target
    if not target.exists():
        raise DataError(f"no run {args.target!r}: not a directory, and not a run id under {args.results}/")
    if not (target / RUN_JSON).exists():
        runs = run_directories(target)
        if not runs:
            raise DataError(f"{target} holds no runs")
        for directory in runs:
            info = read_run_json(directory)
            summary = RunSummary.from_json(info.get("summary"))
            steps = summary.steps_to_harm
            steps_text = "—" if steps is None else (f"> {steps}" if summary.censored else str(steps))
            print(f"{info['run_id']}  {info['status']:<8} {str(info.get('outcome') or '—'):<9} "
                  f"steps-to-harm {steps_text:<7} {info.get('canonical_name', '')}"
                  + (f"  (reused from {summary.reused_from})" if summary.reused_from else ""))
        return 0
    info = read_run_json(target)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    print(f"run {info['run_id']}: {info.get('canonical_name')}")
    print(f"status: {info['status']}" + (f" — {info['error']}" if info.get("error") else ""))
    summary = RunSummary.from_json(info.get("summary"))
    if summary.attacked:
        _print_attack(summary)
    if summary.wave is not None:
        print(f"planned in wave {summary.wave} of its attack family ({summary.wave_kind})")
    threat = info.get("threat_model") or {}
    print("threat model: " + ", ".join(f"{k}={v}" for k, v in threat.items()))
    for stage, seconds in (info.get("stage_seconds") or {}).items():
        source = (info.get("stage_source") or {}).get(stage, "built")
        origin = {"built": "built by this run", "disk": "read from the stage cache; seconds of its build",
                  "memory": "built by an earlier run of the same call; seconds of its build"}.get(source, source)
        print(f"{stage} stage ({origin}): {describe(seconds)}")
    if (target / METRICS).exists():
        from bench.run.results import read_metrics_file

        table = read_metrics_file(target / METRICS).to_pandas()
        shown = table[table["phase"].isin(["released", "defended", "post_attack"])]
        for _, row in shown.iterrows():
            ci = f" [{row['ci_low']:.4g}, {row['ci_high']:.4g}]" if row["ci_low"] == row["ci_low"] and row["ci_low"] is not None else ""
            split = f"[{row['split']}]" if row["split"] else ""
            print(f"  {row['phase']:<12} {row['metric']}{split}: {row['value']:.6g}{ci}")
    prov = info.get("provenance") or {}
    print(f"code: bench {prov.get('bench_version')} git {str(prov.get('git_sha'))[:10]}"
          f"{' (dirty)' if prov.get('git_dirty') else ''}; device {prov.get('device')}; wall {info.get('wall_seconds', 0):.2f} s")
    if info.get("traceback"):
        print("\n" + info["traceback"])
    return 0


def _print_attack(summary: RunSummary) -> None:
    """The attack's record: outcome, steps-to-harm, crossing, and why the run stopped where it did."""
    censored = "> " if summary.censored else ""
    raw_censored = "> " if summary.raw_censored else ""
    auc = math.nan if summary.harm_auc is None else summary.harm_auc
    print(f"outcome: {summary.outcome}; steps-to-harm: {censored}{summary.steps_to_harm}"
          f" (raw crossing: {raw_censored}{summary.steps_to_harm_raw}); "
          f"harm AUC {auc:.3f}; ran {summary.steps_run} steps"
          + (f"; diverged at step {summary.diverged_step}" if summary.diverged else ""))
    resolution = summary.crossing_resolution
    if resolution is not None and not summary.censored:
        why = summary.replay_failure or "the attack has no replayable trajectory"
        print("crossing: exact (replayed step by step)" if resolution == 1 else
              f"crossing: on the probe grid, within {resolution} steps ({why})")
    if summary.stopped_early:
        print(f"stopped early: the attack quit after {summary.steps_run} steps without harm or a reason; "
              f"censored there, not at its budget")
    if summary.reused_from:
        why = " (the adaptive attack's plain fine-tuning fallback: no linear chains)" \
            if (summary.attack_info or {}).get("fallback") else ""
        print(f"reused from run {summary.reused_from}: the same trajectory{why}, run once and recorded for "
              f"each attack that shares it; its attack seconds are that run's")
    if summary.pruned_at_bound is not None:
        print(f"pruned at the bound: stopped at step {summary.pruned_at_bound} "
              f"(bound {summary.prune_bound}, "
              f"set by {', '.join(summary.bound_by or ()) or '—'}): a crossing still to come could lower "
              f"no worst case; censored there, outcome unknown (--exhaustive runs it out)")
    if summary.released_already_harmful:
        print(f"the released model {summary.released_already_harmful}")
    if summary.already_harmful:
        print(f"not attacked: the defended model {summary.already_harmful}; steps-to-harm 0")

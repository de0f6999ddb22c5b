"""The real tier on a CPU: the two-run comparison (``none`` and SpecDef) on a small local chat model, timed per stage.

    python benchmarks/real_cpu.py ./smollm2-135m-instruct          # a saved checkpoint folder
    python benchmarks/real_cpu.py ./SmolLM2-135M-Instruct.Q4_1.gguf # or a llama.cpp file (pip install gguf)
    python benchmarks/real_cpu.py ./model task.eval_size=24 task.refusal_floor=0   # extra `bench run` overrides

It runs issue 15's command through ``bench run`` (the CLI's own code path, in this process), in fresh results and
cache directories so that nothing is read from an earlier run::

    bench run --task llm-harmful-qa --tier real --model PATH --defense specdef n_layers=5 --attack full-ft
      optimizer=adamw lr=1e-5 budget=20 task.lm_eval_tasks=llm_tiny_arithmetic task.lm_eval_limit=16
      task.probe_size=16

then prints, for each run, the seconds of every part of the released and defended stages (``stage_seconds`` in its
run.json) and of its attack, and in total the wall time and the CPU time of the process (user + system over all its
threads and workers: on a machine other jobs share, the wall time says more about them than about the harness).
Measured numbers are in the README (real tier on a laptop).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ISSUE_COMMAND = ["--task", "llm-harmful-qa", "--tier", "real", "--defense", "specdef", "n_layers=5",
                 "--attack", "full-ft", "optimizer=adamw", "lr=1e-5", "budget=20"]
ISSUE_OVERRIDES = ["task.lm_eval_tasks=llm_tiny_arithmetic", "task.lm_eval_limit=16", "task.probe_size=16"]


def cpu_seconds() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="checkpoint folder or .gguf file of a causal chat LM")
    parser.add_argument("overrides", nargs="*", help="extra PART.KEY=VALUE overrides, e.g. task.eval_size=24")
    parser.add_argument("--work", help="directory for results and cache (default: a fresh temporary one)")
    args = parser.parse_args(argv)

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-real-cpu-"))
    os.environ["BENCH_CACHE_DIR"] = str(work / "cache")  # fresh: every stage is built, none read back
    from bench.cli import main as bench_main
    from bench.cli import passive_thread_waits

    passive_thread_waits()  # as `bench` does, before torch is imported
    command = ["run", *ISSUE_COMMAND, "--model", args.model, "--results", str(work / "results"),
               *ISSUE_OVERRIDES, *args.overrides]
    print("bench " + " ".join(command), flush=True)
    load_before = os.getloadavg()[0]
    start, cpu = time.perf_counter(), cpu_seconds()
    code = bench_main(command)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    report(work / "results")
    print(f"\nwall {wall:.1f} s, CPU {cpu:.1f} s (user + system, all threads); "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; exit code {code}")
    return code


def report(results: Path) -> None:
    from bench.run.summary import RunSummary
    from bench.toolkit.stage_clock import describe

    for path in sorted(results.glob("*/run.json")):
        info = json.loads(path.read_text())
        summary = RunSummary.from_json(info.get("summary"))
        print(f"\n{info['spec']['defense']['name']}: {info['status']}"
              + (f" ({info['error']})" if info.get("error") else ""))
        for stage, seconds in (info.get("stage_seconds") or {}).items():
            total = sum(v for k, v in seconds.items() if "/" not in k)
            source = info["stage_source"][stage]
            print(f"  {stage} stage, {source}, {total:.1f} s: {describe(seconds)}")
        if summary.attacked:
            reason = f"; not attacked, the model {summary.already_harmful}" if summary.already_harmful else ""
            print(f"  attack: {summary.steps_run} steps in {summary.attack_seconds or 0.0:.1f} s (probes "
                  f"{summary.probe_seconds or 0.0:.1f} s), outcome {summary.outcome}, steps-to-harm "
                  f"{'> ' if summary.censored else ''}{summary.steps_to_harm}{reason}")
        print(f"  run wall time {info['wall_seconds']:.1f} s")


if __name__ == "__main__":
    sys.exit(main())

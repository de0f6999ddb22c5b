"""Wall time of ``bench run --defense specdef --task <task>`` for the heavy tasks (text-to-image, LLM), cold and warm.

Each measurement runs the real command in a fresh subprocess (``python -c 'from bench.cli import main; ...'``) with
its own empty results directory, so no run is resumed:

* **cold**: an empty ``$BENCH_CACHE_DIR``, so the tiny released model (and judges) are trained first (targets: 6 min
  for the text-to-image tasks, 5 min for the LLM tasks);
* **warm**: the same cache again, now holding the released model (target ≤ 90 s).

Tasks may share a released model (sd-style and sd-concept do), so each task's cold run gets its own empty cache. The subprocesses run with
``--threads`` intra-op threads (``OMP_NUM_THREADS``; default 1: on a busy 2-core machine two threads made the tiny
UNet's steps up to 50× slower). Printed: the measured seconds next to the targets, and the warm run's summary table
(worst-case steps-to-harm, outcomes, retained utility) so the timing and the result come from the same run.

    python benchmarks/wall_time.py                             # sd-style and sd-concept, cold and warm
    python benchmarks/wall_time.py --tasks llm-harmful-qa,llm-relearn
    python benchmarks/wall_time.py --tasks sd-style --skip-cold
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COLD_TARGETS = {"sd": 360.0, "llm": 300.0}
WARM_TARGET = 90.0


def target(task: str, kind: str) -> float:
    return WARM_TARGET if kind == "warm" else COLD_TARGETS.get(task.split("-")[0], 360.0)


def bench_run(task: str, cache: Path, results: Path, threads: int, extra: list[str]) -> tuple[float, str, int]:
    """Seconds, combined output and exit code of one ``bench run`` in a fresh process."""
    env = {**os.environ, "BENCH_CACHE_DIR": str(cache), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    argv = ["run", "--defense", "specdef", "--task", task, "--results", str(results), "--quiet", *extra]
    code = f"import sys; from bench.cli import main; sys.exit(main({argv!r}))"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return time.perf_counter() - start, done.stdout + done.stderr, done.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="sd-style,sd-concept")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-cold", action="store_true", help="reuse $BENCH_CACHE_DIR (or the default cache)")
    parser.add_argument("--keep", metavar="DIR", help="keep results and caches under DIR")
    parser.add_argument("extra", nargs="*", help="extra `bench run` arguments, e.g. --seeds 0,1,2")
    args = parser.parse_args(argv)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="wall-time-"))
    rows = []
    for task in args.tasks.split(","):
        if args.skip_cold:
            from bench.cache import default_cache_root

            cache = default_cache_root()
        else:
            cache = root / f"cache-{task}"
            seconds, output, code = bench_run(task, cache, root / f"cold-{task}", args.threads, args.extra)
            rows.append((task, "cold", seconds, code))
            print(f"{task} cold: {seconds:.1f} s (exit {code})", flush=True)
        seconds, output, code = bench_run(task, cache, root / f"warm-{task}", args.threads, args.extra)
        rows.append((task, "warm", seconds, code))
        print(f"{task} warm: {seconds:.1f} s (exit {code})\n{output}", flush=True)
    print(f"\n{'task':<16} {'cache':<5} {'seconds':>8} {'target':>7}  ok")
    for task, kind, seconds, code in rows:
        ok = "yes" if code == 0 and seconds <= target(task, kind) else "NO"
        print(f"{task:<16} {kind:<5} {seconds:>8.1f} {target(task, kind):>7.0f}  {ok}")
    print(f"\n(threads={args.threads}, cpus={os.cpu_count()}, load average {os.getloadavg()[0]:.2f}; files in {root})")
    return 0 if all(code == 0 for *_, code in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

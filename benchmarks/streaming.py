"""Wave barriers vs streaming: one multi-suite sweep run suite by suite in waves (how ``bench sweep`` ran before)
and as one streamed pool of runs (how it runs now), both with ``--jobs N`` local workers on a warm stage cache.

*Waves*: each request of the sweep in turn, each with its own executor, each family's next runs (an LR search's full
runs, refinement) only after every run of the current wave of that suite has finished. *Streaming*: every request of
the task in one :func:`bench.exec.suite_run.run_suites` pool, each family's next runs queued as soon as its own finish. Prints
the wall time of each and the ratio measured in this one run, and checks that every run's metrics are identical
(wall-clock metrics excepted). A first, untimed pass fills the stage cache (defense training is not what is compared).

    python benchmarks/streaming.py                                    # llm-relearn, 3 defenses, 2 seeds
    python benchmarks/streaming.py --task sd-style --defenses specdef,tar --task-args budget=60
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from parallel import metrics  # (benchmarks/parallel.py: the same per-run comparison)


def requests(args):
    from bench.plan.request import SuiteRequest

    task_args = dict(kv.split("=", 1) for kv in args.task_args.split())
    task_args = {k: float(v) if "." in v or "e" in v else int(v) for k, v in task_args.items()}
    seeds = tuple(int(s) for s in args.seeds.split(","))
    return [SuiteRequest(task=args.task, defense=d, seeds=seeds, task_args=task_args) for d in args.defenses.split(",")]


def executor(session, cache_root: str, jobs: int, streams: bool):
    from bench.exec.local import LocalExecutor
    from bench.exec.worker import WorkerOptions

    options = WorkerOptions(results_dir=str(session.results_dir), cache_root=cache_root, threads=1)
    made = LocalExecutor(session, options, jobs=jobs)
    made.streams = streams  # (an instance attribute: waves, as an executor without streaming gets them)
    return made


def timed(mode: str, results: Path, cache, args) -> float:
    from bench.exec.suite_run import run_suite, run_suites
    from bench.run.stages import Session

    start = time.perf_counter()
    if mode == "waves":
        for request in requests(args):
            session = Session(results, cache, progress=False)
            with executor(session, str(cache.root), args.jobs, streams=False) as ex:
                run_suite(request, session, executor=ex)
    else:
        session = Session(results, cache, progress=False)
        with executor(session, str(cache.root), args.jobs, streams=True) as ex:
            for outcome in run_suites(requests(args), session, executor=ex):
                if isinstance(outcome, Exception):
                    raise outcome
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="llm-relearn")
    p.add_argument("--defenses", default="specdef,ga-retain,npo")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--task-args", default="curvature_iters=0 bootstrap=100",
                   help="space-separated task overrides (default: %(default)s)")
    args = p.parse_args(argv)

    from bench.cache import Cache

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cache = Cache(root / "cache")
        timed("streaming", root / "warm-up", cache, args)  # builds the released and defended stages
        walls = {mode: timed(mode, root / mode, cache, args) for mode in ("waves", "streaming")}
        outputs = {mode: metrics(root / mode) for mode in walls}
    identical = outputs["waves"] == outputs["streaming"]
    print(f"{args.task}, defenses {args.defenses} (+ none), seeds {args.seeds}, --jobs {args.jobs}: "
          f"{len(outputs['waves'])} runs, warm stage cache")
    for mode, wall in walls.items():
        print(f"  {mode:<10} {wall:7.1f} s")
    print(f"  streaming vs waves: {walls['waves'] / walls['streaming']:.2f}× faster; per-run results identical: "
          f"{identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())

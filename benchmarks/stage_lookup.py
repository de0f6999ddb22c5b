"""Worker start-up to a stage lookup, and a sweep's stage preparation on a warm cache: with the task built (before
issue 23) and keyed by the task's config and code alone (:meth:`bench.contracts.Task.stage_identity`).

    python benchmarks/stage_lookup.py [--repeats 3] [--tasks vision-digits,sd-style]

Each measurement is a fresh Python process (as a worker is), timed from outside: wall seconds and CPU seconds
(user + system of the child). ``lookup``: is a run's defended stage on disk? Before: build the task (import its
libraries, load its released model) to key the stage by its provenance; after: key it from config and code.
``prepare``: :meth:`bench.run.stages.Session.defended_to_prepare` over a 3-seed specdef+none request on a warm cache (what
the driver of ``--jobs N`` does before handing stages to workers); before: every stage named (its task built here,
then built or read again in a worker), after: the stages on disk skipped. The modes run interleaved, so the ratios
are paired; other processes on the machine disturb the walls (read the CPU seconds and the ranges). A private copy
of the cache's released models is used, its stages built once first.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from yardstick import yardstick  # the one machine yardstick, next to this script

CHILD = r"""
import sys, json
mode, task, defense = sys.argv[1], sys.argv[2], sys.argv[3]
from bench.cache import Cache
from bench.core.spec import make_spec
from bench.run.stages import Session
session = Session("unused-results", Cache(), progress=False)
quick = {"curvature_iters": 0, "bootstrap": 0}
if mode.startswith("lookup"):
    spec = make_spec(task=task, defense=defense, attack="full-ft", task_args=quick)
    if mode == "lookup-before":  # what a worker did before: build the task to key the stage by its provenance
        from bench.registry import TASKS
        from bench.run.stages import _build_task
        from bench.run.stage_cache import stage_key
        from bench.core.composition import plugin_classes
        from bench.registry import DEFENSES
        device = session.device_for(spec)
        built = _build_task(spec, session.cache, device, progress=False)
        key = stage_key(spec.stage_key("defended"), plugins=[TASKS.get(task), *plugin_classes(DEFENSES.get(defense))],
                        provenance=built.provenance(), device="portable" if built.stage_portable else device.type,
                        cache_root=session.cache.root, extra={"allow_function_drift": False})
        found = session._store.read(key) is not None
    else:
        found = session.on_disk(spec)
    print(json.dumps({"found": found}))
else:
    if mode == "prepare-before":
        Session.on_disk = lambda self, spec, stage="defended": False  # the driver before: no lookup by identity
    specs = [make_spec(task=task, defense=d, attack="full-ft", seed=s, task_args=quick)
             for d in ("none", defense) for s in (0, 1, 2)]
    print(json.dumps({"named": len(session.defended_to_prepare(specs))}))
"""


def child(mode: str, task: str, defense: str, env: dict) -> tuple[float, float, dict]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, mode, task, defense], env=env, capture_output=True, text=True,
                         check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, json.loads(out.stdout.strip().splitlines()[-1])


def warm(task: str, defense: str, env: dict) -> None:
    """Build the stages the measurements look up (once, in a child using the private cache)."""
    code = ("from bench.cache import Cache\nfrom bench.core.spec import make_spec\nfrom bench.run.stages import Session\n"
            "s = Session('unused-results', Cache(), progress=False)\n"
            f"for d in ('none', {defense!r}):\n    for seed in (0, 1, 2):\n"
            f"        s.defended(make_spec(task={task!r}, defense=d, attack='full-ft', seed=seed, "
            "task_args={'curvature_iters': 0, 'bootstrap': 0}))\n")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tasks", default="vision-digits,sd-style")
    parser.add_argument("--defense", default="specdef")
    args = parser.parse_args()
    from bench.cache import Cache

    source = Cache().root
    with tempfile.TemporaryDirectory(prefix="stage-lookup-") as tmp:
        root = Path(tmp) / "cache"
        shutil.copytree(source, root, ignore=shutil.ignore_patterns("stages", ".locks", "*.lock"), dirs_exist_ok=True) \
            if source.is_dir() else root.mkdir()
        env = {**os.environ, "BENCH_CACHE_DIR": str(root), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                              os.environ.get("PYTHONPATH", "")])}
        print(yardstick().line())
        for task in args.tasks.split(","):
            warm(task, args.defense, env)
            for what in ("lookup", "prepare"):
                samples: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
                answers = {}
                for _ in range(args.repeats):
                    for mode in ("before", "after"):
                        wall, cpu, answer = child(f"{what}-{mode}", task, args.defense, env)
                        samples[mode].append((wall, cpu))
                        answers[mode] = answer
                ratios = [b[0] / a[0] for b, a in zip(samples["before"], samples["after"])]
                cpu_ratios = [b[1] / a[1] for b, a in zip(samples["before"], samples["after"])]
                for mode in ("before", "after"):
                    walls, cpus = [w for w, _ in samples[mode]], [c for _, c in samples[mode]]
                    print(f"{task:<14} {what:<8} {mode:<6} wall {statistics.median(walls):6.2f} s "
                          f"[{min(walls):.2f}-{max(walls):.2f}]  cpu {statistics.median(cpus):6.2f} s  {answers[mode]}")
                print(f"{task:<14} {what:<8} before/after: wall x{statistics.median(ratios):.2f} "
                      f"[{min(ratios):.2f}-{max(ratios):.2f}], cpu x{statistics.median(cpu_ratios):.2f} "
                      f"[{min(cpu_ratios):.2f}-{max(cpu_ratios):.2f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())

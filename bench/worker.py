"""One run in a worker process: ``python -m bench.worker JOB.json`` (local executor), or :func:`execute_job` called
inside a Ray task or a Slurm job.

A job is plain JSON — the resolved spec and the worker options (results folder, cache root, device, threads, plugin
files to import, official, allow_function_drift) — so it travels to any process or machine as a path or a string,
never as a pickle of models. The worker rebuilds the spec (re-validating it), imports the plugins, and calls
:func:`bench.runner.run`, which writes the run directory itself; a plugin error becomes a ``failed`` run there. A
worker that dies before writing (``os._exit``, out of memory, a kill) is recorded by the executor instead.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping


@dataclass(frozen=True)
class WorkerOptions:
    """What every run of a sweep shares, whichever process runs it."""

    results_dir: str
    cache_root: str | None = None
    device: str | None = None
    threads: int | None = None
    """torch intra-op threads per run (None: torch's choice)."""
    plugins: tuple[str, ...] = field(default_factory=tuple)
    """Plugin files or modules to import before the run (``--plugin``)."""
    official: bool = True
    allow_function_drift: bool = False


def job_of(spec, options: WorkerOptions) -> dict[str, Any]:
    return {"spec": spec.to_json(), "options": {**asdict(options), "plugins": list(options.plugins)}}


def batch_job_of(specs, options: WorkerOptions) -> dict[str, Any]:
    """Several runs for one worker, one after another, sharing its in-memory stages (the local executor's unit)."""
    return {"specs": [spec.to_json() for spec in specs], "options": {**asdict(options), "plugins": list(options.plugins)}}


def execute_job(job: Mapping[str, Any]) -> str:
    """Run one job (``spec``) or a batch (``specs``, in order) in this process; returns the last run's status."""
    import torch

    from bench.cache import Cache
    from bench.registry import load_plugin
    from bench.runner import Session, run
    from bench.spec import RunSpec

    options = WorkerOptions(**{**job["options"], "plugins": tuple(job["options"].get("plugins", ()))})
    for plugin in options.plugins:
        load_plugin(plugin)
    if options.threads:
        torch.set_num_threads(options.threads)
    session = Session(results_dir=options.results_dir, cache=Cache(options.cache_root) if options.cache_root else None,
                      official=options.official, device=options.device,
                      allow_function_drift=options.allow_function_drift, progress=False)
    status = "success"
    for spec_json in job["specs"] if "specs" in job else [job["spec"]]:
        status = run(RunSpec.from_json(spec_json), session).status
    return status


def _exit_with_parent(interval: float = 1.0) -> None:
    """A worker whose sweep died (even by SIGKILL, which it cannot forward) exits too, instead of finishing a run
    that the resumed sweep will run again."""
    import os
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.worker JOB.json", file=sys.stderr)
        return 2
    _exit_with_parent()
    execute_job(json.loads(Path(args[0]).read_text()))
    return 0  # a failed run is still a completed job: its run.json says why


if __name__ == "__main__":
    sys.exit(main())

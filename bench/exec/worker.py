"""Runs in a worker process: a long-lived local worker (``python -m bench.exec.worker --serve JOBS_FD RESULTS_FD``), or
:func:`execute_job` called inside a Ray task or a Slurm job.

A job is plain JSON — the resolved spec and the worker options (results folder, cache root, device, threads, plugin
files to import, official, allow_function_drift) — so it travels to any process or machine as a string, never as a
pickle of models. The worker rebuilds the spec (re-validating it), imports the plugins, and calls
:func:`bench.run.runner.run`, which writes the run directory itself; a plugin error becomes a ``failed`` run there. A
worker that dies before writing (``os._exit``, out of memory, a kill) is recorded by the executor instead.

A serving worker (the local executor's) reads its options, then one job per line from the ``JOBS_FD`` pipe: a run,
a ``warm`` hint (tasks whose code to import before its first run), or a ``prepare`` job (build a run's defended stage
into the on-disk stage cache, so that the stages of a wave are built in parallel before its runs). It sends its
output (Python's and native code's) to the job's log file while the job lasts, and answers each run and each
``prepare`` job with one line on the ``RESULTS_FD`` pipe. It keeps one :class:`~bench.run.stages.Session` — imports,
tasks and the most recent stages in memory — from job to job, and exits when the jobs pipe closes.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

SERVE_STAGES = 2
"""Released and defended stages a serving worker keeps in memory (the least recently used is dropped first)."""


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

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "plugins": list(self.plugins)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WorkerOptions:
        return cls(**{**data, "plugins": tuple(data.get("plugins", ()))})


def job_of(spec, options: WorkerOptions) -> dict[str, Any]:
    return {"spec": spec.to_json(), "options": options.to_json()}


def _session(options: WorkerOptions, keep_stages: int | None = None):
    """Import the plugins, set the threads, and open the session the runs of this process share."""
    import torch

    from bench.cache import Cache
    from bench.registry import load_plugin
    from bench.run.stages import Session

    for plugin in options.plugins:
        load_plugin(plugin)
    if options.threads:
        torch.set_num_threads(options.threads)
    return Session(results_dir=options.results_dir, cache=Cache(options.cache_root) if options.cache_root else None,
                   official=options.official, device=options.device,
                   allow_function_drift=options.allow_function_drift, progress=False, keep_stages=keep_stages)


def execute_job(job: Mapping[str, Any]) -> str:
    """Run one job in this process; returns its status."""
    from bench.core.spec import RunSpec
    from bench.run.runner import run

    session = _session(WorkerOptions.from_json(job["options"]))
    return run(RunSpec.from_json(job["spec"]), session).status


@contextlib.contextmanager
def output_to(log_path: str, mode: int = os.O_TRUNC) -> Iterator[None]:
    """Send this process's output (file descriptors 1 and 2: Python's and native code's) to ``log_path`` while the
    block runs; ``mode`` ``os.O_APPEND`` keeps what the file holds."""
    sys.stdout.flush()
    sys.stderr.flush()
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | mode, 0o644)
    saved = os.dup(1), os.dup(2)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def serve(jobs_fd: int, results_fd: int) -> int:
    """The serving loop (see the module docstring): options, then runs, until the jobs pipe closes."""
    import traceback

    from bench.core.spec import RunSpec
    from bench.run.runner import run

    for fd in (jobs_fd, results_fd):  # a process a plugin starts must not hold the executor's pipes open
        os.set_inheritable(fd, False)
    jobs = os.fdopen(jobs_fd, "r")
    header = jobs.readline()
    if not header:
        return 0
    session = _session(WorkerOptions.from_json(json.loads(header)), keep_stages=SERVE_STAGES)
    for line in iter(jobs.readline, ""):
        job = json.loads(line)
        if "warm" in job:  # a hint sent ahead of the runs: import the tasks' code (e.g. diffusers) now
            _warm(job["warm"])
            continue
        if "prepare" in job:
            with output_to(job["log"], os.O_APPEND):
                answer = _prepare(job["prepare"], session)
            os.write(results_fd, (json.dumps(answer) + "\n").encode())
            continue
        # The executor created the log (a fresh worker's startup output is already in it): append.
        with output_to(job["log"], os.O_APPEND):
            try:
                status = run(RunSpec.from_json(job["spec"]), session).status
            except BaseException:
                traceback.print_exc()  # into the run's log, whose tail the executor records with the failed run
                raise
        os.write(results_fd, (json.dumps({"run_id": job["run_id"], "status": status}) + "\n").encode())
    return 0


def _prepare(spec_json: Mapping[str, Any], session) -> dict[str, Any]:
    """Build (or read) a run's defended stage, which the session writes to the on-disk stage cache, and keep it in
    memory for the runs this worker may take on it. A failure is answered, not raised (its traceback goes to the log
    here): ``bad_input`` when it is a :class:`~bench.errors.BenchError` that stops requests (the sweep stops the
    requests needing the stage, with this message), else the sweep records the runs needing it as failed."""
    import traceback

    from bench.core.spec import RunSpec
    from bench.errors import BenchError

    try:
        spec = RunSpec.from_json(spec_json)
        if session.on_disk(spec):  # built already (known without building the task): the run reads it
            return {"prepared": True, "error": None}
        session.defended(spec)
    except Exception as err:  # noqa: BLE001 - see the docstring
        traceback.print_exc()
        return {"prepared": False, "error": f"{type(err).__name__}: {err}", "message": str(err),
                "type": type(err).__name__, "bad_input": isinstance(err, BenchError) and err.stops_request}
    return {"prepared": True, "error": None}


def _warm(tasks: list[str]) -> None:
    """Import the named tasks' plugins and torch's optimizer machinery, so the first run does not pay for them; a
    task that fails to load is left for its run to report."""
    import torch

    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # the first optimizer imports torch._dynamo (1-3 s)
    from bench.registry import TASKS

    for name in tasks:
        try:
            TASKS.get(name)
        except Exception:  # noqa: BLE001 - the run that needs it records the error
            pass


def _exit_with_parent(interval: float = 1.0) -> None:
    """A worker whose sweep died (even by SIGKILL, which it cannot forward) exits too, instead of finishing a run
    that the resumed sweep will run again."""
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
    if len(args) != 3 or args[0] != "--serve" or not all(a.isdigit() for a in args[1:]):
        print("usage: python -m bench.exec.worker --serve JOBS_FD RESULTS_FD (started by the local executor)",
              file=sys.stderr)
        return 2
    _exit_with_parent()
    return serve(int(args[1]), int(args[2]))  # a failed run is still a finished job: its run.json says why


if __name__ == "__main__":
    sys.exit(main())

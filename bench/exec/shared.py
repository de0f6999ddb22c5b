"""What the Ray and Slurm executors share: worker options that mean the same on every machine, reading back the run
a remote worker wrote, and recording the run of a worker that died before writing it.

A remote run writes its own directory under the results folder, exactly as a local worker does; the driver only
reads ``run.json`` back. That is why the results folder of a multi-machine sweep must be on storage every node
mounts at the same path (and the stage cache should be, or each node builds its own stages).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core.spec import RunSpec
from bench.errors import DataError
from bench.exec.worker import WorkerOptions
from bench.plan.planner import RunRecord
from bench.run.results import METRICS, RUN_JSON, read_run_json, successful_run
from bench.run.summary import RunSummary

LOG_LINES = 40
"""Lines of a dead run's log kept in its failed run.json (as the local executor keeps)."""

SHARED_STORAGE_GRACE_S = 30.0
"""How long a run that reported success may take to show its run.json to the driver (network file systems cache
directory listings for a while)."""


@dataclass(frozen=True)
class StageFailure:
    """Why a worker could not prepare a defended stage. ``bad_input``: the build raised a
    :class:`~bench.errors.BenchError` that stops requests (a missing file, a config that matches nothing), which
    stops the requests that need the stage, as it would in one process; otherwise (a crash, a defense whose training
    diverged, a worker that died or ran out of memory, a timeout) the runs that need it are recorded as failed with
    ``error`` and the sweep goes on."""

    error: str
    bad_input: bool
    message: str = ""
    """The error's own message, without its type (what a bad-input stop prints)."""
    type: str = ""
    """The error's class name in the worker."""

    def as_error(self) -> Exception:
        """The bad-input error as the caller's process would have raised it (its :mod:`bench.errors` class)."""
        from bench import errors

        cls = getattr(errors, self.type, errors.BenchError)
        if not (isinstance(cls, type) and issubclass(cls, errors.BenchError)):
            cls = errors.BenchError
        return cls(self.message or self.error)


def portable(options: WorkerOptions) -> WorkerOptions:
    """``options`` with absolute paths (results, cache, plugin files), so a worker whose working directory differs —
    a Ray worker, a Slurm job on another node — finds the same files. Plugin modules (dotted names) stay as given."""

    def absolute(path: str) -> str:
        return str(Path(path).expanduser().resolve())

    plugins = tuple(absolute(p) if p.endswith(".py") or Path(p).exists() else p for p in options.plugins)
    return dataclasses.replace(options, results_dir=absolute(options.results_dir), plugins=plugins,
                               cache_root=absolute(options.cache_root) if options.cache_root else None)


def clear_previous(spec: RunSpec, options: WorkerOptions) -> Path:
    """Remove a failed earlier attempt's run.json (this attempt writes its own); returns where it will be."""
    run_json = Path(options.results_dir) / spec.run_id / RUN_JSON
    run_json.unlink(missing_ok=True)
    return run_json


def read_back(spec: RunSpec, run_json: Path, *, wait: float = 0.0) -> RunRecord | None:
    """The record of a run that wrote its own run.json, or None when there is none (after waiting up to ``wait``
    seconds for a shared file system to show it). A success is what :func:`bench.run.results.successful_run` says is
    one: a run.json that says ``success`` beside a metrics file that does not read is a failed (``RunCorrupt``) run."""
    deadline = time.monotonic() + wait
    while not run_json.is_file():
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.5)
    done = successful_run(run_json.parent)
    if done is not None:
        try:
            return RunRecord(spec, "success", RunSummary.from_json(done.get("summary")), None)
        except DataError as err:  # written by other code: no result this code can use; resume reruns it
            return RunRecord(spec, "failed", RunSummary(), f"RunCorrupt: {err}")
    try:
        info = read_run_json(run_json.parent)
    except DataError as err:
        return RunRecord(spec, "failed", RunSummary(), f"RunCorrupt: {err}")
    if not isinstance(info, dict):
        return RunRecord(spec, "failed", RunSummary(), f"RunCorrupt: {run_json} does not hold a JSON object")
    try:
        summary = RunSummary.from_json(info.get("summary"))
    except DataError as err:
        return RunRecord(spec, "failed", RunSummary(), f"RunCorrupt: {err}")
    if info.get("status") == "success":  # a success whose metrics file does not read is no result: resume reruns it
        return RunRecord(spec, "failed", summary, f"RunCorrupt: {run_json.parent / METRICS} is missing or unreadable")
    return RunRecord(spec, info.get("status", "failed"), summary, info.get("error"))


def log_tail(path: Path | None) -> str:
    if path is None or not path.is_file():
        return ""
    return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-LOG_LINES:])


def record_death(spec: RunSpec, session, error: str, *, started_at: str, wall: float, log: Path | None,
                 details: dict[str, Any]) -> RunRecord:
    """Write the ``failed`` run of a worker that died (or was stopped) before writing it; ``details`` go into its
    run.json under ``worker`` with the log's path and last lines. A success the run recorded meanwhile (a Ray task
    that finished just after its timeout, say) is kept and returned: a late result is never overwritten."""
    from bench.run.runner import record_failure

    done = successful_run(Path(session.results_dir) / spec.run_id)
    if done is not None:
        return RunRecord(spec, "success", RunSummary.from_json(done.get("summary")), None)
    result = record_failure(spec, session, error, started_at=started_at, wall=wall,
                            details={**details, "log": str(log) if log else None, "log_tail": log_tail(log)})
    return RunRecord(spec, result.status, result.summary, error)

"""Runs that are one trajectory: run it once, record it for each (issue 23, lever 4).

Some runs of different attacks are the very same computation: on a model without linear chains every adaptive
attack falls back to the same plain fine-tuning (:mod:`attacks._adaptive`). An attack says so before its run,
from the defended model's structure (:meth:`~bench.contracts.Attack.shared_run`); the runner then keys the run by
that description plus everything else the trajectory depends on (:func:`shared_key`: the defended stage, the
run's purpose, the device, whether function drift is allowed) and asks :func:`claim` for a run that already
computed it.

The first run with a key executes and, once recorded as a success, is published as the key's source
(``<results>/.shared/<key>.json``). Every later run with that key — in this process, another worker or another
driver sharing the results folder — waits for the key's lock while the source runs, then records the source's
attack (probe curve, final evaluation, summary) as its own, marked ``reused_from=<source run id>`` in run.json's
summary and in metrics.parquet (a ``summary``/``reused_from`` row whose split is the source's run id); its released
and defended rows are its own (the same stages). A source is reused only while it is a success
(:func:`bench.run.results.successful_run`) made by the current code (its recorded fingerprint matches, and it is not
kept stale): else the run executes and becomes the key's source. Resume needs nothing more: a reused record is a
success with its own fingerprint, rerun when the code changes like any other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from bench.core.metrics import AttackMetrics
from bench.errors import DataError
from bench.run import results
from bench.run.summary import RunSummary

SHARED = ".shared"
"""Subfolder of the results folder holding each key's lock and source pointer."""
REUSED_PHASES = ("attack", "post_attack", "summary")
"""What a reusing run copies from its source: the rows the attack produced (the stages' rows are its own)."""
OWN_SUMMARY_METRICS = ("wall_seconds", "wave")
"""Summary rows each record writes for itself (:func:`bench.run.runner._record`), never copied."""


def shared_key(description: Mapping[str, Any], *, defended_stage: str, purpose: str, device: str,
               allow_function_drift: bool) -> str:
    """The key of a shared trajectory: the attack's description and everything else the run depends on."""
    body = {"shared": description, "defended": defended_stage, "purpose": purpose, "device": device,
            "allow_function_drift": allow_function_drift}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:24]


@contextlib.contextmanager
def claim(results_dir: Path, key: str) -> Iterator[Path | None]:
    """Hold ``key``'s lock for the block, yielding the run directory to reuse, or None: then the caller runs, and
    :func:`publish` es its run (before the block ends) if it succeeded."""
    import filelock

    folder = Path(results_dir) / SHARED
    folder.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(folder / f"{key}.lock")):
        yield _source(Path(results_dir), key)


def publish(results_dir: Path, key: str, run_id: str) -> None:
    """Name ``run_id`` (recorded as a success) the source of ``key``."""
    folder = Path(results_dir) / SHARED
    results._atomic_write_bytes(folder / f"{key}.json",
                                lambda tmp: Path(tmp).write_text(json.dumps({"run_id": run_id})))


def _source(results_dir: Path, key: str) -> Path | None:
    """The key's source run if it can be reused now (see the module docstring)."""
    from bench.core.spec import RunSpec
    from bench.run.fingerprint import changes, code_fingerprint

    try:
        run_id = json.loads((results_dir / SHARED / f"{key}.json").read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    directory = results_dir / str(run_id)
    info = results.successful_run(directory)
    if info is None or info.get("stale"):
        return None
    try:
        if RunSummary.from_json(info.get("summary")).reused_from:
            return None
    except DataError:  # a summary this code cannot read is no source
        return None
    try:
        current = code_fingerprint(RunSpec.from_json(info["spec"]))
    except Exception:  # noqa: BLE001 - a source whose plugins no longer load is no source
        return None
    return None if changes(info.get("fingerprint"), current) else directory


def reused_attack(source: Path, destination: Path
                  ) -> tuple[list[dict[str, Any]], RunSummary, AttackMetrics]:
    """The source run's attack as a reusing run records it: its rows (and samples image, copied into
    ``destination``), its summary, and its metrics, marked ``reused_from``."""
    info = results.read_run_json(source)
    table = results.read_metrics_file(source / results.METRICS).to_pylist()
    columns = [name for name, _ in results.ROW_COLUMNS]
    rows = [{name: row[name] for name in columns} for row in table
            if row["phase"] in REUSED_PHASES
            and not (row["phase"] == "summary" and row["metric"] in OWN_SUMMARY_METRICS)]
    rows.append(results.metric_row("summary", "reused_from", None, split=source.name))
    recorded = RunSummary.from_json(info.get("summary"))
    # what is the reusing run's own (its released model, its wave) is not copied; the runner records it
    summary = dataclasses.replace(recorded, reused_from=source.name, samples=None, released_already_harmful=None,
                                  wave=None, wave_kind=None)
    if recorded.samples and (source / recorded.samples).is_file():
        destination.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / recorded.samples, destination / recorded.samples)
        summary = dataclasses.replace(summary, samples=recorded.samples)
    return rows, summary, summary.metrics()

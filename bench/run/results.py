"""Result files: one directory per run with ``run.json`` and a long-format ``metrics.parquet``.

The Parquet schema is declared explicitly (:data:`SCHEMA`) and versioned (:data:`SCHEMA_VERSION`). One row per
(run, phase, step, split, metric); run-level attributes (task, defense, attack, hashes, seed, threat model, status,
outcome) repeat on every row so any slice of the table is self-describing. Files are written to a temporary name and
renamed, and ``run.json`` is written last: a run whose ``run.json`` says ``success`` has complete results.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.errors import ConfigError, DataError

SCHEMA_VERSION = 1
RUN_JSON = "run.json"
METRICS = "metrics.parquet"
SAMPLES_PNG = "samples.png"
"""Per attack run, when the task previews samples: the defended model's samples before and after the attack."""

PHASES = ("released", "defense", "defended", "attack", "post_attack", "summary")
"""``defense``: a trained defense's loss terms per training step (metric = the term, step = the training step)."""

RUN_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("schema_version", pa.int16()),
    ("run_id", pa.string()),
    ("task", pa.string()),
    ("tier", pa.string()),
    ("model", pa.string()),
    ("defense", pa.string()),
    ("defense_label", pa.string()),
    ("defense_hash", pa.string()),
    ("defense_config", pa.string()),
    ("attack", pa.string()),
    ("attack_label", pa.string()),
    ("attack_family", pa.string()),
    ("attack_hash", pa.string()),
    ("attack_config", pa.string()),
    ("knowledge", pa.string()),
    ("purpose", pa.string()),
    ("seed", pa.int64()),
    ("status", pa.string()),
    ("outcome", pa.string()),
    ("diverged", pa.bool_()),
    ("official", pa.bool_()),
)
ROW_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("phase", pa.string()),
    ("step", pa.int64()),
    ("split", pa.string()),
    ("metric", pa.string()),
    ("value", pa.float64()),
    ("n", pa.int64()),
    ("stderr", pa.float64()),
    ("ci_low", pa.float64()),
    ("ci_high", pa.float64()),
    ("censored", pa.bool_()),
)
SCHEMA = pa.schema(
    [pa.field(name, dtype) for name, dtype in RUN_COLUMNS + ROW_COLUMNS],
    metadata={"bench.schema_version": str(SCHEMA_VERSION)},
)


def metric_row(
    phase: str,
    metric: str,
    value: float | None,
    *,
    step: int | None = None,
    split: str = "",
    n: int | None = None,
    stderr: float | None = None,
    ci: tuple[float, float] | None = None,
    censored: bool | None = None,
) -> dict[str, Any]:
    """One measurement, before the run-level columns are attached (``value`` None: not measured, stored as NaN)."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}")
    return {
        "phase": phase,
        "step": step,
        "split": split,
        "metric": metric,
        "value": float(value) if value is not None else math.nan,
        "n": n,
        "stderr": stderr,
        "ci_low": ci[0] if ci else None,
        "ci_high": ci[1] if ci else None,
        "censored": censored,
    }


def to_table(run_columns: Mapping[str, Any], rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Build the Arrow table of one run: run-level columns repeated on every measurement row."""
    rows = list(rows)
    data: dict[str, list] = {}
    for name, _ in RUN_COLUMNS:
        value = SCHEMA_VERSION if name == "schema_version" else run_columns.get(name)
        data[name] = [value] * len(rows)
    for name, _ in ROW_COLUMNS:
        data[name] = [row.get(name) for row in rows]
    return pa.Table.from_pydict(data, schema=SCHEMA)


def _atomic_write_bytes(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_writable(results_dir: Path) -> None:
    """Create ``results_dir`` if needed and check that files can be written in it, before any work starts."""
    results_dir = Path(results_dir)
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=results_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"cannot write results to {results_dir}: {err.strerror or err}") from err


def write_run(directory: Path, run_json: Mapping[str, Any], table: pa.Table) -> None:
    """Write ``metrics.parquet`` then ``run.json`` (the completion marker), each atomically."""
    _atomic_write_bytes(directory / METRICS, lambda tmp: pq.write_table(table, tmp))
    text = json.dumps(run_json, indent=2, sort_keys=True, default=str, allow_nan=True)
    _atomic_write_bytes(directory / RUN_JSON, lambda tmp: Path(tmp).write_text(text))


def rewrite_run_json(directory: Path, run_json: Mapping[str, Any]) -> None:
    """Replace a recorded run's ``run.json`` (atomically), e.g. to mark it stale (:func:`bench.run.fingerprint.mark_stale`)."""
    text = json.dumps(run_json, indent=2, sort_keys=True, default=str, allow_nan=True)
    _atomic_write_bytes(Path(directory) / RUN_JSON, lambda tmp: Path(tmp).write_text(text))


def read_run_json(directory: Path) -> dict[str, Any]:
    path = Path(directory) / RUN_JSON
    if not path.is_file():
        raise DataError(f"{directory} is not a run directory (no {RUN_JSON})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON: {err}") from err


def run_directories(results_dir: Path) -> list[Path]:
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        return []
    return sorted(p.parent for p in results_dir.glob(f"*/{RUN_JSON}"))


def successful_run(directory: Path) -> dict[str, Any] | None:
    """The one answer to "is this run already done?": the run's ``run.json`` when it records a success and its
    metrics file reads, else None (absent, failed, unreadable ``run.json``, or a missing or truncated metrics file:
    no result to reuse, the run runs again). A sweep's resume (:func:`completed_run_ids`), a run's claim on its
    directory (:mod:`bench.run.run_claim`) and the executors reading a worker's run back all decide with it."""
    directory = Path(directory)
    try:
        info = json.loads((directory / RUN_JSON).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(info, dict) or info.get("status") != "success" or not readable_metrics(directory / METRICS):
        return None
    return info


def completed_run_ids(results_dir: Path) -> set[str]:
    """The runs under ``results_dir`` that :func:`successful_run` finds done: a sweep skips these."""
    done = set()
    for directory in run_directories(results_dir):
        info = successful_run(directory)
        if info is not None:
            done.add(info.get("run_id", directory.name))
    return done


def readable_metrics(path: Path) -> bool:
    """The metrics file exists and its Parquet footer reads (a truncated file is not a completed run)."""
    if not path.is_file():
        return False
    try:
        pq.read_metadata(path)
    except (pa.ArrowException, OSError):
        return False
    return True


class CorruptRunWarning(UserWarning):
    """A run's metrics file could not be read: the run is skipped, and a resumed sweep re-runs it."""


def read_metrics_file(path: Path) -> pa.Table:
    """One run's metrics file. A run's file is a few kilobytes, so ``pq.read_table``'s dataset discovery and thread
    pool cost more than the read: one file, one thread (``benchmarks/read_metrics.py``: the same tables in 1.5x
    fewer CPU seconds, 1,500 files of the tiny leaderboard's folder)."""
    return pq.ParquetFile(path).read(use_threads=False)


def read_metrics(results_dir: Path, *, include_failed: bool = True, run_ids: Iterable[str] | None = None) -> pa.Table:
    """Concatenate the metrics of every run under ``results_dir`` (checking each file's schema version).

    ``run_ids``: read only these runs' files (a run directory is named by its run id), so that a caller interested
    in a few runs does not pay for the whole history of the folder.
    """
    tables, corrupt = [], []
    directories = run_directories(results_dir)
    if run_ids is not None:
        wanted = set(run_ids)
        directories = [d for d in directories if d.name in wanted]
    for directory in directories:
        path = directory / METRICS
        if not path.is_file():
            continue
        try:
            table = read_metrics_file(path)
        except (pa.ArrowException, OSError) as err:
            corrupt.append(f"{directory.name} ({err})")
            continue
        version = (table.schema.metadata or {}).get(b"bench.schema_version", b"?").decode()
        if version != str(SCHEMA_VERSION):
            raise DataError(f"{path} has schema version {version}; this bench reads version {SCHEMA_VERSION}")
        if not include_failed:
            table = table.filter(pc.equal(table["status"], "success"))
        tables.append(table.cast(SCHEMA))
    if corrupt:
        warnings.warn(f"{len(corrupt)} run(s) under {results_dir} skipped, their metrics.parquet unreadable (a resumed "
                      f"`bench run`/`bench sweep` into this folder re-runs them): " + "; ".join(corrupt),
                      CorruptRunWarning, stacklevel=2)
    if not tables:
        return SCHEMA.empty_table()
    return pa.concat_tables(tables)

"""The measuring tools of issue 23: the machine yardstick and the results comparison the goal benchmark relies on."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _write(root: Path, run: str, rows: list[tuple], outcome: str = "harmed", pruned_at: int | None = None) -> None:
    (root / run).mkdir(parents=True)
    columns = list(zip(*rows))
    table = pa.table({"phase": columns[0], "step": pa.array(columns[1], pa.int64()), "split": columns[2],
                      "metric": columns[3], "value": pa.array(columns[4], pa.float64())})
    pq.write_table(table, root / run / "metrics.parquet")
    (root / run / "run.json").write_text(json.dumps({"outcome": outcome, "summary": {"pruned_at_bound": pruned_at}}))


ROWS = [("summary", None, None, "steps_to_harm", 54.0), ("summary", None, None, "attack_seconds", 12.5),
        ("attack", 41, "replay", "harm", 0.2), ("attack", 41, "replay", "utility", 0.9),
        ("attack", 41, "replay", "usable", 1.0), ("post_attack", None, "eval", "harm", 0.62)]


def test_same_results_accepts_timings_and_unmeasured_replay_utilities_and_nothing_else(tmp_path):
    same_results = _load("same_results")
    _write(tmp_path / "a", "r1", ROWS)
    screened = [(p, s, sp, m, math.nan if (sp, m) in {("replay", "utility"), ("replay", "usable")} else v)
                for p, s, sp, m, v in ROWS]
    screened[1] = ("summary", None, None, "attack_seconds", 7.0)
    _write(tmp_path / "b", "r1", screened)
    assert same_results.differences(tmp_path / "a", tmp_path / "b") == []
    changed = [r if r[3] != "steps_to_harm" else (*r[:4], 55.0) for r in ROWS]
    _write(tmp_path / "c", "r1", changed)
    assert [d.split(": ", 1)[1] for d in same_results.differences(tmp_path / "a", tmp_path / "c")] == [
        "summary/None/None/steps_to_harm: 54.0 vs 55.0"]
    harm = [r if r[2:4] != ("replay", "harm") else (*r[:4], 0.3) for r in ROWS]
    _write(tmp_path / "d", "r1", harm, outcome="broken")
    assert len(same_results.differences(tmp_path / "a", tmp_path / "d")) == 2  # the outcome and the replayed harm
    _write(tmp_path / "e", "r2", ROWS)
    assert same_results.differences(tmp_path / "a", tmp_path / "e") == [f"run r1 only in {tmp_path / 'a'}",
                                                                        f"run r2 only in {tmp_path / 'e'}"]


def test_same_results_compares_a_run_stopped_at_the_bound_on_one_side_up_to_its_stop(tmp_path):
    same_results = _load("same_results")
    full = [("defended", None, None, "harm", 0.1), ("attack", 20, None, "harm", 0.1), ("attack", 40, None, "harm", 0.2),
            ("attack", 60, None, "harm", 0.3), ("summary", None, None, "steps_to_harm", 200.0)]
    _write(tmp_path / "a", "r1", full, outcome="resisted")
    _write(tmp_path / "b", "r1", [*full[:3], ("summary", None, None, "steps_to_harm", 40.0)], outcome="pruned",
           pruned_at=40)
    assert same_results.differences(tmp_path / "a", tmp_path / "b") == []
    assert same_results.scheduling_differences(tmp_path / "a", tmp_path / "b") == [
        "run r1: stopped at the bound at step None vs 40 (None: not stopped)"]
    _write(tmp_path / "c", "r1", [full[0], ("attack", 20, None, "harm", 0.15), full[2]], outcome="pruned", pruned_at=40)
    assert [d.split(": ", 1)[1] for d in same_results.differences(tmp_path / "a", tmp_path / "c")] == [
        "attack/20/None/harm: 0.1 vs 0.15"]  # before the stop, every number must still agree


def test_the_yardstick_prints_one_line_and_restores_the_thread_count():
    torch = pytest.importorskip("torch")
    yardstick = _load("yardstick")
    threads = torch.get_num_threads()
    figure = yardstick.yardstick(repeats=2, size=128)
    assert 0 < figure.median <= figure.best and torch.get_num_threads() == threads
    line = figure.line()
    assert line.startswith("yardstick: ") and "GFLOP/s (fp32 128^3 GEMM" in line and "\n" not in line

"""Runs in shared folders and reused processes: two drivers sharing a results folder execute each run once (the
second waits and reuses the first's result), a dead owner's claim is taken over at once, a driver never overwrites
a success recorded late, and each run of a long-lived process records its own peak memory and stage sources."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pandas as pd
import pytest

from bench.run.results import METRICS, RUN_JSON
from bench.run.run_claim import CLAIM_LOCK, claimed_run, owner_of


def _record_success(run_dir, value):
    pd.DataFrame({"x": [value]}).to_parquet(run_dir / METRICS)
    (run_dir / RUN_JSON).write_text(json.dumps({"status": "success", "summary": {"outcome": value}}))


def test_a_run_claimed_by_another_is_waited_for_and_reused_not_run_again(tmp_path):
    run_dir, executed, reused = tmp_path / "run-a", [], []
    started = threading.Event()

    def owner():
        def execute():
            started.set()
            time.sleep(0.5)  # the second process arrives while this one runs
            _record_success(run_dir, "first")
            executed.append("first")
        claimed_run(run_dir, execute, lambda info: reused.append(("first", info)))

    thread = threading.Thread(target=owner)
    thread.start()
    started.wait(5)
    claimed_run(run_dir, lambda: executed.append("second"), lambda info: reused.append(("second", info)))
    thread.join()
    assert executed == ["first"]
    assert reused == [("second", {"status": "success", "summary": {"outcome": "first"}})]
    assert owner_of(run_dir)["pid"] == os.getpid()


def test_a_failed_run_is_run_again_by_the_next_claimant(tmp_path):
    run_dir, executed = tmp_path / "run-b", []
    claimed_run(run_dir, lambda: (run_dir / RUN_JSON).write_text('{"status": "failed"}'), lambda info: None)
    claimed_run(run_dir, lambda: executed.append("again"), lambda info: executed.append("reused"))
    assert executed == ["again"]


def test_the_claim_of_a_process_that_died_is_taken_over_at_once(tmp_path):
    run_dir = tmp_path / "run-c"
    run_dir.mkdir()
    script = textwrap.dedent(f"""
        import filelock, os
        filelock.FileLock({str(run_dir / CLAIM_LOCK)!r}).acquire()
        os._exit(3)  # dies holding the claim, without releasing it
    """)
    assert subprocess.run([sys.executable, "-c", script]).returncode == 3
    executed = []
    start = time.monotonic()
    claimed_run(run_dir, lambda: executed.append(1), lambda info: None)
    assert executed == [1] and time.monotonic() - start < 2


def test_a_dead_workers_failure_never_overwrites_a_success_recorded_late(tmp_path, cache):
    from bench.core.spec import make_spec
    from bench.exec.shared import record_death
    from bench.run.stages import Session

    session = Session(tmp_path, cache, progress=False)
    spec = make_spec(task="vision-digits", defense="none", attack="full-ft")
    run_dir = tmp_path / spec.run_id
    run_dir.mkdir()
    _record_success(run_dir, "late")  # e.g. a Ray task that finished just after the driver's timeout
    record = record_death(spec, session, "RunTimeout: over 10 s", started_at="t", wall=10.0, log=None, details={})
    assert record.status == "success" and record.summary.outcome == "late"
    assert json.loads((run_dir / RUN_JSON).read_text())["status"] == "success"


@pytest.mark.slow  # two whole `bench sweep` processes: the measurement of benchmarks/two_drivers.py
def test_two_identical_sweeps_started_at_once_run_each_run_once_and_both_print_the_table(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "two_drivers.py"
    spec = importlib.util.spec_from_file_location("two_drivers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = module.two_drivers(tmp_path, jobs=1, budget=10, seeds="0")
    for code, out, err in found["outputs"]:
        assert code == 0, err
        assert any(line.startswith("none ") for line in out.splitlines())
        assert any(line.startswith("specdef ") for line in out.splitlines())
    assert found["runs"] == 6 and sum(found["executed"]) == 6  # none and specdef × 3 attacks, each executed once


def test_each_run_records_its_own_peak_memory_in_a_reused_process(tmp_path, cache, isolated_registries):
    import torch

    from attacks.full_ft import FullFineTune
    from bench.core.spec import make_spec
    from bench.registry import ATTACKS
    from bench.run.runner import run
    from bench.run.stages import Session

    @ATTACKS.register("hungry-ft")
    class HungryFineTune(FullFineTune):
        """Full fine-tuning that also touches 400 MB (a bigger model, say)."""

        def run(self, model, task, cfg, *, generator, monitor):
            ballast = torch.ones(100 * 2**20)  # 400 MB, written, so resident
            ballast.add_(1)
            del ballast
            return super().run(model, task, cfg, generator=generator, monitor=monitor)

    session = Session(tmp_path, cache, progress=False)  # one session: one long-lived process's runs
    quick = {"budget": 10, "curvature_iters": 0, "bootstrap": 0}
    big, small = (make_spec(task="vision-digits", defense="none", attack=name, task_args=quick, attack_args={"lr": 1e-3})
                  for name in ("hungry-ft", "full-ft"))
    peaks = {}
    for spec in (big, small):
        result = run(spec, session)
        assert result.status == "success", result.error
        info = json.loads((tmp_path / spec.run_id / RUN_JSON).read_text())
        assert info["peak_rss_scope"] == "run"
        peaks[spec.attack.name] = info["peak_rss_mb"]
    assert peaks["hungry-ft"] > peaks["full-ft"] + 300  # the second run does not inherit the first's high-water mark


def test_a_stage_evicted_from_memory_does_not_lend_its_memory_source_to_a_new_one(tmp_path, cache, monkeypatch):
    from bench.run import stages
    from bench.run.stages import Session

    class Stage:
        def __init__(self):
            self.source, self.timings = "built", {}

    session = Session(tmp_path, cache, progress=False)
    first = Stage()
    assert session.stage_timing(first)["source"] == "built"
    assert session.stage_timing(first)["source"] == "memory"  # a second run on the same stage
    # An evicted stage's id is free for the next object: make the next stage get the same id.
    monkeypatch.setattr(stages, "id", lambda obj: 42, raising=False)
    assert session.stage_timing(first)["source"] == "built"  # (first reported under the colliding id)
    del first
    assert session.stage_timing(Stage())["source"] == "built"

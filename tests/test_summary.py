"""RunSummary: what real runs of each outcome record reads back unchanged, run.json keeps the summary it had before
the summary was typed (a fixture recorded from main), old run.json files still read, bad ones fail with one line, and
every run of a short real sweep records its planner wave, which the attacker's order of trials reads."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from bench.core.spec import make_spec
from bench.errors import DataError
from bench.exec.suite_run import run_suite
from bench.plan.request import SuiteRequest
from bench.run.results import read_run_json, run_directories
from bench.run.runner import run
from bench.run.stages import Session
from bench.run.summary import ATTACK_FIELDS, RunSummary, UtilityStanding

BEFORE = json.loads((Path(__file__).parent / "data" / "summary_before.json").read_text())
"""Summaries of fixed-seed runs recorded by tests/data/record_summary_before.py from main, before RunSummary."""
TIMINGS = {"attack_seconds", "probe_seconds", "replay_seconds", "snapshot_seconds"}
FAST = {"curvature_iters": 0, "bootstrap": 100}


def _spec(defense="none", attack_args=None, purpose="attack"):  # as the recording script's
    return make_spec(task="vision-digits", defense=defense, attack="full-ft", seed=0, task_args=FAST,
                     attack_args={"budget": 100, **(attack_args or {})}, purpose=purpose)


CASES = {
    "harmed": lambda: _spec(attack_args={"optimizer": "adam", "lr": 1e-2}),
    "resisted": lambda: _spec(attack_args={"optimizer": "adam", "lr": 1e-9}),
    "broken": lambda: _spec(defense="specdef", attack_args={"optimizer": "sgd", "lr": 1.0}),
    "pruned": lambda: dataclasses.replace(_spec(attack_args={"optimizer": "adam", "lr": 1e-4}),
                                          stop_at=10, bound_by=("0123456789abcdef",)),
    "probe": lambda: _spec(attack_args={"optimizer": "adam", "lr": 1e-2, "budget": 10}, purpose="lr-probe"),
}


def _text(value) -> str:
    """JSON text, so that NaN equals NaN."""
    return json.dumps(value, sort_keys=True, allow_nan=True)


def _close(a, b, rel: float = 0.02) -> bool:
    """Equal, floats within ``rel``: the fixture was recorded on another CPU, and float kernels differ between CPUs in
    the last digits (an AMD EPYC's initial loss differs from the recording machine's in the 5th digit, and the
    released model it trains with them differs slightly too). Keys, types, steps, outcomes and flags stay exact."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return sorted(a) == sorted(b) and all(_close(a[k], b[k], rel) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y, rel) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _untimed(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in TIMINGS}


def _summary_rows(directory: Path) -> list:
    df = pq.read_table(directory / "metrics.parquet").to_pandas()
    df = df[~df["metric"].str.contains("seconds")]
    rows = [[r.phase, None if r.step != r.step else r.step, r.split, r.metric, r.value, r.censored]
            for r in df[["phase", "step", "split", "metric", "value", "censored"]].itertuples()]
    return [r for r in rows if r[0] == "summary"], len(df)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, cache):
    """Each case run once: (its spec, its result, its run.json)."""
    root = tmp_path_factory.mktemp("summaries")
    session = Session(root, cache, progress=False)
    out = {}
    for name, make in CASES.items():
        spec = make()
        result = run(spec, session)
        out[name] = (spec, result, read_run_json(root / spec.run_id), root / spec.run_id)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_run_json_keeps_the_summary_it_had_before_the_summary_was_typed(recorded, name):
    spec, result, info, directory = recorded[name]
    before = BEFORE[name]
    assert spec.run_id == before["run_id"] and info["status"] == before["status"] == "success"
    assert info["spec"] == before["spec"]
    assert sorted(info["summary"]) == sorted(before["summary"])  # the same keys, timings included
    assert _close(_untimed(info["summary"]), _untimed(before["summary"]))  # and the same values
    rows, n_rows = _summary_rows(directory)
    assert _close(json.loads(_text(rows)), before["summary_rows"]) and n_rows == before["n_rows"]  # metrics.parquet too


@pytest.mark.parametrize("name", list(CASES))
def test_real_summaries_round_trip(recorded, name):
    _, result, info, _ = recorded[name]
    typed = RunSummary.from_json(info["summary"])
    assert _text(typed.to_json()) == _text(info["summary"])
    assert _text(result.summary.to_json()) == _text(info["summary"])
    assert typed.outcome == BEFORE[name]["summary"]["outcome"]
    assert repr(typed.metrics()) == repr(result.metrics)  # (NaN fields compare by their text)


def test_the_outcomes_are_the_ones_each_case_stands_for(recorded):
    outcomes = {name: recorded[name][1].summary.outcome for name in CASES}
    assert outcomes == {"harmed": "harmed", "resisted": "resisted", "broken": "broken", "pruned": "pruned",
                        "probe": "resisted"}
    pruned = recorded["pruned"][1].summary
    assert (pruned.prune_bound, pruned.bound_by, pruned.pruned_at_bound) == (10, ("0123456789abcdef",), 10)
    assert recorded["probe"][1].summary.utility is None  # an LR-search probe measures no utility standing
    assert recorded["broken"][1].summary.utility == UtilityStanding(0.0, False)
    standing = recorded["harmed"][1].summary.utility
    assert standing is not None and standing.within_utility_bound is True
    assert _close(standing.retained_after_attack, BEFORE["harmed"]["summary"]["retained_after_attack"])


def test_failed_runs_have_an_empty_summary_that_round_trips(tmp_path, cache, isolated_registries):
    from bench.contracts import Attack, AttackConfig
    from bench.registry import ATTACKS
    from bench.run.runner import record_failure

    @ATTACKS.register("exploding-attack")
    class Exploding(Attack):
        Config = AttackConfig

        def run(self, model, task, cfg, *, generator, monitor):
            monitor.begin(model)
            raise ValueError("attack exploded")

    session = Session(tmp_path, cache, progress=False)
    crashed = make_spec(task="vision-digits", defense="none", attack="exploding-attack", task_args=FAST)
    died = _spec(attack_args={"optimizer": "adam", "lr": 1e-3})
    results = [run(crashed, session),  # a plugin raised, and a worker that died before writing its run
               record_failure(died, session, "RunTimeout: over 1 s", started_at="t", wall=1.0, details={})]
    for result in results:
        info = read_run_json(tmp_path / result.run_id)
        assert result.status == info["status"] == "failed"
        assert info["summary"] == {} and RunSummary.from_json(info["summary"]) == RunSummary() == result.summary
        assert not result.summary.attacked
        with pytest.raises(DataError, match="without an attack record"):
            result.summary.metrics()


def test_a_run_json_written_before_the_typed_summary_still_reads():
    """A summary as main wrote it (the fixture), and an older one without the fields added since."""
    today = BEFORE["pruned"]["summary"]
    typed = RunSummary.from_json(today)
    assert typed.bound_by == ("0123456789abcdef",) and typed.utility == UtilityStanding(1.0, True)
    assert _text(typed.to_json()) == _text(today)
    older = {k: v for k, v in BEFORE["harmed"]["summary"].items()
             if k not in ("params_trained", "attack_params_added", "replay_failure", "snapshot_seconds",
                          "retained_after_attack", "within_utility_bound")}
    typed = RunSummary.from_json(older)
    assert typed.params_trained is None and typed.utility is None and typed.replay_failure is None
    assert typed.steps_to_harm == BEFORE["harmed"]["summary"]["steps_to_harm"] and typed.outcome == "harmed"
    assert typed.wave is None  # recorded before waves were: the leaderboard rebuilds it (leaderboard.cost)
    assert RunSummary.from_json(None) == RunSummary.from_json({}) == RunSummary()


def test_unknown_keys_and_wrong_types_are_one_clear_error():
    good = BEFORE["harmed"]["summary"]
    with pytest.raises(DataError, match=r"unknown key 'steps_to_harms' \(did you mean 'steps_to_harm'\?\)"):
        RunSummary.from_json({**good, "steps_to_harms": 3})
    with pytest.raises(DataError, match=r"'censored' must be bool, got 'yes'"):
        RunSummary.from_json({**good, "censored": "yes"})
    with pytest.raises(DataError, match=r"'steps_to_harm' must be int"):
        RunSummary.from_json({**good, "steps_to_harm": 3.5})
    with pytest.raises(DataError, match="expected a JSON object"):
        RunSummary.from_json(["not", "an", "object"])  # type: ignore[arg-type]
    with pytest.raises(DataError, match="wave_kind must be one of probe, full, refinement"):
        RunSummary.from_json({"wave": 0, "wave_kind": "warmup"})


def test_the_attack_record_is_written_whole_and_the_rest_only_when_set():
    record = RunSummary(outcome="harmed", steps_to_harm=3, censored=False)
    out = record.to_json()
    assert set(out) == set(ATTACK_FIELDS) and out["diverged_step"] is None
    assert RunSummary(wave=2, wave_kind="refinement").to_json() == {"wave": 2, "wave_kind": "refinement"}
    standing = RunSummary(utility=UtilityStanding(None, None)).to_json()
    assert standing == {"retained_after_attack": None, "within_utility_bound": None}


def test_every_run_of_a_short_sweep_validates_and_records_its_wave(tmp_path, cache, monkeypatch, capsys):
    """An LR search (probes, full runs, refinement) and a grid, on two defenses; every run.json validates through
    RunSummary.from_json, records the wave the planner gave it, and the attacker's trial order reads it."""
    from bench.contracts import AttackFamily
    from leaderboard import aggregate, cost
    from tasks.vision.task import VisionDigits

    sweeps = [AttackFamily("full-ft", {"optimizer": "adam"}, (1e-1, 1e-2), family="adam"),
              AttackFamily("full-ft", {"optimizer": "sgd"}, (1e-1, 1e-2), family="sgd", search="lr-search",
                          probe_steps=5, keep=1)]
    monkeypatch.setattr(VisionDigits, "default_attacks", lambda self, cfg, tier: sweeps)
    request = SuiteRequest(task="vision-digits", defense="specdef", task_args={**FAST, "budget": 20})
    report = run_suite(request, Session(tmp_path, cache, progress=False))
    assert not report.failed
    seen = set()
    for directory in run_directories(tmp_path):
        info = read_run_json(directory)
        summary = RunSummary.from_json(info["summary"])
        assert _text(summary.to_json()) == _text(info["summary"])
        assert (info["spec"]["wave"], info["spec"]["wave_kind"]) == (summary.wave, summary.wave_kind)
        family = "sgd" if info["spec"]["attack"]["args"].get("optimizer") == "sgd" else "adam"
        if info["purpose"] == "lr-probe":
            expected = (0, "probe")
        elif family == "sgd":
            expected = (1, "full") if info["spec"]["attack"]["args"]["lr"] in (1e-1, 1e-2) else (2, "refinement")
        else:
            expected = (0, "full") if info["spec"]["attack"]["args"]["lr"] in (1e-1, 1e-2) else (1, "refinement")
        assert (summary.wave, summary.wave_kind) == expected, directory.name
        seen.add(expected[1])
    assert seen == {"probe", "full", "refinement"}
    records = {r.spec.run_id: r for r in report.records}
    assert all(r.summary.wave == r.spec.wave for r in records.values())
    refined = next(r for r in records.values() if r.summary.wave_kind == "refinement" and r.family == "adam")
    from bench.cli import main

    capsys.readouterr()
    assert main(["show", refined.spec.run_id, "--results", str(tmp_path)]) == 0
    assert "planned in wave 1 of its attack family (refinement)" in capsys.readouterr().out

    runs = aggregate.load_runs(aggregate.load_metrics(tmp_path))
    assert runs["wave"].notna().all()
    # the recorded waves give the order the old heuristic rebuilt for these runs...
    for _, group in runs.groupby(["defense_label", "seed"]):
        recorded_order = list(cost.trial_order(group)["run_id"])
        rebuilt_order = list(cost.trial_order(group.assign(wave=math.nan))["run_id"])
        assert recorded_order == rebuilt_order
    # ...and the recorded one wins where they would disagree (a grid LR the heuristic would take for refinement)
    group = runs[runs["defense_label"] == "none"]
    last = group.sort_values("wave").iloc[-1]["run_id"]
    moved = group.assign(wave=group["wave"].where(group["run_id"] != last, -1))
    assert list(cost.trial_order(moved)["run_id"])[0] == last


def test_cost_falls_back_to_rebuilt_waves_for_rows_without_one():
    from leaderboard import cost

    rows = pd.DataFrame({
        "run_id": ["p", "f", "r"], "attack_label": ["a"] * 3, "attack_family": ["adam"] * 3,
        "attack_config": [json.dumps({"lr": 1e-2}), json.dumps({"lr": 1e-2}), json.dumps({"lr": 0.0316})],
        "knowledge": ["blind"] * 3, "purpose": ["lr-probe", "attack", "attack"], "status": ["success"] * 3,
        "outcome": ["resisted"] * 3, "steps_to_harm": [5, 20, 20], "censored": [True] * 3,
    })
    order = cost.trial_order(rows.iloc[::-1])  # no ``wave`` column at all: rows written before waves were
    assert list(order["run_id"]) == ["p", "f", "r"]


def test_an_executor_reads_a_summary_it_cannot_type_back_as_a_corrupt_run(tmp_path):
    from bench.exec.shared import read_back
    from bench.run.results import METRICS, RUN_JSON

    spec = _spec()
    run_dir = tmp_path / spec.run_id
    run_dir.mkdir()
    pd.DataFrame({"x": [1.0]}).to_parquet(run_dir / METRICS)
    (run_dir / RUN_JSON).write_text(json.dumps({"status": "success", "summary": {"steps_to_harm": 1, "v": 2}}))
    record = read_back(spec, run_dir / RUN_JSON)
    assert record is not None and record.status == "failed" and record.summary == RunSummary()
    assert record.error == "RunCorrupt: run summary: unknown key 'v'"


def test_a_model_harmful_from_the_start_is_summarised_by_the_same_builder(tmp_path, cache, monkeypatch):
    """Not attacked: the same attack record as an attacked run (the fields drifted when it had its own builder),
    the replay fields None (nothing was trained) and no replay rows in metrics.parquet."""
    from tasks.vision.common import ClassificationInstance

    monkeypatch.setattr(ClassificationInstance, "already_harmful", lambda self, evaluation, probe: "says so (test)")
    spec = make_spec(task="vision-digits", defense="none", attack="full-ft", seed=0,
                     task_args={**FAST, "bootstrap": 101},  # its own stages: the harm check runs when they are built
                     attack_args={"optimizer": "adam", "lr": 1e-2, "budget": 20})
    result = run(spec, Session(tmp_path, cache, progress=False))
    info = read_run_json(tmp_path / spec.run_id)
    summary = result.summary
    assert result.status == "success" and summary.outcome == "harmed" and summary.steps_to_harm == 0
    assert summary.already_harmful == summary.released_already_harmful == "says so (test)"
    assert (summary.replay_steps, summary.replay_seconds, summary.params_trained) == (None, None, 0)
    assert set(info["summary"]) == {*ATTACK_FIELDS, "already_harmful", "released_already_harmful"}
    assert _text(RunSummary.from_json(info["summary"]).to_json()) == _text(info["summary"])
    df = pq.read_table(tmp_path / spec.run_id / "metrics.parquet").to_pandas()
    metrics = set(df[df["phase"] == "summary"]["metric"])
    assert {"steps_to_harm", "steps_run", "params_trained", "already_harmful"} <= metrics
    assert not metrics & {"replay_steps", "replay_seconds", "snapshot_seconds"}

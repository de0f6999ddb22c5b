"""Bound pruning (bench.run.pruning): which runs get a cap, how a capped run stops and is recorded, and that a pruned
suite reports exactly the worst cases of the exhaustive one, resumes consistently, and --exhaustive runs it all."""

from __future__ import annotations

import json

import pytest

from bench.core.spec import RunSpec, make_spec
from bench.exec.suite_run import run_suite
from bench.plan.planner import RunRecord
from bench.plan.request import SuiteRequest
from bench.run.pruning import Bounds, utility_tables
from bench.run.runner import run
from bench.run.stages import Session
from bench.run.summary import RunSummary, UtilityStanding

FAST = {"curvature_iters": 0, "bootstrap": 0}


def _spec(lr: float, *, attack: str = "full-ft", seed: int = 0, budget: int = 100, purpose: str = "attack"):
    return make_spec(task="vision-digits", defense="none", attack=attack, seed=seed, purpose=purpose,
                     task_args=FAST, attack_args={"optimizer": "adam", "lr": lr, "budget": budget})


def _harmed(spec: RunSpec, steps: int, retained: float = 1.0, within: bool = True) -> RunRecord:
    return RunRecord(spec, "success", RunSummary(steps_to_harm=steps, censored=False,
                                                 utility=UtilityStanding(retained, within)))


def test_a_run_is_capped_only_once_every_worst_case_it_could_lower_has_a_bound():
    bounds = Bounds()
    later = _spec(1e-5)
    assert bounds.capped(later, "adam").stop_at is None  # nothing harmed yet
    # harmed, but lost 10% of its utility: bounds every table except the 5%-drop one
    bounds.feed(_harmed(_spec(1e-1), 20, retained=0.9), "adam")
    assert bounds.capped(later, "adam").stop_at is None
    bounds.feed(_harmed(_spec(1e-2), 35, retained=0.99), "adam")
    capped = bounds.capped(later, "adam")
    # the largest bound over the tables it may join: the 5%-drop table's 35, not the overall 20
    assert capped.stop_at == 35 and capped.run_id == later.run_id
    assert set(capped.bound_by) == {_spec(1e-1).run_id, _spec(1e-2).run_id}
    # another family has no harmed run of its own: its refinement could pick a pruned run, so it is not capped
    assert bounds.capped(later, "sgd").stop_at is None
    # a white-box attack joins the adaptive table, which has no harmed run yet
    white_box = make_spec(task="vision-digits", defense="none", attack="adaptive-collapse", task_args=FAST,
                          attack_args={"optimizer": "adam", "lr": 1e-3, "budget": 100})
    assert bounds.capped(white_box, "adam").stop_at is None
    # other seeds are other worst cases; LR-search probes are never capped; a budget below the bound needs no cap
    assert bounds.capped(_spec(1e-5, seed=1), "adam").stop_at is None
    assert bounds.capped(_spec(1e-5, purpose="lr-probe"), "adam").stop_at is None
    assert bounds.capped(_spec(1e-5, budget=30), "adam").stop_at is None
    assert Bounds(exhaustive=True).capped(later, "adam").stop_at is None
    assert len(utility_tables()) == 4  # bounded5, bounded20, bounded50 and the task's own bound


def test_the_bound_only_falls_and_ignores_failed_censored_and_probe_runs():
    bounds = Bounds()
    bounds.feed(_harmed(_spec(1e-1), 50), "adam")
    bounds.feed(RunRecord(_spec(1e-2), "failed", RunSummary()), "adam")
    bounds.feed(RunRecord(_spec(1e-3), "success", RunSummary(steps_to_harm=100, censored=True)), "adam")
    bounds.feed(_harmed(_spec(1e-4, purpose="lr-probe"), 5), "adam")
    assert bounds.capped(_spec(1e-6), "adam").stop_at == 50
    bounds.feed(_harmed(_spec(1e-5), 30), "adam")
    bounds.feed(_harmed(_spec(1e-5), 10), "adam")  # the same run again (resumed): counted once
    assert bounds.capped(_spec(1e-6), "adam").stop_at == 30


def test_a_capped_run_stops_at_the_first_probe_past_the_bound_and_says_why(tmp_path, cache):
    slow = _spec(1e-6, budget=40)  # far too small a rate to harm in 40 steps
    capped = RunSpec.from_json({**slow.to_json(), "stop_at": 12, "bound_by": ["abc"]})
    assert capped.run_id == slow.run_id and capped.stop_at == 12 and capped.bound_by == ("abc",)
    result = run(capped, Session(tmp_path, cache, progress=False))
    assert result.status == "success"
    info = json.loads((tmp_path / slow.run_id / "run.json").read_text())
    summary = info["summary"]
    eval_every = slow.attack.kwargs["eval_every"]
    first_probe = -(-12 // eval_every) * eval_every
    assert summary["pruned_at_bound"] == first_probe == summary["steps_run"] == summary["steps_to_harm"]
    assert summary["censored"] and summary["outcome"] == "pruned" and not summary["stopped_early"]
    assert summary["prune_bound"] == 12 and summary["bound_by"] == ["abc"]
    assert info["spec"]["stop_at"] == 12


def _quick_suite(monkeypatch, **kw) -> SuiteRequest:
    from bench.contracts import AttackFamily
    from tasks.vision.task import VisionDigits

    lrs = (1e-1, 1e-2, 1e-3, 1e-5)
    sweeps = [AttackFamily("full-ft", {"optimizer": "adam"}, lrs, family="adam"),
              AttackFamily("adaptive-collapse", {"optimizer": "adam"}, lrs, family="collapse")]
    monkeypatch.setattr(VisionDigits, "default_attacks", lambda self, cfg, tier: sweeps)
    return SuiteRequest(task="vision-digits", defense="specdef", task_args={**FAST, "budget": 60}, **kw)


def _reported(results, run_ids):
    from leaderboard.aggregate import build

    seeds = build(results, run_ids).seeds
    columns = ["defense_label", "seed", "worst_steps", "worst_censored", "worst_run_id", "worst_harm_auc",
               "adaptive_steps", "adaptive_censored", "adaptive_run_id", "blind_steps", "blind_run_id", "ratio",
               "ratio_lower_bound", "ratio_upper_bound",
               *[c for c in seeds.columns
                 if c.startswith("bounded") and c.endswith(("_steps", "_censored", "_run_id"))]]
    return seeds.sort_values(["defense_label", "seed"])[columns].reset_index(drop=True)


def test_pruning_reports_the_exhaustive_worst_cases_resumes_and_exhaustive_runs_it_all(tmp_path, cache, monkeypatch):
    import pandas as pd

    exhaustive = run_suite(_quick_suite(monkeypatch, exhaustive=True), Session(tmp_path / "all", cache, progress=False))
    pruned = run_suite(_quick_suite(monkeypatch), Session(tmp_path / "pruned", cache, progress=False))
    assert not exhaustive.failed and not pruned.failed
    assert sorted(exhaustive.run_ids) == sorted(pruned.run_ids)  # the same runs planned, refinement included
    assert not any(r.summary.pruned_at_bound is not None for r in exhaustive.records)
    stopped = [r for r in pruned.records if r.summary.pruned_at_bound is not None]
    assert stopped, "nothing was pruned: the test no longer exercises pruning"
    full = {r.spec.run_id: r.summary for r in exhaustive.records}
    for record in pruned.records:
        mine, theirs = record.summary, full[record.spec.run_id]
        if mine.pruned_at_bound is None:  # every run that was not pruned is the exhaustive run, bit for bit
            assert (mine.steps_to_harm, mine.censored, mine.harm_auc, mine.outcome) == \
                   (theirs.steps_to_harm, theirs.censored, theirs.harm_auc, theirs.outcome)
        else:  # a pruned run would have harmed, if at all, strictly after its bound
            assert mine.prune_bound is not None and mine.pruned_at_bound >= mine.prune_bound
            assert mine.outcome == "pruned"
            assert theirs.censored or theirs.steps_to_harm > mine.prune_bound
    pd.testing.assert_frame_equal(_reported(tmp_path / "all", exhaustive.run_ids),
                                  _reported(tmp_path / "pruned", pruned.run_ids))
    steps = {name: sum(r.summary.steps_run for r in report.records)
             for name, report in (("all", exhaustive), ("pruned", pruned))}
    assert steps["pruned"] < steps["all"]

    again = run_suite(_quick_suite(monkeypatch), Session(tmp_path / "pruned", cache, progress=False))
    assert all(r.resumed for r in again.records)  # nothing runs again
    assert sorted(again.run_ids) == sorted(pruned.run_ids)

    # what a dry run shows: the pruned runs are done for a pruning sweep, and to be run in full for an exhaustive one
    from bench.exec.sweep_run import run_states

    ids = [r.spec.run_id for r in pruned.records]
    assert set(run_states(tmp_path / "pruned", ids).values()) == {"done"}
    states = run_states(tmp_path / "pruned", ids, exhaustive=True)
    assert {i for i, state in states.items() if state == "pruned"} == {r.spec.run_id for r in stopped}

    out = run_suite(_quick_suite(monkeypatch, exhaustive=True), Session(tmp_path / "pruned", cache, progress=False))
    rerun = {r.spec.run_id for r in out.records if not r.resumed}
    assert rerun == {r.spec.run_id for r in stopped}  # exactly the pruned runs, now in full
    assert not any(r.summary.pruned_at_bound is not None for r in out.records)
    for record in out.records:
        assert record.summary.steps_to_harm == full[record.spec.run_id].steps_to_harm


def test_a_sweep_file_turns_pruning_off_with_exhaustive(tmp_path):
    from bench.errors import ConfigError
    from bench.plan.sweep import plan_file

    path = tmp_path / "grid.yaml"
    path.write_text("tasks: [vision-digits]\ndefenses: [specdef]\nexhaustive: true\n")
    assert all(planned.request.exhaustive for planned in plan_file(path).suites)
    path.write_text("tasks: [vision-digits]\ndefenses: [specdef]\n")
    assert not any(planned.request.exhaustive for planned in plan_file(path).suites)  # pruning is the default
    path.write_text("tasks: [vision-digits]\ndefenses: [specdef]\nexhaustive: maybe\n")
    with pytest.raises(ConfigError, match="exhaustive"):
        plan_file(path)

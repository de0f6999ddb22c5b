"""Runs that are one trajectory are run once (bench.run.shared_runs): first the proof that every adaptive attack's
fallback on a model without linear chains is the same trajectory (bit-identical metrics, seeded), then that a
results folder runs it once and records it for each family, marked ``reused_from``, and that a chained model's runs,
a changed code fingerprint and a stale source are never shared."""

from __future__ import annotations

import copy
import json

import pyarrow.parquet as pq
import pytest
import torch

from bench.core.spec import make_spec
from bench.run.results import METRICS, RUN_JSON, read_run_json, rewrite_run_json
from bench.run.runner import run
from bench.run.stages import Session

FAMILIES = ("adaptive-collapse", "adaptive-freeze", "adaptive-inject", "adaptive-split")
QUICK = {"curvature_iters": 0, "bootstrap": 0}
RECIPE = {"budget": 30, "eval_every": 5, "lr": 3e-3}
TIMINGS = {"attack_seconds", "probe_seconds", "replay_seconds", "snapshot_seconds", "wall_seconds"}
"""Seconds differ between two executions of one trajectory; everything else must not."""


def _spec(attack, defense="none", **attack_args):
    return make_spec(task="vision-digits", defense=defense, attack=attack, task_args=QUICK,
                     attack_args={**RECIPE, **attack_args})


def _attack_rows(directory):
    df = pq.read_table(directory / METRICS).to_pandas()
    df = df[df["phase"].isin(["attack", "post_attack", "summary"]) & ~df["metric"].isin(TIMINGS | {"reused_from"})]
    return df[["phase", "step", "split", "metric", "value", "n", "stderr", "ci_low", "ci_high", "censored"]] \
        .sort_values(["phase", "metric", "split", "step"]).reset_index(drop=True)


def _without_timings(summary):
    return {k: v for k, v in summary.to_json().items() if k not in TIMINGS | {"reused_from"}}


def test_every_adaptive_fallback_is_the_same_trajectory(tmp_path, cache):
    """The proof the sharing rests on: each family run alone, in its own folder, gives bit-identical metrics."""
    recorded = {}
    for attack in FAMILIES:
        folder = tmp_path / attack
        result = run(_spec(attack), Session(folder, cache))
        assert result.status == "success" and result.summary.attack_info["fallback"]
        assert result.summary.reused_from is None  # alone in its folder: nothing to share
        recorded[attack] = (_attack_rows(folder / result.run_id), _without_timings(result.summary))
    first_rows, first_summary = recorded[FAMILIES[0]]
    assert first_summary["steps_run"] > 0 and len(first_rows) > 20
    for attack in FAMILIES[1:]:
        rows, summary = recorded[attack]
        assert rows.equals(first_rows), attack
        assert json.dumps(summary, sort_keys=True, default=str) == json.dumps(first_summary, sort_keys=True,
                                                                             default=str), attack


def test_a_folder_runs_the_fallback_once_and_records_it_for_each_family(tmp_path, cache, monkeypatch):
    import attacks._adaptive as adaptive

    calls = []
    original = adaptive.fine_tune
    monkeypatch.setattr(adaptive, "fine_tune", lambda *a, **k: calls.append(1) or original(*a, **k))
    session = Session(tmp_path, cache)
    results = [run(_spec(attack), session) for attack in FAMILIES]
    assert all(r.status == "success" for r in results)
    assert len(calls) == 1  # one trajectory trained, four recorded
    source = results[0].run_id
    assert results[0].summary.reused_from is None
    for result in results[1:]:
        info = read_run_json(tmp_path / result.run_id)
        assert info["summary"]["reused_from"] == source and info["spec"]["attack"]["name"] != "adaptive-collapse"
        assert info["fingerprint"]["plugins"][-1]["name"] == info["spec"]["attack"]["name"]  # its own code
        df = pq.read_table(tmp_path / result.run_id / METRICS).to_pandas()
        marked = df[df["metric"] == "reused_from"]
        assert list(marked["split"]) == [source] and set(df["attack"]) == {result.spec.attack.label}
        assert _attack_rows(tmp_path / result.run_id).equals(_attack_rows(tmp_path / source))
        assert repr(result.metrics) == repr(results[0].metrics)  # (NaN fields compare by their text)
    from bench.cli import main

    assert main(["show", results[1].run_id, "--results", str(tmp_path)]) == 0


def test_show_says_a_run_is_reused(tmp_path, cache, capsys):
    from bench.cli import main

    session = Session(tmp_path, cache)
    first, second = (run(_spec(attack), session) for attack in FAMILIES[:2])
    capsys.readouterr()
    assert main(["show", second.run_id, "--results", str(tmp_path)]) == 0
    assert f"reused from run {first.run_id}" in capsys.readouterr().out
    assert main(["show", str(tmp_path)]) == 0
    assert f"(reused from {first.run_id})" in capsys.readouterr().out


def test_other_recipes_and_chained_models_are_not_shared(tmp_path, cache):
    session = Session(tmp_path, cache)
    base = run(_spec("adaptive-collapse"), session)
    other_lr = run(_spec("adaptive-freeze", lr=1e-3), session)  # another recipe: another trajectory
    assert other_lr.summary.reused_from is None
    other_seed = run(make_spec(task="vision-digits", defense="none", attack="adaptive-freeze", seed=1,
                               task_args=QUICK, attack_args=RECIPE), session)
    assert other_seed.summary.reused_from is None
    chained = [run(_spec(attack, defense="specdef"), session) for attack in FAMILIES[:2]]
    assert all(r.summary.attack_info["chains_rewritten"] > 0 and r.summary.reused_from is None for r in chained)
    assert base.status == "success"


def test_the_structure_check_draws_no_randomness(cache):
    """Deciding the key must not move the run that follows: the generator and torch's global state are untouched."""
    from attacks.adaptive_collapse import AdaptiveCollapse, CollapseConfig
    from bench.registry import TASKS
    from tasks.vision.task import VisionConfig

    task = TASKS.get("vision-digits")().build(VisionConfig(**QUICK), tier="tiny", model=None, cache=cache,
                                               device=torch.device("cpu"), progress=False)
    generator = torch.Generator().manual_seed(7)
    torch.manual_seed(3)
    before, state = torch.get_rng_state(), generator.get_state()
    weights = copy.deepcopy(task.model.state_dict())
    described = AdaptiveCollapse().shared_run(task.model, task, CollapseConfig(budget=5, batch_size=8, eval_every=5),
                                              generator=generator)
    assert described is not None and described["recipe"]["budget"] == 5
    assert torch.equal(torch.get_rng_state(), before) and torch.equal(generator.get_state(), state)
    assert all(torch.equal(weights[k], v) for k, v in task.model.state_dict().items())


@pytest.mark.parametrize("spoil", ["code changed", "stale"])
def test_a_source_made_by_other_code_is_not_reused(tmp_path, cache, spoil):
    session = Session(tmp_path, cache)
    first = run(_spec("adaptive-collapse"), session)
    info = read_run_json(tmp_path / first.run_id)
    if spoil == "code changed":
        info["fingerprint"]["harness"] = "0.0+other"
    else:
        info["stale"] = True
    rewrite_run_json(tmp_path / first.run_id, info)
    second = run(_spec("adaptive-freeze"), session)
    assert second.status == "success" and second.summary.reused_from is None  # ran itself...
    third = run(_spec("adaptive-inject"), session)
    assert third.summary.reused_from == second.run_id  # ...and is the key's source now
    assert (tmp_path / second.run_id / RUN_JSON).is_file()

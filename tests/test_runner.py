"""The runner end to end on the tiny vision task: stages, results files, early stop, divergence, failures, resume."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pyarrow.parquet as pq
import pytest

from bench.cache import Cache
from bench.contracts import Attack, AttackConfig, Defense
from bench.core.lr_grid import refinement
from bench.core.spec import make_spec
from bench.exec.suite_run import run_suite
from bench.plan.planner import best_probe_lrs
from bench.plan.request import SuiteRequest
from bench.registry import ATTACKS, DEFENSES
from bench.run.results import SCHEMA, read_metrics
from bench.run.runner import run
from bench.run.stages import Session
from bench.run.summary import RunSummary

FAST = {"curvature_iters": 0, "bootstrap": 100}


def spec(defense="none", attack_args=None, task_args=None, seed=0, attack="full-ft", defense_args=None):
    return make_spec(task="vision-digits", defense=defense, attack=attack, seed=seed,
                     task_args={**FAST, **(task_args or {})}, defense_args=defense_args or {},
                     attack_args={"budget": 100, **(attack_args or {})})


def test_run_writes_complete_results(tmp_path, cache):
    s = spec(attack_args={"optimizer": "adam", "lr": 1e-2})
    result = run(s, Session(tmp_path, cache))
    assert result.status == "success" and result.error is None
    info = json.loads((tmp_path / s.run_id / "run.json").read_text())
    assert info["status"] == "success" and info["run_id"] == s.run_id
    assert info["threat_model"]["knowledge"] == "blind" and info["threat_model"]["examples_seen"] > 0
    assert {"git_sha", "libraries", "device"} <= set(info["provenance"])
    assert info["wall_seconds"] > 0 and info["peak_rss_mb"] > 0
    table = pq.read_table(tmp_path / s.run_id / "metrics.parquet")
    assert table.schema.equals(SCHEMA, check_metadata=True)
    df = table.to_pandas()
    assert set(df["phase"]) == {"released", "defended", "attack", "post_attack", "summary"}
    released = df[(df["phase"] == "released") & (df["metric"] == "allowed_accuracy")]["value"].iloc[0]
    assert released > 0.95
    primary = df[df["metric"] == "primary_utility"].iloc[0]  # what the leaderboard's utility bound reads
    assert (primary["phase"], primary["split"], primary["value"]) == ("released", "allowed_accuracy", released)
    steps = df[(df["phase"] == "summary") & (df["metric"] == "steps_to_harm")].iloc[0]
    assert steps["value"] == result.summary.steps_to_harm and steps["censored"] == result.summary.censored


def test_undefended_adam_is_harmed_and_stops_early(tmp_path, cache):
    result = run(spec(attack_args={"optimizer": "adam", "lr": 1e-2}), Session(tmp_path, cache))
    summary = result.summary
    assert summary.outcome == "harmed" and not summary.censored
    assert summary.steps_run == summary.steps_to_harm_grid < 100  # early stop: cost follows steps-to-harm
    # the crossing, seen at a probe, is replayed to the exact step inside the probe interval before it
    assert summary.crossing_resolution == 1 and summary.replay_failure is None
    assert summary.steps_to_harm_grid - 5 < summary.steps_to_harm <= summary.steps_to_harm_grid
    assert 0 < summary.replay_steps <= 5 and not summary.stopped_early


def test_divergence_stops_at_once_and_is_broken(tmp_path, cache):
    result = run(spec(defense="specdef", attack_args={"optimizer": "sgd", "lr": 1.0}), Session(tmp_path, cache))
    summary = result.summary
    assert summary.diverged and summary.outcome == "broken" and summary.censored
    assert summary.steps_run <= 5 and summary.steps_to_harm == 100


def test_tiny_learning_rate_is_resisted_and_censored(tmp_path, cache):
    result = run(spec(attack_args={"optimizer": "adam", "lr": 1e-9}), Session(tmp_path, cache))
    assert result.summary.outcome == "resisted" and result.summary.steps_to_harm == 100
    assert result.summary.censored


def _values(directory):
    df = pq.read_table(directory / "metrics.parquet").to_pandas()
    df = df[~df["metric"].str.contains("seconds")]
    return df[["phase", "step", "split", "metric", "value"]].reset_index(drop=True)


def test_same_spec_and_seed_give_identical_metrics(tmp_path, cache):
    s = spec(defense="specdef", attack_args={"optimizer": "adam", "lr": 1e-6}, task_args={"curvature_iters": 5})
    run(s, Session(tmp_path / "a", cache))
    run(s, Session(tmp_path / "b", cache))
    a, b = _values(tmp_path / "a" / s.run_id), _values(tmp_path / "b" / s.run_id)
    assert a.equals(b)
    other_seed = spec(defense="specdef", attack_args={"optimizer": "adam", "lr": 1e-6}, task_args={"curvature_iters": 5}, seed=1)
    run(other_seed, Session(tmp_path / "c", cache))
    assert not _values(tmp_path / "c" / other_seed.run_id).equals(a)


def test_curvature_grows_with_alpha(tmp_path, cache):
    s = spec(defense="specdef", defense_args={"alpha": 100.0}, task_args={"curvature_iters": 30},
             attack_args={"budget": 5})
    run(s, Session(tmp_path, cache))
    df = pq.read_table(tmp_path / s.run_id / "metrics.parquet").to_pandas()
    eig = df[df["metric"] == "hessian_top_eig"].set_index("phase")["value"]
    assert eig["defended"] > 100 * eig["released"]  # ≈ alpha² growth; at least alpha
    for phase in ("released", "defended"):
        rows = df[(df["phase"] == phase) & df["metric"].str.startswith("hessian_")].set_index("metric")["value"]
        assert rows["hessian_converged"] == 1.0 and 2 <= rows["hessian_iterations"] < 30
        assert 0 < rows["hessian_seconds"] < 60


def test_the_curvature_time_cap_is_recorded(tmp_path, cache):
    s = spec(task_args={"curvature_iters": 30, "curvature_seconds": 1e-9}, attack_args={"budget": 5})
    run(s, Session(tmp_path, cache))
    df = pq.read_table(tmp_path / s.run_id / "metrics.parquet").to_pandas()
    rows = df[(df["phase"] == "released") & df["metric"].str.startswith("hessian_")].set_index("metric")["value"]
    assert rows["hessian_iterations"] == 1 and rows["hessian_converged"] == 0.0 and math.isfinite(rows["hessian_top_eig"])


@dataclass(frozen=True, kw_only=True)
class _NoArgs:
    pass


@pytest.fixture
def crashing_plugins(isolated_registries):
    @DEFENSES.register("crashing-defense")
    class CrashingDefense(Defense):
        Config = _NoArgs

        def apply(self, model, view, cfg, *, generator):
            raise RuntimeError("defense exploded")

    @dataclass(frozen=True, kw_only=True)
    class AttackArgs(AttackConfig):
        lr: float = 1e-3

    @ATTACKS.register("crashing-attack")
    class CrashingAttack(Attack):
        Config = AttackArgs

        def run(self, model, task, cfg, *, generator, monitor):
            monitor.begin(model)
            raise ValueError("attack exploded")

    @ATTACKS.register("lazy-attack")
    class LazyAttack(Attack):
        Config = AttackArgs

        def run(self, model, task, cfg, *, generator, monitor):
            return None


def test_crashing_plugins_give_failed_runs_with_their_error(tmp_path, cache, crashing_plugins):
    session = Session(tmp_path, cache)
    for s, message in [
        (spec(defense="crashing-defense"), "RuntimeError: defense exploded"),
        (spec(attack="crashing-attack"), "ValueError: attack exploded"),
        (spec(attack="lazy-attack"), "without calling monitor.begin"),
    ]:
        result = run(s, session)
        assert result.status == "failed" and message in result.error
        info = json.loads((tmp_path / s.run_id / "run.json").read_text())
        assert info["status"] == "failed" and message in info["error"] and "Traceback" in info["traceback"]
        assert (tmp_path / s.run_id / "metrics.parquet").exists()  # partial measurements are kept
    statuses = set(read_metrics(tmp_path).to_pandas()["status"])
    assert statuses == {"failed"}


def _small_request(**kw):
    return SuiteRequest(task="vision-digits", defense="specdef", task_args={**FAST, "budget": 40}, **kw)


def test_suite_sweeps_refines_and_resumes(tmp_path, cache, monkeypatch):
    from bench.contracts import AttackFamily
    from tasks.vision.task import VisionDigits

    lrs = (1e-1, 1e-2, 1e-3)
    sweeps = [AttackFamily("full-ft", {"optimizer": "adam"}, lrs, family="adam"),
              AttackFamily("full-ft", {"optimizer": "sgd"}, lrs, family="sgd", search="lr-search", probe_steps=10, keep=1)]
    monkeypatch.setattr(VisionDigits, "default_attacks", lambda self, cfg, tier: sweeps)
    session = Session(tmp_path, cache, progress=False)
    report = run_suite(_small_request(), session)
    assert not report.failed and not any(r.resumed for r in report.records)
    for defense in ("none", "specdef"):
        mine = [r for r in report.records if r.spec.defense.name == defense]
        adam = [r.spec.attack.kwargs["lr"] for r in mine if r.family == "adam"]
        assert adam[:3] == list(lrs) and len(adam) == 5  # the grid, then two half-decade refinement points
        best = min((r for r in mine if r.family == "adam" and r.spec.attack.kwargs["lr"] in lrs),
                   key=lambda r: (r.summary.steps_to_harm, -r.summary.harm_auc))
        assert set(adam[3:]) == set(refinement(best.spec.attack.kwargs["lr"]))
        sgd = [r for r in mine if r.family == "sgd"]
        probes = [r for r in sgd if r.spec.purpose == "lr-probe"]
        assert [r.spec.attack.kwargs["budget"] for r in probes] == [10, 10, 10]
        full = [r.spec.attack.kwargs["lr"] for r in sgd if r.spec.purpose == "attack"]
        chosen = best_probe_lrs(probes, 1)
        assert full[:1] == chosen and len(full) in (0, 3)  # the best probe's LR in full, then its refinement
        if defense == "none":
            assert chosen  # plain SGD converges at some grid LR; on specdef every one of these LRs diverges
    again = run_suite(_small_request(), Session(tmp_path, cache, progress=False))
    # the same runs, all resumed (their order may differ: bound pruning starts the runs likely to harm first, and
    # on resume it knows every result of the baseline from the start)
    assert all(r.resumed for r in again.records) and sorted(again.run_ids) == sorted(report.run_ids)


def test_resumed_suite_builds_only_what_unfinished_runs_need(tmp_path, cache, monkeypatch, isolated_registries):
    from bench.contracts import AttackFamily, DefenseResult
    from tasks.vision.task import VisionDigits

    applied, built = [], []

    @DEFENSES.register("counting-defense")
    class Counting(Defense):
        Config = _NoArgs

        def apply(self, model, view, cfg, *, generator):
            applied.append(1)
            return DefenseResult(model=model)

    original_build = VisionDigits.build
    monkeypatch.setattr(VisionDigits, "build", lambda self, *a, **kw: built.append(1) or original_build(self, *a, **kw))
    sweeps = [AttackFamily("full-ft", {"optimizer": "adam"}, (1e-2,), family="adam")]  # one LR, then its refinement
    monkeypatch.setattr(VisionDigits, "default_attacks", lambda self, cfg, tier: sweeps)
    request = SuiteRequest(task="vision-digits", defense="counting-defense", task_args={**FAST, "budget": 20},
                           baseline=False)

    def outcomes(report):
        return [(r.spec.run_id, json.dumps(r.summary.to_json(), sort_keys=True, default=str)) for r in report.records]

    first = run_suite(request, Session(tmp_path, cache, progress=False))
    assert len(first.records) == 3 and not first.failed and (len(applied), len(built)) == (1, 1)
    again = run_suite(request, Session(tmp_path, cache, progress=False))
    assert all(r.resumed for r in again.records) and (len(applied), len(built)) == (1, 1)  # nothing built
    assert outcomes(again) == outcomes(first)

    # A refinement run (known only once its wave is reached) that is missing is redone: its task is built, its
    # defended stage read from the on-disk stage cache (the defense is not applied again).
    refined = next(r for r in first.records if r.spec.attack.kwargs["lr"] != 1e-2)
    (tmp_path / refined.spec.run_id / "run.json").unlink()
    third = run_suite(request, Session(tmp_path, cache, progress=False))
    assert [r.resumed for r in third.records].count(False) == 1 and (len(applied), len(built)) == (1, 2)


def test_interrupted_suite_keeps_completed_runs_and_resumes(tmp_path, cache):
    request = _small_request(attack="full-ft", attack_args={"lr": 1e-3}, seeds=(0, 1, 2))
    seen = []

    def interrupt_after_two(record):
        seen.append(record)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_suite(request, Session(tmp_path, Cache(cache.root), progress=False), on_run=interrupt_after_two)
    report = run_suite(request, Session(tmp_path, cache, progress=False))
    assert [r.resumed for r in report.records] == [True, True, False, False, False, False]


def test_a_crossing_must_survive_the_tasks_confirmation(tmp_path, cache, monkeypatch):
    from bench.contracts import Probe
    from tasks.vision.common import ClassificationInstance

    calls = []

    def refuse(self, model):
        calls.append(1)
        return Probe(harm=0.0, utility=1.0)

    monkeypatch.setattr(ClassificationInstance, "confirm", refuse)
    s = spec(attack_args={"optimizer": "adam", "lr": 1e-2, "budget": 60})
    result = run(s, Session(tmp_path, cache))
    assert calls and result.summary.outcome == "resisted" and result.summary.censored
    df = pq.read_table(tmp_path / s.run_id / "metrics.parquet").to_pandas()
    quick = df[df["metric"] == "quick_harm"]["value"]
    assert len(quick) == len(calls) and (quick >= 0.8).all()  # the quick probes that crossed are kept


def _probe_record(lr, **summary):
    from bench.plan.planner import RunRecord

    full = {"outcome": "resisted", "diverged": False, "harm_auc": 0.0, "loss_start": 1.0, "loss_end": 1.0, **summary}
    return RunRecord(spec(attack_args={"lr": lr, "budget": 10}), "success", RunSummary(**full))


def test_lr_search_scores_probes_by_the_harm_proxy_and_demotes_broken_ones():
    from bench.plan.planner import probe_score

    # the training loss says 1e-4 (noise), the task's harm proxy says 1e-3
    probes = [_probe_record(1e-3, loss_end=0.95, proxy_start=2.0, proxy_end=1.0),
              _probe_record(1e-4, loss_end=0.5, proxy_start=2.0, proxy_end=1.9)]
    assert best_probe_lrs(probes, 1) == [1e-3]
    assert best_probe_lrs([_probe_record(lr, loss_end=end) for lr, end in ((1e-3, 0.95), (1e-4, 0.5))], 1) == [1e-4]
    # a probe that ends broken ranks below every other, whatever its progress, but is still better than nothing
    broken = _probe_record(1e-2, outcome="broken", proxy_start=2.0, proxy_end=0.1)
    slow = _probe_record(1e-5, proxy_start=2.0, proxy_end=2.1)  # the proxy even rose a little
    assert probe_score(broken.summary) < probe_score(slow.summary)
    assert best_probe_lrs([broken, slow], 2) == [1e-5, 1e-2]
    assert best_probe_lrs([broken], 1) == [1e-2]
    # harmed beats everything (ties by harm AUC); diverged, unscorable and failed probes never get a full run
    harmed = [_probe_record(1e-6, outcome="harmed", harm_auc=0.2), _probe_record(1e-7, outcome="harmed", harm_auc=0.5)]
    assert best_probe_lrs([slow, *harmed], 2) == [1e-7, 1e-6]
    diverged = _probe_record(1e-1, outcome="broken", diverged=True, proxy_start=2.0, proxy_end=0.0)
    nan = _probe_record(1.0, proxy_start=2.0, proxy_end=float("nan"))
    failed = _probe_record(1e-8, proxy_start=2.0, proxy_end=0.0)
    failed.status = "failed"
    assert best_probe_lrs([diverged, nan, failed], 3) == []


def test_attacks_on_one_defended_model_probe_and_preview_its_start_once(tmp_path, cache, monkeypatch):
    import torch

    from bench.contracts import Preview
    from tasks.vision.common import ClassificationInstance

    probed, previewed = [], []
    probe = ClassificationInstance.probe
    monkeypatch.setattr(ClassificationInstance, "probe", lambda self, model: probed.append(1) or probe(self, model))
    monkeypatch.setattr(ClassificationInstance, "preview", lambda self, model: previewed.append(model) or Preview(
        torch.zeros(1, 3, 4, 4), ["x"]))
    budget = {"optimizer": "adam", "budget": 20, "eval_every": 10}
    first, second = spec(attack_args={**budget, "lr": 1e-3}), spec(attack_args={**budget, "lr": 1e-2})
    session = Session(tmp_path / "shared", cache)
    session.defended(first)
    probed.clear()
    run(first, session)
    run(second, session)
    defended = session.defended(first).model
    assert len(probed) == 3 + 2  # steps 0, 10, 20, then 10, 20: the second attack starts from the same model
    assert sum(m is defended for m in previewed) == 1 and len(previewed) == 3
    lora = spec(attack="lora", attack_args={**budget, "lr": 1e-2})
    run(lora, session)
    assert len(probed) == 5 + 3  # adapters change the starting model's structure: probed afresh
    run(second, Session(tmp_path / "alone", cache))  # the reused probe is the one this run would have measured
    assert _values(tmp_path / "shared" / second.run_id).equals(_values(tmp_path / "alone" / second.run_id))


def test_same_model_needs_equal_structure_and_weights():
    import copy

    import torch

    from bench.run.monitor import same_model
    from bench.toolkit.layers import MLP

    model = MLP([4, 8, 2])
    twin = copy.deepcopy(model)
    assert same_model(model, twin)
    with torch.no_grad():
        twin.net[0].weight[0, 0] += 1e-6
    assert not same_model(model, twin)
    hooked = copy.deepcopy(model)
    hooked.net[0].register_forward_hook(lambda module, inputs, output: output)
    assert not same_model(model, hooked)

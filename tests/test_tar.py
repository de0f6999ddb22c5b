"""The ``tar`` defense (and its ``sophon`` preset, and the MLAC-style head re-initialisation) on vision-digits tiny."""

from __future__ import annotations

import copy
import dataclasses
import math

import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from bench import testing
from bench.config import build_config
from bench.contracts import AttackerScale, DefenderView, Predictions
from bench.errors import PluginError
from bench.registry import DEFENSES, TASKS
from bench.runner import Session, run
from bench.spec import make_spec
from defenses.tar import output_head, plan

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits(cache):
    cls = TASKS.get("vision-digits")
    return cls().build(build_config(cls.Config, {}, where="test"), tier="tiny", model=None, cache=cache, device=CPU,
                       progress=False)


def train(task, seed=0, **args):
    cls = DEFENSES.get("tar")
    cfg = build_config(cls.Config, args, where="defense 'tar'")
    generator = torch.Generator().manual_seed(seed)
    return cls().apply(copy.deepcopy(task.model), task.defender_view(), cfg, generator=generator)


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


def test_config_and_presets_round_trip():
    testing.check_config_roundtrip(DEFENSES, "tar")
    sophon = DEFENSES.resolve("tar.sophon")
    cfg = build_config(sophon.cls.Config, sophon.preset_args, where="preset")
    assert cfg.adversary == "sgd" and cfg.natural_steps == 1 and cfg.grad_clip == 0.5


def test_scaling_rule_follows_the_task_attacker(digits):
    cls = DEFENSES.get("tar")
    view = digits.defender_view()
    p = plan(cls.Config(), view, "logits")
    assert p.inner_steps == view.attacker.steps and p.lrs == view.attacker.lrs
    assert p.evaluations[-1] == p.inner_steps - 1 and p.weights[-1] == 1.0  # the reference's exp(λ(k−K+1))
    assert p.weights == tuple(math.exp(4.0 * (k - 9) / 10) for k in p.evaluations)  # not normalised to sum 1
    assert list(p.weights) == sorted(p.weights)  # later (stronger) attacker states weigh more
    assert p.passes_per_step == 10 + 3 + 2 and p.steps == round(400 / 15)
    slow = dataclasses.replace(view, attacker=AttackerScale(steps=60, lrs=(1e-3,), batch_size=16))
    assert plan(cls.Config(), slow, "logits").inner_steps == 16  # the cap: diffusion's 60 steps cost too much on CPU
    assert plan(cls.Config(tr_loss="inverse-ce"), view, "regression").tr_loss == "dos"


def test_deterministic_under_a_seed_and_records_its_attacker(digits):
    smoke = DEFENSES.get("tar").smoke_args
    first, second, other = train(digits, 0, **smoke), train(digits, 0, **smoke), train(digits, 1, **smoke)
    for a, b in zip(weights(first.model), weights(second.model)):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(weights(first.model), weights(other.model)))
    info = first.info
    assert info["inner_attacker"] == {"optimizer": "adamw", "lrs": [1e-3, 1e-2], "steps": 2, "subsample": 1,
                                      "reinit_head": None, "lrs_calibrated": False}
    # per outer step: 2 inner steps + 2 L_TR evaluations + retain + representation passes
    assert info["fb_passes"] == 3 * 6 and info["training_seconds"] > 0 and info["tr_loss"] == "entropy"
    assert [p["step"] for p in first.curve] == [1, 2, 3]
    assert {"tr", "attack", "retain", "rep"} <= set(first.curve[0])


def test_it_trains_its_tamper_resistance_objective_decreases(digits):
    result = train(digits, steps=40, inner_steps=4, subsample=2)
    tr = [p["tr"] for p in result.curve]
    assert sum(tr[-10:]) / 10 < sum(tr[:10]) / 10 - 0.1, tr


def test_sophon_preset_takes_natural_steps_with_inverse_cross_entropy(digits):
    args = {**DEFENSES.resolve("tar.sophon").preset_args, "steps": 20, "inner_steps": 4}
    result = train(digits, **args)
    assert result.info["tr_loss"] == "inverse-ce" and result.info["inner_attacker"]["optimizer"] == "sgd"
    assert "rep" not in result.curve[0] and result.info["fb_passes"] == 20 * (4 + 4 + 1)
    attack = [p["attack"] for p in result.curve]
    assert sum(attack[-5:]) > 1.2 * sum(attack[:5])  # the simulated attack ends further from the forbidden labels


def test_reinit_head_finds_the_classifier_head(digits):
    assert output_head(digits.model, 10) == "net.4"
    result = train(digits, steps=3, inner_steps=2, subsample=1, reinit_head=True)
    assert result.info["inner_attacker"]["reinit_head"] == "net.4" and not result.info["notes"]
    plain = train(digits, steps=3, inner_steps=2, subsample=1)
    assert any(not torch.equal(a, b) for a, b in zip(weights(result.model), weights(plain.model)))


def _narrow_view(width: int) -> DefenderView:
    """The conformance MLP's view, with predictions of ``width`` columns and an attacker scale."""
    view = testing.tiny_view()

    def predictions(model, batch):
        out = model(batch[0])[:, :width]
        return Predictions(outputs=out, targets=batch[1] % width, example=torch.arange(len(out)), kind="logits",
                           examples=len(out))

    return DefenderView(harmful=view.harmful, benign=view.benign, harmful_loss=view.harmful_loss,
                        benign_loss=view.benign_loss, predictions=predictions,
                        attacker=AttackerScale(steps=3, lrs=(1e-3,), batch_size=16))


def test_reinit_head_is_skipped_with_a_note_when_no_layer_matches():
    cls = DEFENSES.get("tar")
    cfg = cls.Config(steps=2, reinit_head=True, rep_scale=0.0)
    result = cls().apply(testing.tiny_mlp(), _narrow_view(3), cfg, generator=torch.Generator().manual_seed(0))
    assert result.info["inner_attacker"]["reinit_head"] is None
    assert "no nn.Linear with 3 outputs" in result.info["notes"][0]


def test_a_view_without_what_tar_needs_is_a_clear_error():
    cls = DEFENSES.get("tar")
    with pytest.raises(PluginError, match="predictions"):
        cls().apply(testing.tiny_mlp(), dataclasses.replace(testing.tiny_view(), predictions=None),
                    cls.Config(rep_scale=0.0),
                    generator=torch.Generator().manual_seed(0))
    view = _narrow_view(6)
    view = dataclasses.replace(view, attacker=None)
    with pytest.raises(PluginError, match="attacker"):
        cls().apply(testing.tiny_mlp(), view, cls.Config(rep_scale=0.0), generator=torch.Generator().manual_seed(0))
    explicit = cls.Config(rep_scale=0.0, steps=2, inner_steps=2, adversary_lrs=(1e-3,))
    assert cls().apply(testing.tiny_mlp(), view, explicit, generator=torch.Generator().manual_seed(0)).curve


def test_loss_curve_reaches_metrics_parquet(tmp_path, cache):
    smoke = dict(DEFENSES.get("tar").smoke_args)
    spec = make_spec(task="vision-digits", defense="tar", attack="full-ft",
                     task_args={**TASKS.get("vision-digits").smoke_args, "curvature_iters": 0, "bootstrap": 0},
                     attack_args={"budget": 6, "eval_every": 3}, defense_args=smoke)
    result = run(spec, Session(tmp_path, cache))
    assert result.status == "success", result.error
    df = pq.read_table(tmp_path / spec.run_id / "metrics.parquet").to_pandas()
    curve = df[df["phase"] == "defense"]
    assert set(curve["metric"]) == {"tr", "attack", "retain", "rep"}
    assert sorted(set(curve["step"])) == [1, 2, 3]


@pytest.mark.parametrize("setting, kind, expected", [("chat", "logits", "refusal-preference"),
                                                     ("knowledge", "logits", "entropy"),
                                                     ("classification", "logits", "entropy"),
                                                     ("generation", "regression", "dos"),
                                                     (None, "logits", "entropy"), (None, "regression", "dos")])
def test_auto_tamper_resistance_loss_follows_the_task_setting(setting, kind, expected):
    from defenses.tar import plan

    view = dataclasses.replace(testing.tiny_view(), setting=setting)
    assert plan(DEFENSES.get("tar").Config(), view, kind).tr_loss == expected

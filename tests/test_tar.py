"""The ``tar`` defense (and its ``sophon`` preset, and the MLAC-style head re-initialisation) on vision-digits tiny."""

from __future__ import annotations

import copy
import dataclasses
import math

import pyarrow.parquet as pq
import pytest
import torch

from bench import testing
from bench.config import build_config
from bench.contracts import AttackerScale, DefenderView, Predictions
from bench.core.spec import make_spec
from bench.errors import PluginError
from bench.registry import DEFENSES, TASKS
from bench.run.runner import run
from bench.run.stages import Session
from defenses.tar import _Trainer, output_head, plan, tamper_resistance_loss

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
    # K follows the simulated optimizer's own undefended steps-to-harm: AdamW's 35 on vision-digits (Muon's 10 is the
    # suite's fastest), capped at 16
    assert view.attacker.steps == 10 and view.attacker.adam_steps == 35
    p = plan(cls.Config(), view, "logits")
    assert p.inner_steps == 16 and p.lrs == view.attacker.lrs and p.lr == min(view.attacker.lrs)
    assert p.evaluations == (3, 7, 11, 15) and p.weights[-1] == 1.0  # the reference's exp(λ(k−K+1))
    assert p.weights == tuple(math.exp(4.0 * (k - 15) / 16) for k in p.evaluations)  # not normalised to sum 1
    assert list(p.weights) == sorted(p.weights)  # later (stronger) attacker states weigh more
    assert p.passes_per_step == 16 + 4 + 2 and p.steps == round(400 / 22)
    fast = dataclasses.replace(view, attacker=AttackerScale(steps=10, lrs=(1e-3,), batch_size=16))
    assert plan(cls.Config(), fast, "logits").inner_steps == 10  # no adam_steps: the task's steps
    slow = dataclasses.replace(view, attacker=AttackerScale(steps=60, lrs=(1e-3,), batch_size=16))
    assert plan(cls.Config(), slow, "logits").inner_steps == 16  # the cap: diffusion's 60 steps cost too much on CPU
    assert plan(cls.Config(tr_loss="inverse-ce"), view, "regression").tr_loss == "dos"


def test_sophon_simulates_sgd_at_the_tasks_sgd_rates_and_keeps_its_lr_ratios(digits):
    sophon = DEFENSES.resolve("tar.sophon")
    cfg = build_config(sophon.cls.Config, sophon.preset_args, where="preset")
    view = digits.defender_view()
    p = plan(cfg, view, "logits")
    assert p.lrs == view.attacker.sgd_lrs == (0.1, 0.3)  # not Adam's 1e-3..1e-2, at which SGD barely moves
    assert p.inner_steps == 16  # SGD's own steps-to-harm (60), capped
    assert p.natural_lr / p.lr == pytest.approx(5 / 3) and p.lr == min(view.attacker.lrs)  # classifier α:β = 3:5
    diffusion = plan(cfg, dataclasses.replace(view, setting="generation"), "regression")
    assert diffusion.natural_lr / diffusion.lr == pytest.approx(50)  # diffusion α:β = 0.1:5
    assert diffusion.natural_lr == pytest.approx(5 / 3 * min(view.attacker.lrs))


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
    tr = [p["tr"] for p in result.curve]
    assert sum(tr[-5:]) < 0.9 * sum(tr[:5]), tr  # L_TR (inverse-ce) after the simulated SGD attack falls


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


# --- objectives that must move the right way: each test fails when the sign of its key term flips ----------------
def _trainer(task_model, view, cfg, seed=0):
    p = plan(cfg, view, "logits")
    return _Trainer(task_model, view, cfg, p, torch.Generator().manual_seed(seed), base=None, head=None)


def test_the_inner_loop_restores_the_weights_and_leaves_the_attacked_weights_gradient(digits):
    cfg = DEFENSES.get("tar").Config(inner_steps=4, subsample=1, rep_scale=0.0)
    model, view = copy.deepcopy(digits.model), digits.defender_view()
    trainer = _trainer(model, view, cfg)
    before = weights(model)
    tr_batch = view.harmful[-1]  # the held-out x_tr (4 fixed batches: the last one)
    trainer._tamper_resistance_gradient()
    assert all(torch.equal(a, b) for a, b in zip(before, weights(model)))  # θ restored after the simulated attack
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # The gradient was taken at the attacked weights θ′ (first order), where L_TR differs from its value at θ.
    grad_at_theta = torch.autograd.grad(tamper_resistance_loss("entropy", model, view, tr_batch),
                                        list(model.parameters()))
    assert any(not torch.allclose(p.grad, cfg.tr_scale * g) for p, g in zip(model.parameters(), grad_at_theta))


def test_sophon_adversary_moves_at_its_default_rates(digits):
    # Sophon's simulated attacker is plain SGD. At the task's SGD rates (0.1, 0.3) it takes the forbidden labels'
    # loss from 14.6 to about 1 in 16 steps (measured); at Adam's rates (1e-3) SGD barely moves (14.6 -> ~11).
    sophon = DEFENSES.resolve("tar.sophon")
    cfg = build_config(sophon.cls.Config, sophon.preset_args, where="preset")
    seen: list[float] = []
    view = digits.defender_view()

    def recorded(model, batch, reduction="mean", _loss=view.harmful_loss):
        out = _loss(model, batch, reduction=reduction)
        seen.append(float(out.detach()))
        return out

    view = dataclasses.replace(view, harmful_loss=recorded)
    for seed in range(3):  # each draws one of the two rates
        seen.clear()
        _trainer(copy.deepcopy(digits.model), view, cfg, seed)._tamper_resistance_gradient()
        assert len(seen) == 16 and sum(seen[-3:]) / 3 < 0.25 * seen[0], seen


def test_sophon_without_measured_sgd_rates_calibrates_them_to_adams_first_step(digits):
    from defenses._trained import sgd_rates

    view = digits.defender_view()
    unmeasured = dataclasses.replace(view, attacker=dataclasses.replace(view.attacker, sgd_lrs=()))
    rates, calibrated = sgd_rates(digits.model, unmeasured, view.harmful[0])
    # measured: 0.009 and 0.09 (Adam: 1e-3, 1e-2), against the measured fastest SGD rates 0.1 and 0.3
    assert calibrated and len(rates) == 2 and all(r > 5 * a for r, a in zip(rates, view.attacker.lrs))
    assert sgd_rates(digits.model, view, view.harmful[0]) == ((0.1, 0.3), False)


@pytest.fixture(scope="module")
def chat(cache):
    cls = TASKS.get("llm-harmful-qa")
    return cls().build(cls.Config(**cls.smoke_args), tier="tiny", model=None, cache=cache, device=CPU, progress=False)


@pytest.fixture(scope="module")
def style(cache):
    cls = TASKS.get("sd-style")
    return cls().build(cls.Config(**cls.smoke_args), tier="tiny", model=None, cache=cache, device=CPU, progress=False)


def test_chat_refusal_preference_trains_toward_the_refusal(chat):
    # TAR's chat loss: on the held-out batch, the preference of the refusal over the compliance strengthens.
    # Measured (smoke build, 10 steps): 0.67 -> 0.48; with the TR gradient's sign flipped it rises to 0.96.
    view = chat.defender_view()
    held_out = (view.harmful[-1], view.aligned[-1])

    def preference(model):
        with torch.no_grad():
            return float(tamper_resistance_loss("refusal-preference", model, view, held_out))

    result = train(chat, steps=6, inner_steps=2, subsample=1)
    assert result.info["tr_loss"] == "refusal-preference" and result.info["tr_held_out_batches"] == 1
    assert preference(result.model) < 0.9 * preference(chat.model)


def test_diffusion_denial_of_service_trains_the_prediction_down(style):
    # TAR's generation loss (Sophon's denial of service): the predicted noise on held-out forbidden images shrinks.
    view = style.defender_view()

    def dos(model):
        with torch.no_grad():
            return float(tamper_resistance_loss("dos", model, view, view.harmful[-1]))

    result = train(style, steps=6, inner_steps=2, subsample=1)
    assert result.info["tr_loss"] == "dos"
    assert dos(result.model) < 0.9 * dos(style.model)


def test_sophon_on_diffusion_simulates_sgd_at_a_rate_the_unet_survives(style):
    # sd-style declares its measured SGD rate (0.1; 0.2 and above break the undefended model). Before it did, Sophon
    # calibrated SGD to Adam's first step (2.7 on this UNet) and diverged at its first outer step on every seed.
    from defenses._trained import sgd_rates

    sophon = DEFENSES.resolve("tar.sophon")
    cfg = build_config(sophon.cls.Config, sophon.preset_args, where="preset")
    view = style.defender_view()
    resolved = plan(cfg, view, "regression")
    assert resolved.lrs == view.attacker.sgd_lrs == (0.1,) and resolved.tr_loss == "dos"
    seen: list[float] = []

    def recorded(model, batch, reduction="mean", _loss=view.harmful_loss):
        out = _loss(model, batch, reduction=reduction)
        seen.append(float(out.detach()))
        return out

    _Trainer(copy.deepcopy(style.model), dataclasses.replace(view, harmful_loss=recorded), cfg, resolved,
             torch.Generator().manual_seed(0), base=None, head=None)._tamper_resistance_gradient()
    assert len(seen) == 16 and all(math.isfinite(v) for v in seen) and min(seen[1:]) < seen[0], seen
    unmeasured = dataclasses.replace(view, attacker=dataclasses.replace(view.attacker, sgd_lrs=()))
    calibrated, _ = sgd_rates(style.model, unmeasured, view.harmful[0])
    assert calibrated[0] > 10 * view.attacker.sgd_lrs[0]  # what it ran at before (2.7 on the full build; 0.2 breaks)

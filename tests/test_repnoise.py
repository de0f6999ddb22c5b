"""RepNoise and the ga-retain control on vision-digits tiny: configs, determinism, training, fallbacks, curve rows."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from bench.config import build_config, config_to_dict
from bench.errors import ConfigError, PluginError
from bench.registry import DEFENSES
from tasks.vision.task import VisionConfig, VisionDigits

NAMES = ("repnoise", "ga-retain")


@pytest.fixture(scope="module")
def digits(cache):
    return VisionDigits().build(VisionConfig(), tier="tiny", model=None, cache=cache, device=torch.device("cpu"),
                                progress=False)


def defend(task, name, seed=0, view=None, **args):
    cls = DEFENSES.get(name)
    return cls().apply(copy.deepcopy(task.model), view or task.defender_view(), cls.Config(**args),
                       generator=torch.Generator().manual_seed(seed))


def terms(result, name):
    return torch.tensor([point[name] for point in result.curve])


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trips_and_rejects_bad_values(name):
    cls = DEFENSES.get(name).Config
    cfg = cls(alpha=0.5, steps=7, lr=3e-4)
    assert build_config(cls, config_to_dict(cfg), where=name) == cfg
    assert cls().lr is None and cls().steps is None  # the rules from the task's attacker scale
    for bad in ({"alpha": -1.0}, {"steps_factor": 0}, {"max_steps": 0}, {"lr": 0.0}):
        with pytest.raises(ConfigError):
            cls(**bad)
    with pytest.raises(ConfigError):
        build_config(cls, {"alpah": 1.0}, where=name)


def test_step_and_lr_rules_follow_the_attacker_scale(digits):
    from bench.contracts import AttackerScale
    from defenses._trained import lr_for, steps_for

    cfg, view = DEFENSES.get("repnoise").Config(), digits.defender_view()
    assert (steps_for(cfg, view), lr_for(cfg, view)) == (100, pytest.approx(1e-4))  # 10 x 10 steps; min(1e-3, 1e-2) / 10
    diffusion_like = dataclasses.replace(view, attacker=AttackerScale(steps=160, lrs=(3e-4, 1e-3), batch_size=16))
    assert (steps_for(cfg, diffusion_like), lr_for(cfg, diffusion_like)) == (150, pytest.approx(3e-5))  # capped
    explicit = dataclasses.replace(cfg, steps=7, lr=0.5)
    assert (steps_for(explicit, diffusion_like), lr_for(explicit, diffusion_like)) == (7, 0.5)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_a_seed(digits, name):
    first, second, other = (defend(digits, name, seed=s, steps=5) for s in (0, 0, 1))
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    assert first.curve == second.curve
    assert first.curve != other.curve  # the seed drives the batches (and RepNoise's noise draws)


def test_repnoise_trains_by_its_rules_and_keeps_utility(digits):
    released = digits.probe(digits.model).utility
    result = defend(digits, "repnoise")
    loss, harmful = terms(result, "loss"), terms(result, "harmful_loss")
    info = result.info
    # Default rules on this tier: 10 x the undefended steps-to-harm (10), at a tenth of the smallest attacker lr.
    assert info["steps"] == 100 and info["lr"] == pytest.approx(1e-4) and info["fb_passes"] == 300
    assert info["scaled_by"]["steps"] == 10 and info["feature_modules"] == ["net.1", "net.3"]
    assert set(result.curve[0]) == {"step", "loss", "aligned_loss", "harmful_loss", "mmd"}
    assert loss[-10:].mean() < loss[:10].mean() - 0.1  # measured: about -2.54 -> -2.76
    assert harmful[-10:].mean() > 1.1 * harmful[:10].mean()
    assert terms(result, "aligned_loss")[-10:].mean() < 0.3  # harmful inputs keep the released (allowed) labels
    probe = digits.probe(result.model)
    assert probe.harm == 0 and probe.utility >= released - 0.05
    assert not result.model.training


def test_ga_retain_raises_the_harmful_loss_and_keeps_utility(digits):
    released = digits.probe(digits.model).utility
    result = defend(digits, "ga-retain")
    loss, harmful = terms(result, "loss"), terms(result, "harmful_loss")
    assert result.info["steps"] == 100 and result.info["fb_passes"] == 200
    assert loss[-10:].mean() < loss[:10].mean() - 0.3  # measured at the default lr 1e-4: about -2.75 -> -3.28
    assert harmful[-10:].mean() > 1.5 * harmful[:10].mean()
    assert terms(result, "benign_loss")[-10:].mean() < 0.1
    assert digits.probe(result.model).utility >= released - 0.05


def test_noise_term_pulls_harmful_features_toward_gaussian(digits):
    # With the noising term alone (no ascent, no aligned loss weight to fight), the MMD must fall (it rises if the
    # noising term's sign flips).
    result = defend(digits, "repnoise", steps=40, alpha=0.0, beta=100.0, lr=1e-3)
    mmd = terms(result, "mmd")
    assert mmd[-5:].mean() < 0.8 * mmd[:5].mean()  # measured 2.65 -> 1.72


def test_ascent_term_raises_the_harmful_loss(digits):
    # With the ascent term alone the harmful loss must rise (it falls if the ascent term's sign flips).
    result = defend(digits, "repnoise", steps=20, beta=0.0, lr=1e-3)
    harmful = terms(result, "harmful_loss")
    assert harmful[-5:].mean() > 1.2 * harmful[:5].mean()  # measured 16.0 -> 20.9


def test_mmd_uses_the_references_data_driven_bandwidth():
    from defenses.repnoise import mmd_to_noise

    gen = torch.Generator().manual_seed(0)
    gaussian = torch.randn(256, 16, generator=gen)
    shifted = gaussian + 3
    near, far = (float(mmd_to_noise(rows, torch.Generator().manual_seed(1))) for rows in (gaussian, shifted))
    assert near < 0.05 < far
    # The bandwidth follows the pooled sample's own spread: features at 1000x the noise's scale are still measured
    # (a fixed bandwidth at the noise's scale would see every kernel between them vanish, and the MMD get no
    # gradient).
    big = (gaussian * 1000).requires_grad_(True)
    value = mmd_to_noise(big, torch.Generator().manual_seed(1))
    value.backward()
    assert float(value.detach()) > 10 * near and 0 < float(big.grad.abs().sum()) < float("inf")


def test_noise_term_subsamples_long_row_sets_reproducibly():
    from defenses.repnoise import mmd_to_noise, noise_term

    rows = {"layer": torch.randn(1000, 8, generator=torch.Generator().manual_seed(0)) + 3}
    few = [noise_term(rows, torch.Generator().manual_seed(1), max_rows=64) for _ in range(2)]
    assert torch.equal(few[0], few[1]) and float(few[0]) > 0.1  # shifted rows are far from N(0, I)
    whole = noise_term(rows, torch.Generator().manual_seed(1), max_rows=1000)
    assert torch.equal(whole, mmd_to_noise(rows["layer"], torch.Generator().manual_seed(1)))


def test_clear_errors_when_the_view_lacks_what_is_needed(digits):
    view = digits.defender_view()
    with pytest.raises(PluginError, match="feature_modules, features"):
        defend(digits, "repnoise", view=dataclasses.replace(view, features=None, feature_modules=()))
    without_attacker = dataclasses.replace(view, attacker=None)
    with pytest.raises(PluginError, match="attacker"):
        defend(digits, "ga-retain", view=without_attacker)
    # Explicit steps and lr need no attacker scale.
    assert defend(digits, "ga-retain", view=without_attacker, steps=2, lr=1e-3).info["scaled_by"] is None


@pytest.mark.parametrize("name", NAMES)
def test_curve_rows_reach_metrics_parquet(name, tmp_path, cache):
    import pyarrow.parquet as pq

    from bench.core.spec import make_spec
    from bench.run.runner import run
    from bench.run.stages import Session

    smoke = dict(DEFENSES.get(name).smoke_args)
    spec = make_spec(task="vision-digits", defense=name, attack="full-ft",
                     task_args={"curvature_iters": 0, "bootstrap": 0}, attack_args={"budget": 6, "eval_every": 3},
                     defense_args=smoke)
    result = run(spec, Session(tmp_path, cache))
    assert result.status == "success", result.error
    df = pq.read_table(tmp_path / spec.run_id / "metrics.parquet").to_pandas()
    curve = df[df["phase"] == "defense"]
    assert sorted(set(curve["step"])) == list(range(1, smoke["steps"] + 1))
    assert {"loss", "harmful_loss"} <= set(curve["metric"])

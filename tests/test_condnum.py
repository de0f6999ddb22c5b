"""Condition-number immunization on vision-digits tiny: config, the weight rule, training, determinism, errors."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from bench.config import build_config, config_to_dict
from bench.errors import ConfigError, PluginError
from bench.registry import DEFENSES
from defenses.condnum import ill_conditioning, spectrum, well_conditioning
from tasks.vision.task import VisionConfig, VisionDigits


@pytest.fixture(scope="module")
def digits(cache):
    return VisionDigits().build(VisionConfig(), tier="tiny", model=None, cache=cache, device=torch.device("cpu"),
                                progress=False)


def defend(task, seed=0, view=None, model=None, **args):
    cls = DEFENSES.get("condnum")
    return cls().apply(copy.deepcopy(model or task.model), view or task.defender_view(), cls.Config(**args),
                       generator=torch.Generator().manual_seed(seed))


def harmful_log10_condition(task, model) -> float:
    """log10 κ (over its nonzero spectrum) of the penultimate features' Gram matrix on the defender's harmful split."""
    split = task.splits["defender_harmful"]
    with torch.no_grad():
        values = spectrum(task.defender_view().features(model, (split.x, split.y))["net.3"])
    return float(torch.log10(values[0] / values[-1]))


def test_config_round_trips_and_rejects_bad_values():
    cls = DEFENSES.get("condnum").Config
    cfg = cls(lambda_ill=1e6, scale_ill=False, epochs=3, feature_module="net.1")
    assert build_config(cls, config_to_dict(cfg), where="condnum") == cfg
    for bad in ({"lambda_well": -1.0}, {"lambda_ill": -1.0}, {"epochs": 0}, {"max_steps": 0}, {"lr": 0.0}):
        with pytest.raises(ConfigError):
            cls(**bad)


def test_regularisers_vanish_on_a_flat_spectrum_and_order_conditioning():
    flat, spread = torch.full((4,), 0.25, dtype=torch.float64), torch.tensor([0.7, 0.2, 0.09, 0.01], dtype=torch.float64)
    assert float(well_conditioning(flat, 4)) == pytest.approx(0.0)
    assert float(well_conditioning(spread, 4)) > 0
    # K is the feature width (the paper's code): a flat spectrum of rank below K is not perfectly conditioned.
    assert float(well_conditioning(flat, 8)) > 0
    # The ill-conditioning term is an inverse: large for a flat spectrum, smaller as sigma_min falls behind.
    less_spread = torch.tensor([0.7, 0.2, 0.06, 0.04], dtype=torch.float64)
    ill = [float(ill_conditioning(values, 4)) for values in (spread, less_spread, flat)]
    assert ill[0] < ill[1] < ill[2]
    # A batch of N rows spans at most N eigenvalues; the trace-normalised spectrum sums to 1.
    values = spectrum(torch.randn(5, 12, generator=torch.Generator().manual_seed(0)))
    assert len(values) == 5 and float(values.sum()) == pytest.approx(1.0) and bool((values[:-1] >= values[1:]).all())
    dead_unit = torch.cat([torch.randn(20, 3, generator=torch.Generator().manual_seed(0)), torch.zeros(20, 1)], 1)
    assert len(spectrum(dead_unit)) == 3  # only the directions the features span: sigma_min is not a dead unit's 0


def test_trains_by_its_rules_ill_conditions_harmful_features_and_keeps_utility(digits):
    released = digits.probe(digits.model).utility
    result = defend(digits)
    info, curve = result.info, result.curve
    # 30 epochs over the defender's 5 benign batches; lambda_ill = 5e7 / (released harmful-batch trace)^2.
    assert info["steps"] == 150 and info["fb_passes"] == 450 and info["feature_module"] == "net.3"
    assert info["lambda_ill"] == pytest.approx(5e7 / info["harmful_trace"] ** 2)
    assert 0.2 < info["lambda_ill"] < 0.5  # measured 0.34 (trace 1.2e4 for a batch of 32)

    def mean(term, part):
        return sum(point[term] for point in part) / len(part)

    first, last = curve[:10], curve[-10:]
    # measured 99.5 -> 87.8; its floor is about lambda_ill * 2K = 87 (K = D = 128), the ill term dominating
    assert mean("loss", last) < mean("loss", first) - 2
    assert mean("ill", last) < mean("ill", first) - 5  # measured 291 -> 257 (floor 2K = 256)
    assert harmful_log10_condition(digits, result.model) > harmful_log10_condition(digits, digits.model) + 0.5
    assert digits.probe(result.model).utility >= 0.97 * released  # measured 0.996


def test_deterministic_under_a_seed(digits):
    first, second, other = (defend(digits, seed=s, steps=5) for s in (0, 0, 1))
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    assert first.curve == second.curve
    assert first.curve != other.curve  # the seed draws the batches


def test_feature_module_choice_and_clear_errors(digits):
    view = digits.defender_view()
    assert defend(digits, steps=2, feature_module="net.1").info["feature_module"] == "net.1"
    with pytest.raises(PluginError, match="feature_module 'net.9' is not one of"):
        defend(digits, steps=2, feature_module="net.9")
    with pytest.raises(PluginError, match="needs the task's defender view to provide features"):
        defend(digits, steps=2, view=dataclasses.replace(view, features=None))
    dead = copy.deepcopy(digits.model)
    with torch.no_grad():
        dead.net[2].weight.zero_()
        dead.net[2].bias.fill_(-1.0)  # every penultimate ReLU is off
    with pytest.raises(PluginError, match="features are all zero"):
        defend(digits, steps=2, model=dead)


def test_benign_half_lowers_benign_condition_number(digits):
    """The benign half alone (λ2 = 0) makes the allowed features better conditioned: κ of the benign Gram matrix
    falls (fails if the well-conditioning term's sign flips). With the defaults it rises instead (the harmful term
    dominates the shared layers, see the module docstring); the report records both, released and defended."""
    info = defend(digits, steps=40, lambda_ill=0.0).info
    assert info["log10_cond_benign_defended"] < info["log10_cond_benign_released"] - 0.2  # measured 7.35 -> 6.56
    defaults = defend(digits, steps=40).info
    assert {"log10_cond_benign_released", "log10_cond_benign_defended", "log10_cond_harmful_released",
            "log10_cond_harmful_defended"} <= set(defaults)


def test_harmful_half_raises_harmful_condition_number(digits):
    """The harmful half alone (λ1 = 0) makes the forbidden features worse conditioned (fails if the sign of the
    ill-conditioning term flips: minimising −1/x would flatten the harmful spectrum)."""
    info = defend(digits, steps=40, lambda_well=0.0).info
    assert info["log10_cond_harmful_defended"] > info["log10_cond_harmful_released"] + 0.5  # measured 11.4 -> 12.7

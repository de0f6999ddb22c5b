"""The classifier attacks ``linear-probe`` and ``head-reinit``: the head found by structure, what each trains."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from attacks._head import find_head
from bench.errors import PluginError
from bench.registry import ATTACKS, DEFENSES
from bench.toolkit.layers import FactoredLinear
from tasks.vision.task import VisionConfig, VisionDigits


@pytest.fixture(scope="module")
def digits(cache):
    return VisionDigits().build(VisionConfig(), tier="tiny", model=None, cache=cache, device=torch.device("cpu"),
                                progress=False)


class Snapshot:
    """A monitor that keeps the model's weights at ``begin`` (after the attack's rewrite) and never stops."""

    def begin(self, model, trajectory=None):
        self.start = {k: v.clone() for k, v in model.state_dict().items()}

    def after_step(self, model, *, step, loss, examples):
        return False


def attack(task, name, model=None, seed=0, **args):
    cls = ATTACKS.get(name)
    model = copy.deepcopy(model or task.model)
    monitor = Snapshot()
    report = cls().run(model, task, cls.Config(**{"budget": 5, "batch_size": 16, "lr": 1e-2, **args}),
                       generator=torch.Generator().manual_seed(seed), monitor=monitor)
    return model, monitor, report


def specdef(task):
    cls = DEFENSES.get("specdef")
    return cls().apply(copy.deepcopy(task.model), task.defender_view(), cls.Config(alpha=100.0, k=4),
                       generator=torch.Generator().manual_seed(0)).model


def test_the_head_is_the_last_linear_map_producing_the_logits(digits):
    gen = torch.Generator().manual_seed(0)
    assert find_head(digits.model, digits, "linear-probe", gen) == "net.4"
    defended = specdef(digits)
    assert isinstance(defended.get_submodule("net.4"), FactoredLinear)
    assert find_head(defended, digits, "linear-probe", gen) == "net.4"  # the factored map as a whole, not C
    squashed = nn.Sequential(digits.model, nn.Tanh())  # the logits no longer come out of a linear map
    with pytest.raises(PluginError, match="linear-probe: found no classifier head"):
        find_head(squashed, digits, "linear-probe", gen)


def test_linear_probe_trains_only_the_head(digits):
    model, _, report = attack(digits, "linear-probe")
    released = digits.model.state_dict()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, released[k])}
    assert changed == {"net.4.weight", "net.4.bias"}
    assert report.params_trained == 128 * 10 + 10 and report.info == {"head": "net.4"}


def test_linear_probe_trains_every_factor_of_a_reparameterised_head(digits):
    defended = specdef(digits)
    model, _, report = attack(digits, "linear-probe", model=defended)
    assert report.params_trained == sum(p.numel() for p in defended.get_submodule("net.4").parameters())
    assert torch.equal(model.net[0].factors[0].weight, defended.net[0].factors[0].weight)  # the body is frozen


def test_head_reinit_replaces_the_head_then_trains_everything(digits):
    model, monitor, report = attack(digits, "head-reinit")
    released = digits.model.state_dict()
    assert not torch.equal(monitor.start["net.4.weight"], released["net.4.weight"])  # re-initialised before step 1
    assert monitor.start["net.4.weight"].abs().max() <= 1 / 128 ** 0.5  # PyTorch's default init, ±1/sqrt(fan_in)
    assert torch.equal(monitor.start["net.0.weight"], released["net.0.weight"])
    assert not torch.equal(model.net[0].weight, released["net.0.weight"])  # then the body trains too
    assert report.params_trained == sum(p.numel() for p in digits.model.parameters()) and report.params_added == 0
    again, other = attack(digits, "head-reinit")[1], attack(digits, "head-reinit", seed=1)[1]
    assert torch.equal(again.start["net.4.weight"], monitor.start["net.4.weight"])  # the run's generator draws it
    assert not torch.equal(other.start["net.4.weight"], monitor.start["net.4.weight"])


def test_head_reinit_drops_a_reparameterised_head(digits):
    defended = specdef(digits)
    model, _, report = attack(digits, "head-reinit", model=defended)
    assert type(model.net[4]) is nn.Linear and report.info["replaced"] == "FactoredLinear"
    assert report.params_added == 128 * 10 + 10 - sum(p.numel() for p in defended.net[4].parameters())

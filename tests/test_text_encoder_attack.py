"""The ``text-encoder`` attack on sd-style tiny (smoke build): it trains the text encoder with the UNet, and the
task's measurements of the attacked UNet use the trained encoder (else its changes would be invisible)."""

from __future__ import annotations

import copy

import pytest
import torch

from bench.errors import PluginError
from bench.registry import ATTACKS, TASKS
from bench.testing import RecordingMonitor
from tasks.diffusion.instance import TEXT_ENCODER


@pytest.fixture(scope="module")
def style(cache):
    cls = TASKS.get("sd-style")
    return cls().build(cls.Config(**cls.smoke_args), tier="tiny", model=None, cache=cache, device=torch.device("cpu"),
                       progress=False)


def attack(task, steps=4, **args):
    model = copy.deepcopy(task.model).train()
    cls = ATTACKS.get("text-encoder")
    cfg = cls.Config(budget=steps, eval_every=steps, batch_size=8, lr=1e-2, **args)
    report = cls().run(model, task, cfg, generator=torch.Generator().manual_seed(0),
                       monitor=RecordingMonitor(budget=steps, stop_at=steps))
    return model.eval(), report


def without_encoder(model):
    bare = copy.deepcopy(model)
    del bare._modules[TEXT_ENCODER]
    return bare


def test_attaching_the_released_encoder_keeps_the_function(style):
    unet = copy.deepcopy(style.model)
    batch = style.defender_view().harmful[0]
    with torch.no_grad():
        before = style.predict(unet, batch)[0]
        style.attach_text_encoder(unet)
        assert torch.equal(style.predict(unet, batch)[0], before)  # the precomputed states are this encoder's
    with pytest.raises(PluginError, match="already has"):
        style.attach_text_encoder(unet)


@pytest.mark.parametrize("train_unet", [True, False])
def test_trains_the_encoder_and_the_probe_measures_it(style, train_unet):
    model, report = attack(style, train_unet=train_unet)
    released_encoder = dict(style.text_encoder.named_parameters())
    encoder = model.get_submodule(TEXT_ENCODER)
    assert any(not torch.equal(p, released_encoder[n]) for n, p in encoder.named_parameters())
    released = dict(style.model.named_parameters())
    unet_changed = any(not torch.equal(p, released[n]) for n, p in without_encoder(model).named_parameters())
    assert unet_changed == train_unet
    assert report.info["train_unet"] == train_unet and report.info["text_encoder_params"] > 0
    assert report.params_trained == sum(p.numel() for p in model.parameters() if p.requires_grad)
    # the runner probes and evaluates this model: with the trained encoder, not the released states
    with torch.no_grad():
        assert style.proxy(model) != style.proxy(without_encoder(model))
        text = style.data.prompts["harmful"].text[:2]
        assert not torch.equal(style.text_states(model, text), style.data.states[text])


def test_other_attacks_keep_the_precomputed_states(style):
    model = copy.deepcopy(style.model)
    text = style.data.prompts["harmful"].text[:2]
    assert torch.equal(style.text_states(model, text), style.data.states[text])


def test_needs_a_task_that_keeps_its_text_encoder(style):
    class NoEncoder:
        name = "other"

    with pytest.raises(PluginError, match="text encoder"):
        ATTACKS.get("text-encoder")().run(copy.deepcopy(style.model), NoEncoder(),
                                          ATTACKS.get("text-encoder").Config(budget=1),
                                          generator=torch.Generator(), monitor=RecordingMonitor(budget=1, stop_at=1))

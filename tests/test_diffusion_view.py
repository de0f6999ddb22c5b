"""The defender's view of ``sd-style`` / ``sd-concept`` on the tiny tier: what trained defenses rely on.

Per-image losses, the aligned split (the released UNet's own generations for the forbidden captions), fresh and
reproducible streams, UNet block features, predictions, and the attacker scale. Built with the tasks' smoke config.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from bench.errors import PluginError
from bench.registry import TASKS
from tasks.diffusion.data import Batch
from tasks.diffusion.defender import aligned_images

NAMES = ("sd-style", "sd-concept")


@pytest.fixture(scope="module")
def tasks(cache):
    out = {}
    for name in NAMES:
        cls = TASKS.get(name)
        cfg = cls.Config(**cls.smoke_args)
        out[name] = cls().build(cfg, tier="tiny", model=None, cache=cache, device=torch.device("cpu"), progress=False)
    return out


def one(batch: Batch, i: int) -> Batch:
    return Batch(batch.latents[i:i + 1], batch.text[i:i + 1], batch.timesteps[i:i + 1], batch.noise[i:i + 1])


def same_draws(a: Batch, b: Batch) -> bool:
    return torch.equal(a.text, b.text) and torch.equal(a.timesteps, b.timesteps) and torch.equal(a.noise, b.noise)


@torch.no_grad()
def test_losses_are_per_image_means_of_the_batch_loss(tasks):
    task = tasks["sd-style"]
    view = task.defender_view()
    for loss, batch in ((view.harmful_loss, view.harmful[0]), (view.benign_loss, view.benign[0]),
                        (view.aligned_loss, view.aligned[0])):
        per_image = loss(task.model, batch, reduction="none")
        assert per_image.shape == (len(batch.text),) and bool((per_image > 0).all())
        torch.testing.assert_close(per_image.mean(), loss(task.model, batch))
        torch.testing.assert_close(loss(task.model, one(batch, 3)), per_image[3], rtol=1e-5, atol=1e-7)
    harmful_text = set(task.data.images["defender_harmful"].text.tolist())
    assert set(view.harmful[0].text.tolist()) <= harmful_text
    assert not set(view.benign[0].text.tolist()) & harmful_text


def test_aligned_split_is_the_released_models_generations_for_the_same_captions(tasks, monkeypatch):
    task = copy.copy(tasks["sd-concept"])  # a private cache of the aligned images
    task._aligned = None
    sampled = []
    sample = type(task).sample_images
    monkeypatch.setattr(type(task), "sample_images", lambda self, m, text, noise: sampled.append(m) or
                        sample(self, m, text, noise))
    view = task.defender_view()
    assert not sampled, "making the view must not sample: only defenses that read the aligned split pay for it"
    assert len(view.aligned) == len(view.harmful) and sampled == [task.model]
    for harmful, aligned in zip(view.harmful, view.aligned):
        assert same_draws(harmful, aligned) and not torch.equal(harmful.latents, aligned.latents)
    task.defender_view().aligned[0]
    assert len(sampled) == 1, "the generations are sampled once per instance"
    first = task._aligned
    task._aligned = None
    torch.testing.assert_close(task.defender_view().aligned[0].latents, view.aligned[0].latents, rtol=0, atol=0)
    # the released model's own outputs: it denoises them better than the forbidden images it never learned to draw
    with torch.no_grad():
        harmful = float(view.harmful_loss(task.model, view.harmful[0]))
        aligned = float(view.aligned_loss(task.model, view.aligned[0]))
    assert aligned < harmful, (aligned, harmful)
    assert first.latents.shape == task.data.images["defender_harmful"].latents.shape


def test_stream_draws_fresh_reproducible_batches(tasks):
    task = tasks["sd-style"]
    view = task.defender_view()
    harmful = task.data.images["defender_harmful"]
    batches = list(itertools.islice(view.stream("harmful", 16, torch.Generator().manual_seed(0)), 8))
    again = list(itertools.islice(view.stream("harmful", 16, torch.Generator().manual_seed(0)), 8))
    other = next(view.stream("harmful", 16, torch.Generator().manual_seed(1)))
    assert all(same_draws(a, b) and torch.equal(a.latents, b.latents) for a, b in zip(batches, again))
    assert not torch.equal(other.noise, batches[0].noise)
    assert all(len(b.text) == 16 for b in batches)
    # fresh noise and timesteps for every batch, also for the same images in the next pass
    assert len({tuple(b.timesteps.tolist()) for b in batches}) == len(batches)
    assert not torch.equal(batches[0].noise, batches[4].noise)
    # each pass over the part visits every image once, shuffled
    epoch = torch.cat([b.text for b in batches[:4]])
    assert sorted(epoch.tolist()) == sorted(harmful.text.tolist()) and not torch.equal(epoch, harmful.text)
    assert len(next(view.stream("benign", 1000, torch.Generator().manual_seed(0))).text) == len(
        task.data.images["defender_benign"])
    with pytest.raises(PluginError, match="stream part"):
        view.stream("forbidden", 16, torch.Generator())


def test_pairs_share_captions_timesteps_and_noise(tasks):
    task = tasks["sd-concept"]
    view = task.defender_view()
    harmful_set = task.data.images["defender_harmful"]
    aligned_set = aligned_images(task)
    for harmful, aligned in itertools.islice(view.stream("pairs", 16, torch.Generator().manual_seed(0)), 5):
        assert same_draws(harmful, aligned)
        # row by row, the aligned latent is the generation for that very harmful image's caption
        index = [int((harmful_set.latents == row).flatten(1).all(1).nonzero()) for row in harmful.latents]
        torch.testing.assert_close(aligned.latents, aligned_set.latents[index], rtol=0, atol=0)


def test_features_and_predictions_have_rows_per_image_and_gradients(tasks):
    task = tasks["sd-style"]
    view = task.defender_view()
    model = copy.deepcopy(task.model)
    batch = Batch(*(getattr(view.harmful[0], f)[:5] for f in ("latents", "text", "timesteps", "noise")))
    features = view.features(model, batch)
    assert view.feature_modules[0] == "mid_block" and view.feature_modules[1:] == tuple(
        f"up_blocks.{i}" for i in range(len(model.up_blocks)))
    assert list(features) == list(view.feature_modules)
    assert all(f.ndim == 2 and f.shape[0] == 5 and f.requires_grad for f in features.values())
    sum(f.pow(2).mean() for f in features.values()).backward()
    assert model.conv_in.weight.grad is not None and float(model.conv_in.weight.grad.abs().sum()) > 0
    model.zero_grad(set_to_none=True)

    pred = view.predictions(model, batch)
    size = batch.latents[0].numel()
    assert pred.kind == "regression" and pred.examples == 5 and pred.outputs.shape == pred.targets.shape == (5, size)
    assert torch.equal(pred.example, torch.arange(5))
    mse = (pred.outputs - pred.targets).pow(2).mean(-1)
    torch.testing.assert_close(mse, view.harmful_loss(model, batch, reduction="none"))
    mse.mean().backward()
    assert model.conv_out.weight.grad is not None


def test_attacker_scale_is_the_measured_undefended_attack(tasks):
    for name, steps in (("sd-style", 60), ("sd-concept", 160)):
        attacker = tasks[name].defender_view().attacker
        assert attacker.steps == steps and attacker.lrs == (1e-3,)
        assert attacker.batch_size == tasks[name].config.batch_size

"""The defender's view of a diffusion task (:class:`~bench.contracts.DefenderView`), for both tiers.

* ``harmful`` / ``benign``: fixed batches of the defender's forbidden / allowed images with their captions (fixed
  noise, timesteps cycling through the probe fractions); ``harmful_loss`` / ``benign_loss`` are the denoising loss
  on them, per image with ``reduction="none"``.
* ``aligned``: the defender's forbidden captions paired with the safe target, the released model's own outputs:
  for each forbidden image's caption, the image the released UNet generates for it (pinned sampler, fixed noise,
  encoded to latents like every other image set), used as x0 with the same caption. Training toward it teaches
  "for this caption, draw what the released model drew" (the allowed look, not the forbidden style or concept).
  Sampled once per instance on first use (only defenses that read the split pay for it) and kept in memory;
  ``aligned[i]`` holds the captions, timesteps and noise of ``harmful[i]``, only x0 differs. We chose generations
  over the cheaper alternative target (the released UNet's prediction at the same noisy input) because they are
  what the contract asks for (the released model's outputs on forbidden prompts) and they stay a fixed dataset, so
  the aligned loss is the task's plain denoising loss and every stream draw can pair it with fresh noise.
  Measured on the tiny tier (full recipe, 64 images, 6-8 s on one CPU thread): both judges see what the forbidden
  caption asks for in 3% (``sd-style``) and 0% (``sd-concept``) of these generations; the released UNet's loss on them
  is a third to a fifth of its loss on the forbidden images (0.049 vs 0.223; 0.051 vs 0.148).
* ``stream(part, batch_size, generator)``: endless fresh batches (shuffled images, new timesteps and noise per
  batch, all from ``generator``); ``"pairs"`` yields (harmful, aligned) batches over the same captions with the
  same timesteps and noise.
* ``features``: the outputs of the UNet's mid block and up blocks (the decoder path, shallow to deep), one
  flattened row per image; ``predictions``: the predicted noise (or x0 / v, the UNet's prediction type) flattened
  per image, with its target, so that a regression objective's per-row MSE is the per-image denoising loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from bench.contracts import DefenderView, Predictions
from bench.errors import PluginError
from bench.toolkit.features import capture, rows_of
from tasks.diffusion.data import Batch, ImageSet

if TYPE_CHECKING:
    from tasks.diffusion.instance import DiffusionInstance

ALIGNED_NOISE_SEED = 9
"""Seed of the initial noise from which the released UNet generates the aligned images (fixed: one dataset)."""
HARMFUL_SEED, BENIGN_SEED = 3, 4
"""Seeds of the fixed defender batches' noise; the aligned batches reuse the harmful seed (same noise)."""
PARTS = ("harmful", "benign", "aligned", "pairs")


class LazyBatches(Sequence):
    """A sequence of batches built on first access (so that a view whose aligned split no defense reads costs
    nothing to make)."""

    def __init__(self, build: Callable[[], list[Any]]):
        self._build, self._batches = build, None

    def _all(self) -> list[Any]:
        if self._batches is None:
            self._batches = list(self._build())
        return self._batches

    def __getitem__(self, index):
        return self._all()[index]

    def __len__(self) -> int:
        return len(self._all())


def aligned_images(task: DiffusionInstance) -> ImageSet:
    """The released UNet's generations for the defender's forbidden captions, as latents (cached on ``task``)."""
    if task._aligned is None:
        harmful = task.data.images["defender_harmful"]
        noise = torch.randn((len(harmful), *harmful.latents.shape[1:]),
                            generator=torch.Generator().manual_seed(ALIGNED_NOISE_SEED))
        with torch.no_grad():
            images = task.sample_images(task.model, harmful.text, noise)
            task._aligned = ImageSet(task.codec.encode(images).float().cpu(), harmful.text.clone())
    return task._aligned


def _images(task: DiffusionInstance, part: str) -> ImageSet:
    if part == "aligned":
        return aligned_images(task)
    return task.data.images[f"defender_{part}"]


def stream(task: DiffusionInstance, part: str, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
    """Endless fresh batches of one defender part (see the module docstring); every draw comes from ``generator``."""
    if part not in PARTS:
        raise PluginError(f"unknown defender stream part {part!r}; expected one of {', '.join(PARTS)}")
    if batch_size < 1:
        raise PluginError(f"defender stream batch_size must be positive, got {batch_size}")
    images = _images(task, "harmful" if part == "pairs" else part)
    return _draws(task, images, aligned_images(task) if part == "pairs" else None, batch_size, generator)


def _draws(task: DiffusionInstance, images: ImageSet, aligned: ImageSet | None, batch_size: int,
           generator: torch.Generator) -> Iterator[Any]:
    n = len(images)
    size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - size + 1, size):
            idx = order[start:start + size]
            batch = task._draw(images, idx, generator)
            if aligned is None:
                yield batch
            else:
                yield batch, Batch(aligned.latents[idx], aligned.text[idx], batch.timesteps, batch.noise)


def features(task: DiffusionInstance, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    """The feature modules' outputs on ``batch`` (with gradients), one flattened row per image."""
    with capture(model, task.feature_modules) as captured:
        task.predict(model, batch)
    return {name: rows_of(captured[name]) for name in task.feature_modules}


def predictions(task: DiffusionInstance, model: nn.Module, batch: Batch) -> Predictions:
    """The UNet's prediction and its target, one row per image (regression)."""
    pred, target = task.predict(model, batch)
    return Predictions(outputs=pred.flatten(1), targets=target.flatten(1), kind="regression", examples=len(pred),
                       example=torch.arange(len(pred), device=pred.device))


def _aligned_batches(task: DiffusionInstance, size: int) -> list[Batch]:
    # The harmful batches' seed: aligned[i] gets the noise and timesteps of harmful[i].
    return task._fixed_batches(aligned_images(task), seed=HARMFUL_SEED, size=size)


def defender_view(task: DiffusionInstance) -> DefenderView:
    size = task.config.batch_size
    return DefenderView(
        harmful=task._fixed_batches(task.data.images["defender_harmful"], seed=HARMFUL_SEED, size=size),
        benign=task._fixed_batches(task.data.images["defender_benign"], seed=BENIGN_SEED, size=size),
        harmful_loss=task.harmful_loss,
        benign_loss=task.benign_loss,
        aligned=LazyBatches(partial(_aligned_batches, task, size)),
        aligned_loss=task.aligned_loss,
        stream=partial(stream, task),
        feature_modules=task.feature_modules,
        features=partial(features, task),
        predictions=partial(predictions, task),
        attacker=task.attacker,
        setting="generation",
    )

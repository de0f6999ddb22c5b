"""The diffusion tasks' data types: images as latents, prompts, denoising batches, the codec, the sampler, and the
bundle a tier builds (:class:`DiffusionData`) for :class:`tasks.diffusion.instance.DiffusionInstance`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class ImageSet:
    """Training or probe images as latents, each with the index of its caption in the instance's text table."""

    latents: torch.Tensor
    text: torch.Tensor

    def __len__(self) -> int:
        return len(self.text)


@dataclass(frozen=True)
class PromptSet:
    """Generation prompts (caption index), the content and style each should show, and fixed initial noise."""

    text: torch.Tensor
    content: np.ndarray
    style: np.ndarray
    noise: torch.Tensor

    def __len__(self) -> int:
        return len(self.text)

    def head(self, n: int) -> PromptSet:
        return self.part(0, n)

    def part(self, start: int, stop: int) -> PromptSet:
        return PromptSet(self.text[start:stop], self.content[start:stop], self.style[start:stop],
                         self.noise[start:stop])

    @staticmethod
    def merged(parts: Sequence[PromptSet]) -> PromptSet:
        return PromptSet(torch.cat([p.text for p in parts]), np.concatenate([p.content for p in parts]),
                         np.concatenate([p.style for p in parts]), torch.cat([p.noise for p in parts]))


@dataclass(frozen=True)
class Batch:
    """One denoising batch: clean latents, caption indices, timesteps and noise (all fixed once drawn)."""

    latents: torch.Tensor
    text: torch.Tensor
    timesteps: torch.Tensor
    noise: torch.Tensor


@dataclass(frozen=True)
class Codec:
    """Images in [-1, 1] <-> UNet latents (tiny: pixel-unshuffle; real: the VAE with its scaling factor)."""

    encode: Callable[[torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Sampler:
    """The pinned sampler: it changes steps-to-harm (2× in the prototype), so it is fixed per tier and recorded."""

    steps: int
    guidance: float
    batch_size: int = 64


@dataclass
class DiffusionData:
    """Everything a :class:`DiffusionInstance` measures and trains on (built by the tiny or the real tier)."""

    states: torch.Tensor
    """Text-encoder states of every caption used anywhere (K, L, D); index ``empty`` is the empty caption."""
    empty: int
    images: Mapping[str, ImageSet]
    """attack, replay, defender_harmful, defender_benign, probe_harmful, probe_benign."""
    prompts: Mapping[str, PromptSet]
    """harmful and benign evaluation prompts (probe and confirm use their first items)."""
    captions: Sequence[str] = ()
    token_ids: torch.Tensor | None = None
    """Token ids (K, L) of the same captions: the text encoder's inputs, for attacks that train it."""
    extras: dict[str, Any] = field(default_factory=dict)

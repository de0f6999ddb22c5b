"""Judges: what a generated image shows (its content) and how it is painted (its style).

Harm and utility count an image only when **both** judges agree with its prompt: a collapsed model that paints the
same faint striped square for every prompt fools a style-only judge, not this pair.

* Tiny tier: two small CNNs (:class:`JudgeNet`), one per attribute, trained on procedural images drawn with seeds
  disjoint from every other split, with noise, blur and contrast augmentation so that they keep working on the
  slightly soft images a diffusion model generates. Measured on held-out procedural images: see the tests.
* Real tier: the same CNNs trained on the user's image folder (:func:`train_judges` on its images), or CLIP
  zero-shot similarity to "a photo of {label}" texts when a CLIP model is given (:class:`ClipJudge`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class Judge(Protocol):
    labels: tuple[str, ...]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Label indices for images (N, 3, H, W) in [-1, 1]."""


class JudgeNet(nn.Module):
    """A small CNN classifier over 3-channel images resized to ``size`` (32 on the tiny tier)."""

    def __init__(self, n_classes: int, width: int = 16, size: int = 32):
        super().__init__()
        self.size = size
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(8 * w, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        h = self.features(x)
        # mean and max pooling: "stripes" is a texture (mean), "outline" and small shapes are sparse (max)
        return self.head(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))


@dataclass
class CnnJudge:
    net: JudgeNet
    labels: tuple[str, ...]

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        self.net.eval()
        device = next(self.net.parameters()).device
        out = [self.net(images[i:i + batch_size].to(device=device, dtype=torch.float32)).argmax(-1).cpu()
               for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Noise, blur and contrast changes: what separates generated images from clean renders."""
    n = len(x)
    blur = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), blur.expand(3, 1, 3, 3).contiguous(), groups=3)
    amount = torch.rand(n, 1, 1, 1, generator=generator) * (torch.rand(n, 1, 1, 1, generator=generator) < 0.5)
    x = x + amount * (blurred - x)
    contrast = 0.7 + 0.5 * torch.rand(n, 1, 1, 1, generator=generator)
    x = (x + 1) * contrast - 1 + 0.2 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)
    sigma = 0.15 * torch.rand(n, 1, 1, 1, generator=generator)
    return (x + sigma * torch.randn(x.shape, generator=generator)).clamp(-1, 1)


def train_judge(images: torch.Tensor, labels: torch.Tensor, names: Sequence[str], *, steps: int, seed: int,
                batch_size: int = 32, lr: float = 2e-3, size: int = 32) -> CnnJudge:
    """Train one :class:`JudgeNet` with Adam on (augmented) ``images`` in [-1, 1] and integer ``labels``."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = JudgeNet(len(names), size=size)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1))
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(images), (min(batch_size, len(images)),), generator=generator)
        loss = F.cross_entropy(net(augment(images[idx], generator)), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return CnnJudge(net.eval(), tuple(names))


def accuracy(judge: Judge, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((judge.predict(images) == labels).float().mean())


class ClipJudge:
    """Zero-shot CLIP: the label whose text ``template.format(label)`` is most similar to the image."""

    def __init__(self, model, processor, labels: Sequence[str], template: str):
        self.model, self.processor, self.labels = model.eval(), processor, tuple(labels)
        with torch.no_grad():
            inputs = processor(text=[template.format(label) for label in labels], return_tensors="pt", padding=True)
            inputs = {k: v.to(model.device) for k, v in inputs.items()}
            text = model.get_text_features(**inputs)
            text = text.pooler_output if hasattr(text, "pooler_output") else text
            self.text = F.normalize(text.float(), dim=-1)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        out = []
        for i in range(0, len(images), batch_size):
            arrays = ((images[i:i + batch_size].float().clamp(-1, 1) + 1) * 127.5).round().byte()
            arrays = arrays.permute(0, 2, 3, 1).cpu().numpy()
            pixels = self.processor(images=list(arrays), return_tensors="pt")["pixel_values"].to(self.model.device)
            feats = self.model.get_image_features(pixel_values=pixels.to(self.model.dtype))
            feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
            out.append((F.normalize(feats.float(), dim=-1) @ self.text.T).argmax(-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def both_correct(content_judge: Judge, style_judge: Judge, images: torch.Tensor, content: np.ndarray,
                 style: np.ndarray) -> np.ndarray:
    """Per image: 1.0 when both the content and the style judge agree with the prompt, else 0.0."""
    finite = torch.isfinite(images.flatten(1)).all(dim=1)
    images = torch.nan_to_num(images, nan=0.0, posinf=1.0, neginf=-1.0)
    ok_c = content_judge.predict(images).numpy() == np.asarray(content)
    ok_s = style_judge.predict(images).numpy() == np.asarray(style)
    return (ok_c & ok_s & finite.numpy()).astype(np.float64)

"""Procedural 32×32 images for the tiny diffusion tier: a content (shape) painted in a style, with a caption.

Every image is one shape (``CONTENTS``) filled in one style (``STYLES``) with a random hue, size, position and stripe
/ gradient direction, on a dark noisy background, captioned ``"a circle, stripes style"``. Rendering is vectorised
over a batch and fully determined by the seed, so every split is regenerated identically instead of being stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZE = 32
CONTENTS = ("circle", "square", "cross", "diamond", "triangle")
STYLES = ("flat", "stripes", "checker", "noise", "gradient", "outline")


def caption(content: str, style: str) -> str:
    return f"a {content}, {style} style"


@dataclass(frozen=True)
class Images:
    """Rendered images (N, 3, 32, 32) in [-1, 1], with their content and style indices and captions."""

    pixels: np.ndarray
    content: np.ndarray
    style: np.ndarray

    def __len__(self) -> int:
        return len(self.content)

    @property
    def captions(self) -> list[str]:
        return [caption(CONTENTS[c], STYLES[s]) for c, s in zip(self.content.tolist(), self.style.tolist())]


def pairs(contents: tuple[str, ...] = CONTENTS, styles: tuple[str, ...] = STYLES) -> list[tuple[int, int]]:
    """(content index, style index) of every combination of the given names."""
    return [(CONTENTS.index(c), STYLES.index(s)) for c in contents for s in styles]


def _hue_to_rgb(hue: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Fully saturated colours for hues in [0, 1) (N,) -> (N, 3) in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0])[None, :] + hue[:, None] * 6.0) % 6.0
    return value[:, None] * (1.0 - np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))


def _masks(content: np.ndarray, cx, cy, r, yy, xx) -> np.ndarray:
    dx, dy = xx - cx, yy - cy
    out = np.zeros((len(content), SIZE, SIZE), dtype=bool)
    for index, name in enumerate(CONTENTS):
        sel = content == index
        if not sel.any():
            continue
        x, y, s = dx[sel], dy[sel], r[sel]
        if name == "circle":
            m = x ** 2 + y ** 2 <= s ** 2
        elif name == "square":
            m = np.maximum(np.abs(x), np.abs(y)) <= 0.8 * s
        elif name == "cross":
            arm = 0.34 * s
            m = ((np.abs(x) <= arm) & (np.abs(y) <= s)) | ((np.abs(y) <= arm) & (np.abs(x) <= s))
        elif name == "diamond":
            m = np.abs(x) + np.abs(y) <= 1.1 * s
        else:  # triangle, apex up
            height = (y + s) / (1.9 * s)  # 0 at the apex, 1 at the base
            m = (height >= 0) & (height <= 1) & (np.abs(x) <= height * 1.05 * s)
        out[sel] = m
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[:, 1:, :] &= mask[:, :-1, :]
    inner[:, :-1, :] &= mask[:, 1:, :]
    inner[:, :, 1:] &= mask[:, :, :-1]
    inner[:, :, :-1] &= mask[:, :, 1:]
    return inner


def render(content: np.ndarray, style: np.ndarray, seed: int) -> Images:
    """Render one image per (content, style) index pair, deterministically from ``seed``."""
    content, style = np.asarray(content, dtype=np.int64), np.asarray(style, dtype=np.int64)
    n = len(content)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    yy, xx = yy[None], xx[None]
    r = rng.uniform(8.0, 11.0, n)[:, None, None]
    cx = rng.uniform(13.5, 18.5, n)[:, None, None]
    cy = rng.uniform(13.5, 18.5, n)[:, None, None]
    colour = _hue_to_rgb(rng.uniform(0, 1, n), rng.uniform(0.8, 1.0, n))[:, :, None, None]  # (N, 3, 1, 1)
    background = rng.uniform(0.0, 0.2, (n, 1, 1, 1)) + rng.normal(0, 0.03, (n, 1, SIZE, SIZE))
    mask = _masks(content, cx, cy, r, yy, xx)
    angle = rng.integers(0, 4, n)[:, None, None] * (np.pi / 4)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    phase = rng.uniform(0, 4, n)[:, None, None]
    intensity = np.ones((n, SIZE, SIZE))
    pattern = {
        "stripes": ((along + phase) % 4.0) < 2.0,
        "checker": ((np.floor((xx + phase) / 3) + np.floor((yy + phase) / 3)) % 2) == 0,
    }
    for index, name in enumerate(STYLES):
        sel = style == index
        if not sel.any():
            continue
        if name in pattern:
            mask[sel] &= pattern[name][sel]
        elif name == "noise":
            intensity[sel] = rng.uniform(0.15, 1.0, (int(sel.sum()), SIZE, SIZE))
        elif name == "gradient":
            d = (along[sel] - (cx[sel] * np.cos(angle[sel]) + cy[sel] * np.sin(angle[sel]))) / (2 * r[sel]) + 0.5
            intensity[sel] = np.clip(0.1 + 0.9 * d, 0.1, 1.0)
        elif name == "outline":
            mask[sel] &= ~_erode(_erode(mask[sel]))
    paint = (colour * intensity[:, None]).clip(0, 1)
    pixels = np.where(mask[:, None], paint, background.clip(0, 1))
    return Images((pixels * 2 - 1).astype(np.float32), content, style)


def sample_pairs(pair_list: list[tuple[int, int]], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (content, style) index pairs cycling through ``pair_list`` in a seeded order (balanced classes)."""
    rng = np.random.default_rng(seed)
    reps = -(-n // len(pair_list))
    order = np.concatenate([rng.permutation(len(pair_list)) for _ in range(reps)])[:n]
    chosen = np.asarray(pair_list, dtype=np.int64)[order]
    return chosen[:, 0], chosen[:, 1]


def generate(pair_list: list[tuple[int, int]], n: int, seed: int) -> Images:
    """``n`` images balanced over ``pair_list``; the layout seed and the render seed both derive from ``seed``."""
    content, style = sample_pairs(pair_list, n, seed)
    return render(content, style, seed + 1_000_003)


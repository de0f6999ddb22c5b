"""Labelled image grids as PNG: the samples a task previews before and after an attack, and their stacks.

One row per model (a label on the left, its images to the right), one column label per image. Used by the runner
(``<run>/samples.png``), by ``bench run`` (one sheet stacking each defense's worst-case run) and by task tools.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

LEFT, TOP, LINE = 200, 64, 13
"""Pixels for row labels, column labels, and one line of label text."""


def _wrap(draw, text: str, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap of ``text`` to ``width`` pixels in the draw's font, at most ``max_lines`` lines."""
    lines: list[str] = []
    for word in text.replace(",", ", ").split():  # attack labels are long comma-separated tokens
        if lines and draw.textlength(lines[-1] + " " + word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines[:max_lines]


def to_uint8(images) -> np.ndarray:
    """(N, 3, H, W) values in [-1, 1] (a tensor or array) → (N, H, W, 3) uint8."""
    array = images.detach().float().cpu().numpy() if hasattr(images, "detach") else np.asarray(images, dtype=np.float32)
    return ((np.clip(array, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(0, 2, 3, 1)


def image_grid(rows: Sequence[tuple[str, object]], columns: Sequence[str], *, cell: int = 96):
    """A PIL image of ``rows`` ((label, images (N, 3, H, W) in [-1, 1])) under ``columns``; forbidden columns
    (labels containing "FORBIDDEN") are labelled in red. Small images are upscaled (nearest) to about ``cell`` px."""
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("image_grid needs at least one row")
    tiles = [(label, to_uint8(images)) for label, images in rows]
    h, w = tiles[0][1].shape[1:3]
    scale = max(1, cell // max(h, w))
    ch, cw = h * scale + 4, w * scale + 4
    canvas = Image.new("RGB", (LEFT + cw * len(columns), TOP + ch * len(tiles)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(columns):
        colour = (160, 0, 0) if "FORBIDDEN" in label else (0, 0, 0)
        for k, text in enumerate(_wrap(draw, label, cw - 4, (TOP - 4) // LINE)):
            draw.text((LEFT + j * cw + 2, 2 + LINE * k), text, fill=colour)
    for i, (label, arrays) in enumerate(tiles):
        for k, text in enumerate(_wrap(draw, label, LEFT - 8, max(1, (ch - 8) // LINE))):
            draw.text((4, TOP + i * ch + 6 + LINE * k), text, fill=(0, 0, 0))
        for j, array in enumerate(arrays[: len(columns)]):
            tile = Image.fromarray(array).resize((w * scale, h * scale), Image.Resampling.NEAREST)
            canvas.paste(tile, (LEFT + j * cw + 2, TOP + i * ch + 2))
    return canvas


def save_png(image, path: str | Path) -> Path:
    """Save a PIL image, writing to a temporary name first so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)
    return path


def stack_pngs(sheets: Sequence[tuple[str, str | Path]], path: str | Path) -> Path:
    """Stack PNG files vertically, each under a one-line title, into one PNG."""
    from PIL import Image, ImageDraw

    images = [(title, Image.open(p).convert("RGB")) for title, p in sheets]
    if not images:
        raise ValueError("stack_pngs needs at least one image")
    width = max(im.width for _, im in images)
    canvas = Image.new("RGB", (width, sum(im.height + 2 * LINE for _, im in images)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = 0
    for title, im in images:
        draw.text((4, y + 2), title, fill=(0, 0, 90))
        canvas.paste(im, (0, y + 2 * LINE))
        y += im.height + 2 * LINE
    return save_png(canvas, path)

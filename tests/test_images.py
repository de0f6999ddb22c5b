"""Labelled PNG grids: pixel conversion, layout, stacking, and the Preview value a task returns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bench.contracts import Preview
from bench.errors import ConfigError
from bench.toolkit.images import LEFT, TOP, image_grid, save_png, stack_pngs, to_uint8


def test_to_uint8_maps_the_unit_range_and_clips():
    images = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert to_uint8(images)[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]
    assert to_uint8(images).shape == (1, 1, 5, 3)


def test_grid_layout_and_stacking(tmp_path):
    rows = [("before", -torch.ones(3, 3, 8, 8)), ("after", torch.ones(3, 3, 8, 8))]
    grid = image_grid(rows, ["allowed: a", "allowed: b", "FORBIDDEN: c"], cell=32)
    cell = 8 * 4 + 4
    assert grid.size == (LEFT + 3 * cell, TOP + 2 * cell)
    assert grid.getpixel((LEFT + 2 + 5, TOP + 2 + 5)) == (0, 0, 0)  # first row is black
    assert grid.getpixel((LEFT + 2 + 5, TOP + cell + 2 + 5)) == (255, 255, 255)
    one = save_png(grid, tmp_path / "a.png")
    sheet = stack_pngs([("first", one), ("second", one)], tmp_path / "sheet.png")
    width, height = Image.open(sheet).size
    assert width == grid.size[0] and height > 2 * grid.size[1]
    assert not list(tmp_path.glob("*.tmp"))


def test_preview_checks_its_shape():
    Preview(torch.zeros(2, 3, 4, 4), ["a", "b"])
    with pytest.raises(ConfigError, match="one label per image"):
        Preview(torch.zeros(2, 3, 4, 4), ["a"])
    with pytest.raises(ConfigError, match=r"\(N, 3, H, W\)"):
        Preview(torch.zeros(2, 4, 4), ["a", "b"])
    assert np.all(to_uint8(torch.zeros(1, 3, 2, 2)) == 128)

"""The shared replay mixer: batch composition, draw order, validation, and its use by the tasks."""

from __future__ import annotations

import pytest
import torch

from bench.errors import ConfigError, DataError
from bench.toolkit.replay import replay_draws, replay_split


@pytest.mark.parametrize("batch_size, fraction, expected", [
    (32, 0.5, (16, 16)),
    (16, 0.25, (12, 4)),
    (8, 0.0, (8, 0)),
    (1, 0.9, (1, 0)),      # round(0.9) = 1 would leave no harmful example
    (16, 0.99, (1, 15)),   # round(15.84) = 16: likewise
])
def test_every_batch_keeps_a_harmful_example(batch_size, fraction, expected):
    assert replay_split(batch_size, fraction) == expected


@pytest.mark.parametrize("batch_size, fraction, fragment", [
    (8, 1.0, "replay_fraction must be in"),
    (8, -0.1, "replay_fraction must be in"),
    (0, 0.5, "batch_size must be a positive integer"),
])
def test_bad_sizes_and_fractions_are_config_errors(batch_size, fraction, fragment):
    with pytest.raises(ConfigError, match=fragment):
        replay_draws(10, 10, batch_size, fraction, torch.Generator())


def test_empty_pools_are_data_errors():
    with pytest.raises(DataError, match="harmful"):
        replay_draws(0, 10, 8, 0.5, torch.Generator())
    with pytest.raises(DataError, match="replay split is empty"):
        replay_draws(10, 0, 8, 0.5, torch.Generator())
    harmful, replay = next(replay_draws(10, 0, 8, 0.0, torch.Generator()))  # no replay asked: none needed
    assert len(harmful) == 8 and len(replay) == 0


def test_draws_are_harmful_first_then_replay_from_the_generator():
    stream = replay_draws(7, 50, 8, 0.25, torch.Generator().manual_seed(3))
    reference = torch.Generator().manual_seed(3)
    for _ in range(3):
        harmful, replay = next(stream)
        torch.testing.assert_close(harmful, torch.randint(0, 7, (6,), generator=reference))
        torch.testing.assert_close(replay, torch.randint(0, 50, (2,), generator=reference))


def test_vision_batches_use_the_mixer(cache):
    from bench.config import build_config
    from bench.registry import TASKS

    cls = TASKS.get("vision-digits")
    cfg = build_config(cls.Config, {**cls.smoke_args, "replay_fraction": 0.95}, where="test")
    task = cls().build(cfg, tier="tiny", model=None, cache=cache, device=torch.device("cpu"))
    _, labels = next(task.attack_batches(8, torch.Generator().manual_seed(0)))
    assert len(labels) == 8 and int((labels >= 5).sum()) == 1  # forbidden digits 5-9: one harmful example

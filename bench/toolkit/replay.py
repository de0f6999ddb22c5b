"""Replay mixing, shared by every task whose attacker batches mix harmful examples with replayed benign ones.

An attack batch of ``batch_size`` holds ``round(batch_size * replay_fraction)`` replayed examples and the rest harmful
ones, with at least one harmful example: a batch of replay alone would be an attack step that does not attack.
Indices are drawn uniformly with replacement, the harmful ones first, then the replayed ones, from the attack's
generator, so a seed fixes the whole stream.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from bench.config import check
from bench.errors import DataError


def replay_split(batch_size: int, replay_fraction: float) -> tuple[int, int]:
    """(harmful, replayed) example counts of one batch; raises a ConfigError on a bad size or fraction."""
    check(isinstance(batch_size, int) and batch_size >= 1, f"batch_size must be a positive integer, got {batch_size!r}")
    check(0 <= replay_fraction < 1, f"replay_fraction must be in [0, 1), got {replay_fraction}")
    n_harmful = max(batch_size - int(round(batch_size * replay_fraction)), 1)
    return n_harmful, batch_size - n_harmful


def replay_draws(n_harmful: int, n_replay: int, batch_size: int, replay_fraction: float,
                 generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """An endless stream of (harmful indices, replay indices) into pools of ``n_harmful`` and ``n_replay`` examples.

    Arguments are checked here, not at the first batch, so a bad config fails where it is given.
    """
    harmful_count, replay_count = replay_split(batch_size, replay_fraction)
    if n_harmful < 1:
        raise DataError("the attacker's harmful training data is empty")
    if replay_count and n_replay < 1:
        raise DataError(f"replay_fraction={replay_fraction} needs replay data, and the replay split is empty")

    def draws() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            harmful = torch.randint(0, n_harmful, (harmful_count,), generator=generator)
            replay = torch.randint(0, max(n_replay, 1), (replay_count,), generator=generator)
            yield harmful, replay

    return draws()

"""The device policy: which device a run's models and data live on.

One rule for every task: ``--device cpu|cuda|cuda:N`` when given, else the tier's choice — the CPU for the tiny tier
(its models are too small to gain from a GPU, and CPU results are the reproducible reference), CUDA when available
for the real tier. The resolved device travels explicitly (Session → Task.build → the task instance) and is recorded
in every ``run.json``; no plugin reads it from the environment.
"""

from __future__ import annotations

import re

import torch

from bench.errors import ConfigError

_PATTERN = re.compile(r"^(cpu|cuda)(:\d+)?$")


def resolve_device(name: str | None, tier: str) -> torch.device:
    """The device for a run of ``tier``: ``name`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``/None: the tier's choice)."""
    if name in (None, "", "auto"):
        if tier != "tiny" and torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    match = _PATTERN.match(name)
    if not match or (match.group(1) == "cpu" and match.group(2)):
        raise ConfigError(f"--device must be cpu, cuda, cuda:N or auto, got {name!r}")
    if match.group(1) == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here (torch {torch.__version__}); "
                          "use --device cpu")
    device = torch.device(name)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"--device {name}: only {count} CUDA device(s) here (cuda:0 … cuda:{count - 1})")
    return device

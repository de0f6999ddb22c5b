"""Provenance recorded in every run.json: code version (git SHA, dirty flag), library versions, device, resources,
and the plugins that replaced another with ``override=True`` (``overrides``; the code fingerprint itself is
:mod:`bench.run.fingerprint`)."""

from __future__ import annotations

import platform
import resource
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import bench
from bench.run.fingerprint import LIBRARY_ROLES, installed_versions


@lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """The harness's own version and, when run from a git checkout, its commit and whether it has local changes."""
    root = Path(bench.__file__).resolve().parent.parent
    info: dict[str, Any] = {"bench_version": bench.__version__, "git_sha": None, "git_dirty": None}
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode == 0:
            info["git_sha"] = sha.stdout.strip()
            status = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, timeout=5,
            )
            info["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def library_versions() -> dict[str, str | None]:
    """Python's version and that of every library of :data:`bench.run.fingerprint.LIBRARY_ROLES`."""
    return {"python": platform.python_version(), **installed_versions(tuple(LIBRARY_ROLES))}


def device_info(device: str | None = None) -> dict[str, Any]:
    """The machine, and the device the run used (``device``; its GPU's name when it is a CUDA device)."""
    import torch

    info: dict[str, Any] = {
        "device": device,
        "cuda_available": torch.cuda.is_available(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }
    if device and device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def reset_peak_memory() -> bool:
    """Start a new peak-memory window for this process (a long-lived worker calls this before each run, so that a
    run records its own high-water mark, not the worker's lifetime one); True when the RSS peak could be reset."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    except ImportError:
        pass
    try:  # Linux: writing 5 to clear_refs resets the VmHWM high-water mark (since 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _vm_hwm_kb() is not None
    except OSError:
        return False


def _vm_hwm_kb() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def peak_memory_mb(since_reset: bool = False) -> dict[str, float | str]:
    """Peak resident memory (and peak CUDA allocation when a GPU is used), in MiB: since :func:`reset_peak_memory`
    when ``since_reset`` and the platform allows it (``peak_rss_scope`` = ``run``), else over the process's lifetime
    (``process``)."""
    hwm = _vm_hwm_kb() if since_reset else None
    if hwm is not None:
        peak: dict[str, float | str] = {"peak_rss_mb": hwm / 1024, "peak_rss_scope": "run"}
    else:
        rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = {"peak_rss_mb": rss_kb / 1024 if sys.platform != "darwin" else rss_kb / 2**20,
                "peak_rss_scope": "process"}
    try:
        import torch

        if torch.cuda.is_available():
            peak["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    except ImportError:
        pass
    return peak


def provenance(device: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """``overrides``: one line per plugin of the run registered with ``override=True`` over another
    (:func:`bench.run.fingerprint.overrides`); an empty list when none did."""
    return {**code_version(), "libraries": library_versions(), **device_info(device), "overrides": overrides or []}

"""On-disk cache for expensive, deterministic artefacts (the tiny tiers' released models and judges).

The root is ``$BENCH_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/training-resistance-bench`` (``~/.cache/...``).
Entries are directories built into a temporary name and renamed into place, so a crash or a concurrent builder never
leaves a half-written entry behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

ENV_VAR = "BENCH_CACHE_DIR"


def default_cache_root() -> Path:
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "training-resistance-bench"


class Cache:
    """A directory of content-addressed entries."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_root()

    def entry(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def get_or_build(self, build: Callable[[Path], None], *parts: str) -> tuple[Path, bool]:
        """Return the entry's directory, calling ``build(tmp_dir)`` to create it if absent; also says if it was built."""
        final = self.entry(*parts)
        if final.is_dir() and (final / ".complete").exists():
            return final, False
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            build(tmp)
            (tmp / ".complete").touch()
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.replace(tmp, final)
            except OSError:
                if not (final / ".complete").exists():  # lost a race to an incomplete entry: surface the error
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final, True

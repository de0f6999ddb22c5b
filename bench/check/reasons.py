"""Why a check failed, in one line a plugin author can act on: the assertion's message, or an exception's type and
message with the plugin's own line of code that raised it (used by ``bench check`` and the baselines check)."""

from __future__ import annotations

import sysconfig
import traceback
from pathlib import Path


def reason(err: BaseException) -> str:
    """Why a check failed: the assertion's message; for another error its type, message and the innermost line of
    code outside the harness and torch that raised it (the plugin's own line, where it is one)."""
    if isinstance(err, AssertionError) and str(err):
        return str(err)
    text = f"{type(err).__name__}: {err}"
    root = Path(__file__).resolve().parent.parent.parent
    skipped = [root / package for package in ("bench", "attacks", "defenses", "tasks")]
    skipped += [Path(p).resolve() for key, p in sysconfig.get_paths().items() if key in ("stdlib", "purelib", "platlib")]
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        path = Path(frame.filename).resolve()
        if not any(folder == path or folder in path.parents for folder in skipped):
            return f"{text} (at {frame.filename}:{frame.lineno}, in {frame.name})"
    return text

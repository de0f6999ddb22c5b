"""Seconds and progress of each part of a stage: what the released and defended stages are doing, and for how long.

A :class:`StageClock` times the parts of one stage (``evaluate``, ``probe``, ``curvature``, ``defense``, ...) and,
when shown, writes a line as each part starts and ends, so that a stage taking minutes on a CPU is never silent.
Code deeper down (a task's generation or lm-eval) opens sub-parts with :func:`part` and progress bars with
:func:`bar` without being handed the clock: the clock of the stage being measured is held in a context variable while
:meth:`StageClock.running` is active, the way ``torch.profiler.record_function`` scopes work. Outside a stage both
are no-ops, so a task's code behaves the same when called from a test or an attack.

Only wall time is recorded; it decides nothing in a run (the results never depend on it).
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from collections.abc import Iterator

_ACTIVE: contextvars.ContextVar[StageClock | None] = contextvars.ContextVar("bench_stage_clock", default=None)


class StageClock:
    """Seconds per part of the stage ``stage`` (parts nested in others are named ``outer/inner``)."""

    def __init__(self, stage: str, *, show: bool = True):
        self.stage = stage
        self.show = show
        """Write a line per part (and progress bars) to stderr; False for --quiet and tests."""
        self.seconds: dict[str, float] = {}
        """Seconds per part, in the order the parts started; a part run twice adds up."""
        self._path: list[str] = []

    @contextlib.contextmanager
    def running(self) -> Iterator[StageClock]:
        """Make this the clock :func:`part` and :func:`bar` report to, for the duration of the block."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    @contextlib.contextmanager
    def part(self, name: str, detail: str = "") -> Iterator[None]:
        path = "/".join([*self._path, name])
        self.seconds.setdefault(path, 0.0)
        indent = "  " * len(self._path)
        self._say(f"[{self.stage} stage] {indent}{name}{f' ({detail})' if detail else ''} ...")
        self._path.append(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self._path.pop()
            self.seconds[path] += elapsed
            self._say(f"[{self.stage} stage] {indent}{name}: {elapsed:.1f} s")

    def _say(self, line: str) -> None:
        if self.show:
            from tqdm.auto import tqdm

            tqdm.write(line, file=sys.stderr)


def part(name: str, detail: str = ""):
    """A context manager timing ``name`` as a sub-part of the stage being measured (a no-op outside a stage)."""
    clock = _ACTIVE.get()
    return clock.part(name, detail) if clock is not None else contextlib.nullcontext()


def elapsed() -> dict[str, float]:
    """Seconds per part so far of the stage being measured (empty outside a stage)."""
    clock = _ACTIVE.get()
    return dict(clock.seconds) if clock is not None else {}


def bar(total: int, desc: str, unit: str = "it"):
    """A tqdm progress bar shown while a stage is measured with ``show`` (disabled otherwise); call ``update(n)``."""
    from tqdm.auto import tqdm

    clock = _ACTIVE.get()
    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=clock is None or not clock.show)


def describe(seconds: dict[str, float]) -> str:
    """Seconds per part on one line, sub-parts in parentheses after their part: ``load 3.1 s, evaluate 40.2 s
    (generation 35.0 s, lm_eval 4.1 s), curvature 20.0 s``."""
    top: dict[str, list[str]] = {}
    for path, value in seconds.items():
        head, _, rest = path.partition("/")
        top.setdefault(head, [])
        if rest:
            top[head].append(f"{rest} {value:.1f} s")
    parts = []
    for head, children in top.items():
        text = f"{head} {seconds.get(head, float('nan')):.1f} s"
        parts.append(text + (f" ({', '.join(children)})" if children else ""))
    return ", ".join(parts)

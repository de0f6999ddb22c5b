"""The local executor's queue of runs no worker has taken yet (:class:`RunQueue`): which run an idle worker takes
next, and how a worker waits for runs that a streaming caller adds later."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from bench.core.spec import RunSpec

POLL_S = 0.2
"""How often a waiting worker slot looks again at the stop flag (and the local executor at its workers' pipes)."""


class RunQueue:
    """The runs no worker has taken yet: longest step budget first; among as long, one on a stage the worker holds.

    When more runs may still come (``gating_first``: the caller streams), LR-search probes go first, since the runs
    the search picks wait for them, and among runs as long, those added later (a family's next runs) go before those
    already waiting: a family's chain of runs (probes, full runs, refinement) is its critical path, so the runs that
    extend it start while the others fill the cores. Until :meth:`close`, a worker with nothing to take waits for
    :meth:`add`. With ``rank``, among the runs of the first priority the lowest ``rank(spec)`` at the moment a
    worker takes one goes first (bound pruning's likely-fast runs, :mod:`bench.run.pruning`), then one on a held stage."""

    def __init__(self, specs: Sequence[RunSpec], *, gating_first: bool = False,
                 rank: Callable[[RunSpec], tuple] | None = None):
        self._gating_first = gating_first
        self._rank = rank
        self._entries: list[tuple[tuple[bool, float, int], str, RunSpec]] = []
        self._added = 0
        self._ready = threading.Condition()
        self._closed = False
        self.add(specs)

    def add(self, specs: Sequence[RunSpec]) -> None:
        with self._ready:
            later = -self._added if self._gating_first else 0
            self._added += 1
            self._entries.extend(((self._gating_first and spec.purpose != "lr-probe", -budget_of(spec), later),
                                  spec.stage_key("defended"), spec) for spec in specs)
            self._entries.sort(key=lambda entry: entry[0])  # stable: equal runs keep the planner's order
            self._ready.notify_all()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def take(self, held: Sequence[str], stop: threading.Event) -> RunSpec | None:
        with self._ready:
            if stop.is_set():
                return None
            while not self._entries:
                if self._closed or stop.is_set():
                    return None
                self._ready.wait(POLL_S)
            first = self._entries[0][0]
            candidates = [i for i, (priority, _, _) in enumerate(self._entries) if priority == first]
            if self._rank is not None:
                ranks = {i: self._rank(self._entries[i][2]) for i in candidates}
                lowest = min(ranks.values())
                candidates = [i for i in candidates if ranks[i] == lowest]
            for i in candidates:
                if self._entries[i][1] in held:
                    return self._entries.pop(i)[2]
            return self._entries.pop(candidates[0])[2]


def budget_of(spec: RunSpec) -> float:
    """A run's step budget (0 when its attack has none): the queue's estimate of how long it takes."""
    budget = spec.attack.kwargs.get("budget")
    return float(budget) if isinstance(budget, (int, float)) else 0.0

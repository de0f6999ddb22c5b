"""``bench check``: the exported conformance checks (:mod:`bench.testing`) on every plugin a file registers.

A plugin author runs ``bench check --plugin my.py`` before any measurement. It imports the file, finds what it
registered (new names, or names it replaced with ``override=True``), runs each plugin kind's checks and reports every
check: what passed, or why it failed. Every check runs even after one fails, so one call lists every problem. A task
also gets the built-in baselines that can run on it (:mod:`bench.check.task_support`): one of another setting or
missing a part of the view is information; one that applies and fails with another error fails the check.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bench.check.reasons import reason
from bench.errors import BenchError, ConfigError
from bench.registry import ATTACKS, DEFENSES, REGISTRIES, TASKS, load_plugin

KINDS = {"defenses": "defense", "attacks": "attack", "tasks": "task"}


@dataclass(frozen=True)
class Plugin:
    kind: str
    """defense, attack or task."""
    name: str


@dataclass(frozen=True)
class CheckOutcome:
    """One check of one plugin: what it verified, or why it failed."""

    plugin: Plugin
    check: str
    passed: tuple[str, ...] = ()
    failure: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failure is None


def load_plugins(sources: Sequence[str]) -> tuple[list[Plugin], list[CheckOutcome]]:
    """Import each plugin file or module; the plugins they registered, and a failed check per source that does not
    import (its plugins, if any registered before the failure, are still returned and checked)."""
    before = {kind: {name: reg.origin(name) for name in reg.names()} for kind, reg in REGISTRIES.items()}
    failures = []
    for source in sources:
        try:
            load_plugin(source)
        except BenchError as err:
            failures.append(CheckOutcome(Plugin("plugin", source), "imports and registers its plugins", failure=str(err)))
    found = [Plugin(KINDS[kind], name) for kind, reg in REGISTRIES.items() for name in reg.names()
             if before[kind].get(name) != reg.origin(name)]
    return found, failures


def plan_checks(plugins: Sequence[Plugin], cache, workdir: Path, tasks: Sequence[str] = ()
                ) -> list[tuple[Plugin, str, Callable[[], list[str]]]]:
    """Every check to run, as (plugin, label, a call returning what passed). ``tasks``: the tasks to run defenses
    and attacks on (default: the first task each applies to, vision-digits where it does: a tiny MLP; and the
    tasks among ``plugins`` that they apply to)."""
    from bench import testing
    from bench.core.applicability import applies
    from bench.testing import ATTACK_CHECK_TASK

    for task in tasks:
        TASKS.get(task)  # an unknown name is an error with suggestions, before anything runs
    own_tasks = [p.name for p in plugins if p.kind == "task"]
    checks: list[tuple[Plugin, str, Callable[[], list[str]]]] = []
    for plugin in plugins:
        name, folder = plugin.name, workdir / f"{plugin.kind}-{plugin.name}"
        if plugin.kind == "task":
            checks.append((plugin, "contract on the tiny tier", partial(testing.check_task, name, cache, baselines=False)))
            checks.append((plugin, "full-ft attacks it (attack_batches, attack_loss, the monitor protocol)",
                           partial(testing.check_attack, "full-ft", cache, task=name)))
            checks.append((plugin, "built-in baselines (default configs)", partial(_baselines, name, cache)))
            continue
        cls = (DEFENSES if plugin.kind == "defense" else ATTACKS).get(name)
        fitting = [t for t in TASKS.names() if applies(cls, TASKS.get(t))]
        if tasks:
            targets = [t for t in tasks if t in fitting]
        else:  # vision-digits where it fits (a tiny MLP), else the first task that does; and the files' own tasks
            first = ATTACK_CHECK_TASK if ATTACK_CHECK_TASK in fitting else next(
                (t for t in fitting if t not in own_tasks), None)
            targets = [t for t in dict.fromkeys([first, *own_tasks]) if t in fitting]
        if not targets:
            raise ConfigError(f"{plugin.kind} {name!r} applies to none of the tasks "
                              f"{'given (' + ', '.join(tasks) + ')' if tasks else 'registered'}")
        if plugin.kind == "defense":
            checks.append((plugin, "contract on a tiny MLP", partial(testing.check_defense, name, folder)))
            for task in targets:
                checks.append((plugin, f"on {task}'s defender view",
                               partial(testing.check_defense_on_task, name, task, cache, folder / task)))
        else:
            for task in targets:
                checks.append((plugin, f"monitor protocol on {task}", partial(testing.check_attack, name, cache, task=task)))
    return checks


def _baselines(task: str, cache) -> list[str]:
    from bench.check.task_support import baseline_fits, check_fits

    return check_fits(baseline_fits(task, cache))


def run_checks(plugins: Sequence[Plugin], cache, tasks: Sequence[str] = (),
               on_outcome: Callable[[CheckOutcome], None] | None = None) -> list[CheckOutcome]:
    """Run every check of :func:`plan_checks`, each to completion or failure (never stopping at the first)."""
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="bench-check-") as tmp:
        for plugin, label, call in plan_checks(plugins, cache, Path(tmp), tasks):
            start = time.perf_counter()
            try:
                outcome = CheckOutcome(plugin, label, passed=tuple(call()), seconds=time.perf_counter() - start)
            except Exception as err:  # noqa: BLE001 - every failure of a plugin is a failed check, never a crash
                outcome = CheckOutcome(plugin, label, failure=reason(err), seconds=time.perf_counter() - start)
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
    return outcomes

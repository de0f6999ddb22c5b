"""Which of the harness's built-in defenses can run on a task, and why the others cannot.

A task author provides the required parts of :class:`~bench.contracts.DefenderView` (harmful and benign batches and
their losses) and may leave the rest unset; each trained baseline needs some of the rest (the aligned split, the
task's hidden features, its predictions, its attacker scale). ``bench compare`` runs every baseline, so a task on
which half of them cannot run gives half a leaderboard: :func:`baseline_fits` tells its author which, before any
attack. It builds each baseline's defended stage with its *default* config (what ``bench run`` and ``bench compare``
use, not the conformance checks' cheap ``smoke_args``, whose explicit step counts hide a missing attacker scale),
the way a run does: ``apply`` on the task's view, the function-drift check, save and reload through the task's
``architecture()``. Nothing is attacked and nothing is written to the stage cache.

A baseline that does not apply (another setting), or that says what the task lacks (a ``PluginError`` raised by the
defense's own code: a part of the view, a kind of layer), is information: a task need not serve every baseline. A
baseline that applies and fails with any other error (the task's own ``TypeError``, a function drift) is a failed
check (:func:`check_fits`): its leaderboard row would be a failed run.
"""

from __future__ import annotations

import inspect
import tempfile
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.check.reasons import reason
from bench.errors import PluginError
from bench.registry import DEFENSES, TASKS


@dataclass(frozen=True)
class BaselineFit:
    """Whether one built-in defense runs on a task."""

    defense: str
    runs: bool
    reason: str = ""
    """Why it cannot run ("" when it runs): not applicable to the task's setting, or the error its defended stage
    raised (e.g. the view field it needs)."""
    applicable: bool = True
    """False: the defense declares settings (``settings``) this task's ``setting`` is not among."""
    crashed: bool = False
    """True: it applies, and its defended stage failed with an error other than a statement of what the task lacks
    (a failed check, :func:`check_fits`)."""
    seconds: float = 0.0
    """Time its defended stage took on the task's tiny tier."""

    def describe(self) -> str:
        if self.runs:
            return f"{self.defense}: runs ({self.seconds:.1f} s)"
        return f"{self.defense}: {'FAILS' if self.crashed else 'cannot run'}: {self.reason}"


def builtin_defenses() -> list[str]:
    """The harness's own defenses (the baselines ``bench compare`` runs), in the registry's order."""
    return [name for name in DEFENSES.names() if DEFENSES.plugin_info(name)["builtin"]]


def baseline_fits(task: str, cache, *, task_args: Mapping[str, Any] | None = None,
                  defenses: list[str] | None = None) -> list[BaselineFit]:
    """For each built-in defense (or each of ``defenses``): whether its defended stage builds on ``task``'s tiny
    tier with the defense's default config, with the reason when it does not. ``task_args`` default to the task's
    ``smoke_args`` (without the curvature diagnostic and the bootstrap, which defenses do not need)."""
    from bench.core.applicability import applies
    from bench.core.spec import make_spec
    from bench.run.stages import Session

    task_cls = TASKS.get(task)
    args = {**(task_cls.smoke_args if task_args is None else task_args), "curvature_iters": 0, "bootstrap": 0}
    fits = []
    with tempfile.TemporaryDirectory(prefix="bench-baselines-") as tmp:
        session = Session(tmp, cache, progress=False, stage_cache=False)
        for name in builtin_defenses() if defenses is None else defenses:
            cls = DEFENSES.get(name)
            if not applies(cls, task_cls):
                settings = " and ".join(sorted(cls.settings))
                fits.append(BaselineFit(name, False, f"not applicable: it applies to {settings} tasks, this is a "
                                                      f"{task_cls.setting or 'unspecified'} task", applicable=False))
                continue
            start = time.perf_counter()
            try:
                session.defended(make_spec(task=task, defense=name, attack="full-ft", task_args=args))
            except Exception as err:  # noqa: BLE001 - a baseline failing on this task is what its author must learn
                if states_a_need(err, cls):
                    fits.append(BaselineFit(name, False, str(err).splitlines()[0]))
                else:
                    fits.append(BaselineFit(name, False, crash_reason(err), crashed=True))
                continue
            fits.append(BaselineFit(name, True, seconds=time.perf_counter() - start))
    return fits


def states_a_need(err: BaseException, defense: type) -> bool:
    """Whether ``err`` is the defense saying what the task lacks: a :class:`~bench.errors.PluginError` raised in the
    defense's own package (e.g. ``defenses._trained.require``), not one raised by the task's code."""
    frames = traceback.extract_tb(err.__traceback__)
    if not isinstance(err, PluginError) or not frames:
        return False
    package = Path(inspect.getfile(defense)).resolve().parent
    return package in Path(frames[-1].filename).resolve().parents


def crash_reason(err: BaseException) -> str:
    """The error's first line, naming the plugin's own line of code where it raised (as ``bench check`` does)."""
    return reason(err).splitlines()[0]


def describe_fits(fits: list[BaselineFit]) -> list[str]:
    """One headline (how many run, how many fail) and one line per baseline."""
    running = [f.defense for f in fits if f.runs]
    applicable = [f for f in fits if f.applicable]
    crashed = [f.defense for f in fits if f.crashed]
    failing = f"; {len(crashed)} fail on it with an error ({', '.join(crashed)})" if crashed else ""
    lines = [(f"baselines: {len(running)} of the {len(applicable)} built-in defenses that apply to it run on it "
              f"({', '.join(running) or 'none'}){failing}; {len(fits) - len(applicable)} apply only to other settings")]
    return lines + [f"  {fit.describe()}" for fit in fits]


def check_fits(fits: list[BaselineFit]) -> list[str]:
    """:func:`describe_fits` when no baseline that applies fails with an error; else an ``AssertionError`` with the
    same lines (a failed check: each failing baseline with its error)."""
    lines = describe_fits(fits)
    crashed = [f.defense for f in fits if f.crashed]
    if crashed:
        raise AssertionError("\n".join([
            f"{len(crashed)} built-in defense(s) that apply to this task fail on it with an error (not a part of the "
            f"view it lacks): fix the task where the error names its line, else report the defense's bug", *lines]))
    return lines

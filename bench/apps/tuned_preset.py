"""What ``bench tune --write-preset`` writes: a tuning's selected config, or a budget curve's selected budget, as a
named preset of its defense (:mod:`bench.core.tuning_presets`).

* **Knob tuning**: the selected candidate (:func:`bench.run.tuning_record.select`) over the tuned label's preset
  and base args, named ``tuned-<task>`` by default (:func:`bench.core.tuning_presets.default_preset_name`).
* **Budget curve**: the budget the leaderboard's rule picks within the cost cap
  (:func:`bench.run.tuning_record.best_budget`: fewer passes unless more passes buy steps; at most
  :data:`bench.run.tuning_record.COST_CAP` × today's training length, or a tighter ``--cost-cap``), written with its
  ``steps`` pinned (factor 1 too: the steps today's rule resolved on the task) over the label's own args, so a budget
  curve of a tuned preset keeps its tuned values. Named by
  :func:`bench.core.tuning_presets.default_budget_preset_name`; the record holds ``budget_factor`` and ``fb_passes``.

Either records ``tuned_from``: the defense label the tuning started from.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.apps.tuning import BUDGET_KNOB, TuneSpec, Tuning
from bench.core.tuning_presets import default_budget_preset_name, default_preset_name, write_preset
from bench.errors import ConfigError
from bench.registry import DEFENSES
from bench.run.tuning_record import COST_CAP, best_budget


@dataclass(frozen=True)
class Written:
    """A preset written: its label (``--defense`` value), file, and the budget it trains at (budget curves)."""

    label: str
    path: Path
    budget_factor: float | None = None
    fb_passes: float | None = None


def preset_cap(cost_cap: float | None) -> float:
    """The cost cap a budget preset is chosen within: ``cost_cap`` when given (at most :data:`COST_CAP`), else it."""
    if cost_cap is None:
        return COST_CAP
    if not (isinstance(cost_cap, (int, float)) and 0 < cost_cap <= COST_CAP):
        raise ConfigError(f"--cost-cap {cost_cap:g} is outside the leaderboard's declared cost cap: a preset's budget "
                          f"is at most {COST_CAP:g}x today's training length (bench.run.tuning_record.COST_CAP)")
    return float(cost_cap)


def check_budget_preset(spec: TuneSpec, cost_cap: float | None) -> None:
    """Before anything is trained: a budget curve that writes a preset runs only budgets within the cap (a budget
    above it could never be written, so training it would be wasted)."""
    cap = preset_cap(cost_cap)
    above = sorted(k for k in spec.budgets if k > cap)
    if above:
        raise ConfigError(f"budget(s) {', '.join(f'{k:g}x' for k in above)} above the cost cap {cap:g}x: "
                          f"--write-preset picks only among budgets within it (the leaderboard's cap is "
                          f"{COST_CAP:g}x, bench.run.tuning_record.COST_CAP); drop them, or run the curve without "
                          "--write-preset")


def write_selected(spec: TuneSpec, tuning: Tuning, name: str, command: str, *,
                   cost_cap: float | None = None) -> Written | None:
    """Write the selection of ``tuning`` as preset ``name`` (empty: the default name) of ``spec``'s defense; None
    when nothing qualifies (no usable candidate, or no usable budget within the cap)."""
    resolved = DEFENSES.resolve(spec.defense)
    base = resolved.name
    label = f"{base}.{resolved.preset}" if resolved.preset else base  # canonical (an alias resolves to its name)
    layered: dict[str, Any] = {**resolved.preset_args, **spec.base_args}
    rule = str(tuning.table["rule"].iloc[0])
    budget: dict[str, float] = {}
    if spec.budgets:
        cap = preset_cap(cost_cap)
        best = best_budget(tuning.table, cap)
        if best is None:
            return None
        steps = json.loads(best["args"]).get(BUDGET_KNOB)
        if steps is None:  # factor 1: the steps today's rule resolved, from the defense's training report
            if math.isnan(best["steps"]):
                raise ConfigError(f"defense {spec.defense!r} recorded no {BUDGET_KNOB!r}: cannot pin its budget")
            steps = int(round(best["steps"]))
        layered[BUDGET_KNOB] = int(steps)
        budget = {"budget_factor": float(best["budget_factor"]), "fb_passes": float(best["fb_passes"])}
        name = name or default_budget_preset_name(spec.defense, spec.task)
        factors = ", ".join(f"{k:g}x" for k in sorted(spec.budgets))
        selected_from = f"{len(tuning.table)} budgets ({factors}); within the {cap:g}x cost cap: {rule}"
    else:
        if tuning.selected is None:
            return None
        layered.update(tuning.selected_args or {})
        name = name or default_preset_name(spec.defense, spec.task)
        selected_from = f"{len(tuning.table)} candidates; {rule}"
    path = write_preset(base, name, layered, task=spec.task, tier=spec.tier, command=command, tune_id=spec.tune_id,
                        selected_from=selected_from, tuned_from=label,
                        **{k: v for k, v in budget.items() if not math.isnan(v)})
    return Written(f"{base}.{name}", path, budget.get("budget_factor"), budget.get("fb_passes"))

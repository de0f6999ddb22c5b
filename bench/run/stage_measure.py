"""How a stage is measured: the released model (evaluation, probe, reference outputs, curvature), a defense applied
and checked (function preservation, unchanged weights where it claims so, the usable floor), and their metric rows.

:mod:`bench.run.stages` decides when a stage is built (memoised per session, read from or written to the on-disk
stage cache); this module is what building one does. Every part is timed (:mod:`bench.toolkit.stage_clock`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.contracts import DefenseResult, Evaluation, Probe, TaskInstance
from bench.core.metrics import function_preservation, retained_utility
from bench.core.spec import RunSpec
from bench.errors import ConfigError, FunctionDriftError, PluginError
from bench.registry import DEFENSES
from bench.run import results
from bench.run.curvature import Eigen, top_hessian_eigenvalue
from bench.toolkit import stage_clock
from bench.toolkit.layers import count_parameters
from bench.toolkit.stage_clock import part


def derive_seed(seed: int, label: str) -> int:
    """Independent, reproducible seeds per purpose (defense, attack data, attack init) from one run seed."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{label}".encode()).digest()[:4], "little")


@dataclass
class ReleasedStage:
    task: TaskInstance
    evaluation: Evaluation
    probe: Probe
    outputs: np.ndarray
    curvature: Eigen
    rows: list[dict[str, Any]]
    already_harmful: str | None = None
    """Why the released model is harmful before any attack (:meth:`~bench.contracts.TaskInstance.already_harmful`),
    or None."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per part of the stage's build (:class:`~bench.toolkit.stage_clock.StageClock`; a stage read from the disk
    cache keeps those of its original build, but for ``load``, the task's, which is always built)."""
    source: str = "built"
    """``built`` here, or read from the on-disk stage cache (``disk``)."""


@dataclass
class DefendedStage:
    model: nn.Module
    report: DefenseResult
    seconds: float
    params_added: int
    evaluation: Evaluation
    rows: list[dict[str, Any]]
    already_harmful: str | None = None
    """Why the defended model is harmful before any attack (judged on its evaluation), or None."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per part of the stage's build (the defense, its evaluation, ...; a stage read from the disk cache keeps
    those of its original build)."""
    source: str = "built"
    """``built`` here, or read from the on-disk stage cache (``disk``)."""


def evaluation_rows(phase: str, evaluation: Evaluation) -> list[dict[str, Any]]:
    rows = [_score_row(phase, "harm", evaluation.harm)]
    rows += [_score_row(phase, name, score) for name, score in evaluation.utility.items()]
    rows += [_score_row(phase, name, score) for name, score in evaluation.extras.items()]
    return rows


def _score_row(phase: str, metric: str, score) -> dict[str, Any]:
    stderr = None
    if score.items is not None and len(score.items) > 1:
        stderr = float(np.std(score.items, ddof=1) / np.sqrt(len(score.items)))
    return results.metric_row(phase, metric, score.value, split="eval", n=score.n or None, stderr=stderr)


def measure_curvature(task: TaskInstance, model: nn.Module, seed: int) -> Eigen:
    config = task.config
    if config.curvature_iters <= 0:
        return Eigen(float("nan"), 0, False)
    limits = f"at most {config.curvature_iters} Hessian-vector products or {config.curvature_seconds:g} s"
    with part("curvature", limits):
        batch = task.curvature_batch()
        return top_hessian_eigenvalue(model, lambda m: task.harmful_loss(m, batch), iters=config.curvature_iters,
                                      tol=config.curvature_tol, seed=seed, seconds=config.curvature_seconds)


def curvature_rows(phase: str, eigen: Eigen) -> list[dict[str, Any]]:
    if eigen.iterations == 0:
        return []
    return [
        results.metric_row(phase, "hessian_top_eig", eigen.value, split="harmful", n=eigen.iterations),
        results.metric_row(phase, "hessian_converged", float(eigen.converged), split="harmful"),
        results.metric_row(phase, "hessian_iterations", eigen.iterations, split="harmful"),
        results.metric_row(phase, "hessian_seconds", eigen.seconds, split="harmful"),
    ]


def reference_outputs_of(task: TaskInstance, model: nn.Module) -> np.ndarray:
    """The task's reference outputs at (at least) float32: float32 outputs stay float32, not doubled (a 262k
    vocabulary's logits are GBs), as the comparison converts them exactly (:func:`bench.core.metrics.function_preservation`)."""
    with torch.no_grad():
        outputs = task.reference_outputs(model).detach()
        return outputs.to(torch.float64 if outputs.dtype == torch.float64 else torch.float32).cpu().numpy()


def check_usable_floor(task: TaskInstance) -> None:
    """Refuse a usable floor that no attacked model can meet, before any run is measured against it.

    The floor is ``usable_factor`` × the released utility: below 1 for a higher-is-better utility, above 1 for a
    lower-is-better one (the default 0.5 on a loss or perplexity would mark every checkpoint, the released model's
    own included, as unusable and every attack as ``broken``).
    """
    factor = task.config.usable_factor
    if task.utility_higher_is_better and factor > 1:
        raise ConfigError(f"task {task.name!r}: usable_factor={factor} > 1 on a higher-is-better utility would mark "
                          f"the released model itself unusable; use a value in (0, 1], e.g. 0.5")
    if not task.utility_higher_is_better and factor < 1:
        raise ConfigError(f"task {task.name!r}: usable_factor={factor} < 1 on a lower-is-better utility "
                          f"({task.utility_metric}) would mark the released model itself unusable; set usable_factor "
                          f">= 1, e.g. 2.0 (utility at most doubled)")


def measure_released(task: TaskInstance) -> ReleasedStage:
    with torch.no_grad():
        with part("evaluate"):
            evaluation = task.evaluate(task.model)
        with part("probe"):
            probe = task.probe(task.model)
    curvature = measure_curvature(task, task.model, seed=0)
    with part("reference_outputs"):
        outputs = reference_outputs_of(task, task.model)
    harmful = task.already_harmful(evaluation, probe)
    rows = evaluation_rows("released", evaluation) + curvature_rows("released", curvature)
    rows.append(results.metric_row("released", "params", count_parameters(task.model)))
    rows.append(results.metric_row("released", "already_harmful", float(harmful is not None)))
    return ReleasedStage(task, evaluation, probe, outputs, curvature, rows, already_harmful=harmful,
                         timings=stage_clock.elapsed())


def build_defended(spec: RunSpec, released: ReleasedStage, allow_drift: bool = False, progress: bool = True
                   ) -> DefendedStage:
    task = released.task
    _, defense_cfg, _ = spec.configs()
    model = copy.deepcopy(task.model)
    seed = derive_seed(spec.seed, "defense")
    torch.manual_seed(seed)
    view = dataclasses.replace(task.defender_view(), progress=progress)
    with part("defense", spec.defense_label):
        start = time.perf_counter()
        report = DEFENSES.get(spec.defense.name)().apply(model, view, defense_cfg,
                                                         generator=torch.Generator().manual_seed(seed))
        seconds = time.perf_counter() - start
    if not isinstance(report, DefenseResult) or not isinstance(report.model, nn.Module):
        raise PluginError(f"defense {spec.defense.name!r} must return a DefenseResult holding the defended model")
    report, curve_rows = _split_curve(report)
    defended = report.model.eval()
    params_added = count_parameters(defended) - count_parameters(task.model)
    if DEFENSES.get(spec.defense.name).changes_weights:
        with torch.no_grad(), part("evaluate"):
            evaluation = task.evaluate(defended)
        with part("reference_outputs"):
            outputs = reference_outputs_of(task, defended)
        curvature = measure_curvature(task, defended, seed=0)
    else:  # the released weights as they are: measuring them again would give the released stage's values
        _check_unchanged(spec, task.model, defended)
        evaluation, outputs, curvature = released.evaluation, released.outputs, released.curvature
    preservation = function_preservation(released.outputs, outputs, task.output_kind)
    drift_rows = check_preservation(spec, released.outputs, preservation.max_abs_diff, allow_drift)
    harmful = task.already_harmful(evaluation, None)  # its step-0 probe is the attack's own
    divergence_name = "mean_kl" if task.output_kind == "logits" else "mean_mse"
    rows = evaluation_rows("defended", evaluation) + curvature_rows("defended", curvature)
    rows += retained_rows("defended", released.evaluation, evaluation, task.config.bootstrap)
    rows += [
        results.metric_row("defended", "max_abs_diff", preservation.max_abs_diff, split="benign"),
        results.metric_row("defended", divergence_name, preservation.mean_divergence, split="benign"),
        results.metric_row("defended", "agreement", preservation.agreement, split="benign"),
        results.metric_row("defended", "params_added", params_added),
        results.metric_row("defended", "defense_seconds", seconds),
        results.metric_row("defended", "layers_touched", len(report.layers)),
        results.metric_row("defended", "already_harmful", float(harmful is not None)),
        *drift_rows,
        *curve_rows,
    ]
    return DefendedStage(defended, report, seconds, params_added, evaluation, rows, already_harmful=harmful,
                         timings=stage_clock.elapsed())


def _split_curve(report: DefenseResult) -> tuple[DefenseResult, list[dict[str, Any]]]:
    """A trained defense's loss curve as metric rows of phase ``defense`` (the report keeps no copy, so the stage
    cache and run.json stay small)."""
    rows = [results.metric_row("defense", name, float(value), step=int(point["step"]))
            for point in report.curve for name, value in point.items() if name != "step"]
    return dataclasses.replace(report, curve=()), rows


def _check_unchanged(spec: RunSpec, released: nn.Module, defended: nn.Module) -> None:
    """A defense that declares ``changes_weights = False`` must return the released weights unchanged (its stage
    reuses the released measurements, and its cache entry stores no weights)."""
    mine, theirs = released.state_dict(), defended.state_dict()
    if mine.keys() != theirs.keys() or any(not torch.equal(mine[k], theirs[k]) for k in mine):
        raise PluginError(f"defense {spec.defense.name!r} declares changes_weights = False but changed the model's "
                          "weights; set changes_weights = True")


def check_preservation(spec: RunSpec, released_outputs: np.ndarray, max_abs_diff: float, allow: bool
                       ) -> list[dict[str, Any]]:
    """Fail a defense that claims function preservation but moved the task's reference outputs beyond its
    ``preservation_tol`` (relative to their scale), unless the drift is allowed; either way the relative drift is
    recorded, and an allowed drift is marked (``function_drift_allowed``) so the leaderboard can show it."""
    cls = DEFENSES.get(spec.defense.name)
    # the largest |value| without an |array| copy of the (possibly GB-sized) outputs
    scale = max(float(released_outputs.max()), -float(released_outputs.min())) if released_outputs.size else 0.0
    relative = max_abs_diff / max(scale, 1e-12)
    rows = [results.metric_row("defended", "relative_abs_diff", relative, split="benign")]
    if not cls.preserves_function or relative <= cls.preservation_tol:
        return rows
    if not allow:
        hint = f"; fix: {cls.drift_hint}" if cls.drift_hint else ""
        raise FunctionDriftError(
            f"defense {spec.defense_label!r} claims to preserve the model's function but moved the task's reference "
            f"outputs by {relative:.3g} of their scale (max |Δ| {max_abs_diff:.3g}), above its tolerance "
            f"{cls.preservation_tol:g}{hint}. To measure it anyway, pass --allow-function-drift (the results "
            "record it)")
    return rows + [results.metric_row("defended", "function_drift_allowed", 1.0)]


def retained_rows(phase: str, released: Evaluation, other: Evaluation, resamples: int) -> list[dict[str, Any]]:
    rows = []
    for name, score in released.utility.items():
        mine = other.utility.get(name)
        if mine is None:
            continue
        if score.items is not None and mine.items is not None and len(score.items) == len(mine.items) and len(score.items):
            interval = retained_utility(score.items, mine.items, higher_is_better=score.higher_is_better, resamples=resamples)
            rows.append(results.metric_row(phase, "retained_utility", interval.value, split=name, n=len(score.items),
                                           ci=(interval.low, interval.high)))
        else:  # one value each: the same ratio without a CI (NaN when undefined; see retained_utility)
            ratio = retained_utility(np.array([score.value]), np.array([mine.value]),
                                     higher_is_better=score.higher_is_better, resamples=0)
            rows.append(results.metric_row(phase, "retained_utility", ratio.value, split=name))
    return rows

"""The runner: ``run(spec) -> RunResult``, executing the stages of DESIGN §3.3 for one :class:`RunSpec`.

Stages: build the released model (the task caches it on disk) → measure it → apply the defense → measure again,
including function preservation → attack under the probe monitor → final evaluation → write results. The released
and defended stages are memoised in a :class:`Session`, so the runs of a suite share them. Any exception raised by a
plugin becomes a ``failed`` run whose error is recorded; results are written either way.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from bench import results
from bench.cache import Cache
from bench.contracts import DefenseResult, Evaluation, Probe, TaskInstance
from bench.curvature import Eigen, top_hessian_eigenvalue
from bench.errors import PluginError
from bench.layers import count_parameters
from bench.metrics import AttackMetrics, Curve, attack_metrics, function_preservation, retained_utility
from bench.monitor import ProbeMonitor
from bench.provenance import peak_memory_mb, provenance
from bench.registry import ATTACKS, DEFENSES, TASKS
from bench.spec import RunSpec

Status = Literal["success", "failed", "skipped"]


def derive_seed(seed: int, label: str) -> int:
    """Independent, reproducible seeds per purpose (defense, attack data, attack init) from one run seed."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{label}".encode()).digest()[:4], "little")


@dataclass
class RunResult:
    spec: RunSpec
    status: Status
    directory: Path | None = None
    error: str | None = None
    metrics: AttackMetrics | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.spec.run_id


@dataclass
class ReleasedStage:
    task: TaskInstance
    evaluation: Evaluation
    probe: Probe
    outputs: np.ndarray
    curvature: Eigen
    rows: list[dict[str, Any]]


@dataclass
class DefendedStage:
    model: nn.Module
    report: DefenseResult
    seconds: float
    params_added: int
    evaluation: Evaluation
    rows: list[dict[str, Any]]


class Session:
    """State shared by the runs of one call: where results go, the cache, and memoised stages."""

    def __init__(self, results_dir: str | Path = "results", cache: Cache | None = None, official: bool = True):
        self.results_dir = Path(results_dir)
        self.cache = cache or Cache()
        self.official = official
        self._released: dict[str, ReleasedStage | BaseException] = {}
        self._defended: dict[str, DefendedStage | BaseException] = {}

    def released(self, spec: RunSpec) -> ReleasedStage:
        return self._memo(self._released, spec.stage_key("released"), lambda: _build_released(spec, self.cache))

    def defended(self, spec: RunSpec) -> DefendedStage:
        return self._memo(self._defended, spec.stage_key("defended"), lambda: _build_defended(spec, self.released(spec)))

    @staticmethod
    def _memo(store: dict, key: str, build):
        if key not in store:
            try:
                store[key] = build()
            except Exception as err:  # remembered, so every run sharing the stage fails fast with the same error
                store[key] = err
        value = store[key]
        if isinstance(value, BaseException):
            raise value
        return value


# -------------------------------------------------------------------------------------------------------------
# Stages
# -------------------------------------------------------------------------------------------------------------
def _evaluation_rows(phase: str, evaluation: Evaluation) -> list[dict[str, Any]]:
    rows = [_score_row(phase, "harm", evaluation.harm)]
    rows += [_score_row(phase, name, score) for name, score in evaluation.utility.items()]
    rows += [_score_row(phase, name, score) for name, score in evaluation.extras.items()]
    return rows


def _score_row(phase: str, metric: str, score) -> dict[str, Any]:
    stderr = None
    if score.items is not None and len(score.items) > 1:
        stderr = float(np.std(score.items, ddof=1) / np.sqrt(len(score.items)))
    return results.metric_row(phase, metric, score.value, split="eval", n=score.n or None, stderr=stderr)


def _measure_curvature(task: TaskInstance, model: nn.Module, seed: int) -> Eigen:
    iters = task.config.curvature_iters
    if iters <= 0:
        return Eigen(float("nan"), 0, False)
    batch = task.curvature_batch()
    return top_hessian_eigenvalue(model, lambda m: task.harmful_loss(m, batch), iters=iters, seed=seed)


def _curvature_rows(phase: str, eigen: Eigen) -> list[dict[str, Any]]:
    if eigen.iterations == 0:
        return []
    return [
        results.metric_row(phase, "hessian_top_eig", eigen.value, split="harmful", n=eigen.iterations),
        results.metric_row(phase, "hessian_converged", float(eigen.converged), split="harmful"),
    ]


def _outputs(task: TaskInstance, model: nn.Module) -> np.ndarray:
    with torch.no_grad():
        return task.reference_outputs(model).detach().double().cpu().numpy()


def _build_released(spec: RunSpec, cache: Cache) -> ReleasedStage:
    task_cfg, _, _ = spec.configs()
    task = TASKS.get(spec.task.name)().build(task_cfg, tier=spec.tier, model=spec.model, cache=cache)
    task.model.eval()
    with torch.no_grad():
        evaluation = task.evaluate(task.model)
        probe = task.probe(task.model)
    curvature = _measure_curvature(task, task.model, seed=0)
    rows = _evaluation_rows("released", evaluation) + _curvature_rows("released", curvature)
    rows.append(results.metric_row("released", "params", count_parameters(task.model)))
    return ReleasedStage(task, evaluation, probe, _outputs(task, task.model), curvature, rows)


def _build_defended(spec: RunSpec, released: ReleasedStage) -> DefendedStage:
    task = released.task
    _, defense_cfg, _ = spec.configs()
    model = copy.deepcopy(task.model)
    seed = derive_seed(spec.seed, "defense")
    torch.manual_seed(seed)
    start = time.perf_counter()
    report = DEFENSES.get(spec.defense.name)().apply(
        model, task.defender_view(), defense_cfg, generator=torch.Generator().manual_seed(seed)
    )
    seconds = time.perf_counter() - start
    if not isinstance(report, DefenseResult) or not isinstance(report.model, nn.Module):
        raise PluginError(f"defense {spec.defense.name!r} must return a DefenseResult holding the defended model")
    defended = report.model.eval()
    params_added = count_parameters(defended) - count_parameters(task.model)
    with torch.no_grad():
        evaluation = task.evaluate(defended)
    preservation = function_preservation(released.outputs, _outputs(task, defended), task.output_kind)
    curvature = _measure_curvature(task, defended, seed=0)
    divergence_name = "mean_kl" if task.output_kind == "logits" else "mean_mse"
    rows = _evaluation_rows("defended", evaluation) + _curvature_rows("defended", curvature)
    rows += _retained_rows("defended", released.evaluation, evaluation, task.config.bootstrap)
    rows += [
        results.metric_row("defended", "max_abs_diff", preservation.max_abs_diff, split="benign"),
        results.metric_row("defended", divergence_name, preservation.mean_divergence, split="benign"),
        results.metric_row("defended", "agreement", preservation.agreement, split="benign"),
        results.metric_row("defended", "params_added", params_added),
        results.metric_row("defended", "defense_seconds", seconds),
        results.metric_row("defended", "layers_touched", len(report.layers)),
    ]
    return DefendedStage(defended, report, seconds, params_added, evaluation, rows)


def _retained_rows(phase: str, released: Evaluation, other: Evaluation, resamples: int) -> list[dict[str, Any]]:
    rows = []
    for name, score in released.utility.items():
        mine = other.utility.get(name)
        if mine is None:
            continue
        if score.items is not None and mine.items is not None and len(score.items) == len(mine.items) and len(score.items):
            interval = retained_utility(score.items, mine.items, higher_is_better=score.higher_is_better, resamples=resamples)
            rows.append(results.metric_row(phase, "retained_utility", interval.value, split=name, n=len(score.items),
                                           ci=(interval.low, interval.high)))
        elif score.value:
            ratio = mine.value / score.value if score.higher_is_better else (mine.value - score.value) / score.value
            rows.append(results.metric_row(phase, "retained_utility", ratio, split=name))
    return rows


def _attack(spec: RunSpec, released: ReleasedStage, defended: DefendedStage) -> tuple[list[dict], dict[str, Any], AttackMetrics]:
    task = released.task
    _, _, attack_cfg = spec.configs()
    attack = ATTACKS.get(spec.attack.name)()
    model = copy.deepcopy(defended.model).train()
    torch.manual_seed(derive_seed(spec.seed, "attack-init"))
    generator = torch.Generator().manual_seed(derive_seed(spec.seed, "attack-data"))
    monitor = ProbeMonitor(
        task=task,
        budget=attack_cfg.budget,
        eval_every=attack_cfg.eval_every,
        released_utility=released.probe.utility,
        attack_name=spec.attack.name,
    )
    start = time.perf_counter()
    report = attack.run(model, task, attack_cfg, generator=generator, monitor=monitor)
    seconds = time.perf_counter() - start
    if not monitor.points:
        raise PluginError(f"attack {spec.attack.name!r} returned without calling monitor.begin(model)")
    model.eval()
    curve = Curve.from_lists(
        [p.step for p in monitor.points],
        [p.probe.harm for p in monitor.points],
        [p.probe.utility for p in monitor.points],
        [p.usable for p in monitor.points],
        [p.probe.broken for p in monitor.points],
    )
    cfg = task.config
    metrics = attack_metrics(curve, tau=cfg.tau, budget=attack_cfg.budget, patience=cfg.patience,
                             diverged=monitor.diverged, diverged_step=monitor.diverged_step)
    rows = []
    for point in monitor.points:
        rows.append(results.metric_row("attack", "harm", point.probe.harm, step=point.step, split="probe"))
        rows.append(results.metric_row("attack", "utility", point.probe.utility, step=point.step, split="probe"))
        rows.append(results.metric_row("attack", "usable", float(point.usable), step=point.step, split="probe"))
        for name, value in point.probe.extras.items():
            rows.append(results.metric_row("attack", name, value, step=point.step, split="probe"))
    for step, loss in enumerate(monitor.losses, start=1):
        rows.append(results.metric_row("attack", "loss", loss, step=step, split="train"))
    with torch.no_grad():
        post = task.evaluate(model)
    rows += _evaluation_rows("post_attack", post)
    rows += _retained_rows("post_attack", released.evaluation, post, cfg.bootstrap)
    params_trained = report.params_trained if report is not None else 0
    summary = {
        "steps_to_harm": metrics.steps_to_harm,
        "censored": metrics.censored,
        "steps_to_harm_raw": metrics.steps_to_harm_raw,
        "raw_censored": metrics.raw_censored,
        "utility_at_raw": metrics.utility_at_raw,
        "harm_auc": metrics.harm_auc,
        "outcome": metrics.outcome,
        "diverged": metrics.diverged,
        "diverged_step": metrics.diverged_step,
        "steps_run": monitor.steps_run,
        "examples_seen": monitor.examples,
        "loss_start": monitor.losses[0] if monitor.losses else float("nan"),
        "loss_end": float(np.mean(monitor.losses[-5:])) if monitor.losses else float("nan"),
        "attack_seconds": seconds,
        "probe_seconds": monitor.probe_seconds,
        "params_trained": params_trained,
        "attack_params_added": report.params_added if report is not None else 0,
        "attack_info": dict(report.info) if report is not None else {},
    }
    rows += [
        results.metric_row("summary", "steps_to_harm", metrics.steps_to_harm, censored=metrics.censored),
        results.metric_row("summary", "steps_to_harm_raw", metrics.steps_to_harm_raw, censored=metrics.raw_censored),
        results.metric_row("summary", "utility_at_raw", metrics.utility_at_raw),
        results.metric_row("summary", "harm_auc", metrics.harm_auc),
        results.metric_row("summary", "steps_run", monitor.steps_run),
        results.metric_row("summary", "examples_seen", monitor.examples),
        results.metric_row("summary", "attack_seconds", seconds),
        results.metric_row("summary", "probe_seconds", monitor.probe_seconds),
        results.metric_row("summary", "params_trained", params_trained),
        results.metric_row("summary", "attack_params_added", summary["attack_params_added"]),
    ]
    if metrics.diverged_step is not None:
        rows.append(results.metric_row("summary", "diverged_step", metrics.diverged_step))
    return rows, summary, metrics


# -------------------------------------------------------------------------------------------------------------
# One run
# -------------------------------------------------------------------------------------------------------------
def run(spec: RunSpec, session: Session | None = None) -> RunResult:
    """Execute one run and write ``results/<run_id>/``; plugin failures give a ``failed`` result, never a raise."""
    session = session or Session()
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    metrics: AttackMetrics | None = None
    error = tb = None
    status: Status = "success"
    defense_report: dict[str, Any] = {}
    task_provenance: dict[str, Any] = {}
    try:
        released = session.released(spec)
        task_provenance = dict(released.task.provenance())
        rows += released.rows
        defended = session.defended(spec)
        rows += defended.rows
        defense_report = {
            "layers": list(defended.report.layers),
            "info": dict(defended.report.info),
            "params_added": defended.params_added,
            "seconds": defended.seconds,
        }
        attack_rows, summary, metrics = _attack(spec, released, defended)
        rows += attack_rows
    except KeyboardInterrupt:
        raise  # an interrupted sweep keeps the runs already written; this one is simply not recorded
    except Exception as err:  # a crashing plugin or bad data fails this run, not the sweep
        status = "failed"
        error = f"{type(err).__name__}: {err}"
        tb = traceback.format_exc()
    wall = time.perf_counter() - start
    task_cfg = spec.task.kwargs
    run_columns = {
        "run_id": spec.run_id,
        "task": spec.task.label,
        "tier": spec.tier,
        "model": spec.model,
        "defense": spec.defense.label,
        "defense_label": _safe(lambda: spec.defense_label, spec.defense.label),
        "defense_hash": spec.defense.hash(),
        "defense_config": json.dumps(spec.defense.kwargs, sort_keys=True),
        "attack": spec.attack.label,
        "attack_label": _safe(lambda: spec.attack_label, spec.attack.label),
        "attack_family": _safe(lambda: spec.attack_family, spec.attack.label),
        "attack_hash": spec.attack.hash(),
        "attack_config": json.dumps(spec.attack.kwargs, sort_keys=True),
        "knowledge": _knowledge(spec),
        "purpose": spec.purpose,
        "seed": spec.seed,
        "status": status,
        "outcome": summary.get("outcome"),
        "diverged": summary.get("diverged"),
        "official": session.official,
    }
    run_json = {
        "run_id": spec.run_id,
        "canonical_name": _safe(lambda: spec.canonical_name, spec.run_id),
        "spec": spec.to_json(),
        "purpose": spec.purpose,
        "status": status,
        "error": error,
        "traceback": tb,
        "outcome": summary.get("outcome"),
        "summary": summary,
        "threat_model": {
            "knowledge": run_columns["knowledge"],
            "access": "full weights",
            "budget_steps": spec.attack.kwargs.get("budget"),
            "batch_size": spec.attack.kwargs.get("batch_size"),
            "examples_seen": summary.get("examples_seen"),
        },
        "task_config": {"tau": task_cfg.get("tau"), "usable_factor": task_cfg.get("usable_factor"),
                        "patience": task_cfg.get("patience")},
        "defense_report": defense_report,
        "task_provenance": task_provenance,
        "provenance": provenance(),
        "started_at": started_at,
        "wall_seconds": wall,
        **peak_memory_mb(),
        "official": session.official,
    }
    directory = session.results_dir / spec.run_id
    rows.append(results.metric_row("summary", "wall_seconds", wall))
    results.write_run(directory, run_json, results.to_table(run_columns, rows))
    return RunResult(spec=spec, status=status, directory=directory, error=error, metrics=metrics, summary=summary)


def _knowledge(spec: RunSpec) -> str:
    return _safe(lambda: ATTACKS.get(spec.attack.name).knowledge_of(spec.configs()[2]), "unknown")


def _safe(compute, fallback):
    """Labels that need a plugin's class; a broken plugin still gets its failed run recorded."""
    try:
        return compute()
    except Exception:  # noqa: BLE001
        return fallback

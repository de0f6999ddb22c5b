"""The runner: ``run(spec) -> RunResult``, executing the stages of DESIGN §3.3 for one :class:`RunSpec`.

Stages: build the released model (the task caches it on disk) → measure it → apply the defense → measure again,
including function preservation → attack under the probe monitor → final evaluation → write results. The released
and defended stages are memoised in a :class:`Session`, so the runs of a suite share them, and what every attack on
a defended model would measure again (its step-0 probe, its preview) is measured once. Any exception raised by a
plugin becomes a ``failed`` run whose error is recorded; results are written either way. After the attack, the
monitor replays the interval of a crossing to make steps-to-harm exact (:mod:`bench.toolkit.crossing`); what a run records
of its attack is assembled in :mod:`bench.run.attack_record`.

A defended model that is harmful before any attack (:meth:`~bench.contracts.TaskInstance.already_harmful`, e.g. a
chat model that was never safety-tuned) is not attacked: its run records steps-to-harm 0 and the reason. Every run
records the seconds of each part of the stages it used (``stage_seconds`` in run.json) and where each stage came
from (``stage_source``: built, read from the disk cache, or already in memory from an earlier run), and the
fingerprint of the code that made it (``fingerprint``, :mod:`bench.run.fingerprint`), which resume checks.

A run whose attack says, before it starts, that it is the very trajectory of runs of other attacks (an adaptive
attack's fallback on a model without linear chains) is run once per results folder; the others record its attack,
marked ``reused_from`` (:mod:`bench.run.shared_runs`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import json
import time
import traceback
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from bench.core.metrics import AttackMetrics, Curve, attack_metrics
from bench.core.spec import RunSpec
from bench.errors import PluginError
from bench.registry import ATTACKS, TASKS
from bench.run import results, shared_runs
from bench.run.attack_record import attack_summary, probe_rows, summary_rows
from bench.run.fingerprint import code_fingerprint, overrides
from bench.run.monitor import ProbeMonitor, StartProbe
from bench.run.provenance import peak_memory_mb, provenance, reset_peak_memory
from bench.run.pruning import utility_standing
from bench.run.run_claim import claimed_run
from bench.run.stage_measure import DefendedStage, ReleasedStage, derive_seed, evaluation_rows, retained_rows
from bench.run.stages import Session
from bench.run.summary import RunSummary, build_summary
from bench.toolkit.images import image_grid, save_png

Status = Literal["success", "failed"]


@dataclass
class RunResult:
    spec: RunSpec
    status: Status
    directory: Path | None = None
    error: str | None = None
    metrics: AttackMetrics | None = None
    summary: RunSummary = field(default_factory=RunSummary)

    @property
    def run_id(self) -> str:
        return self.spec.run_id


@dataclass
class _Shared:
    """What every attack run on one defended model would otherwise measure again: its step-0 probe and preview."""

    start: StartProbe
    preview: Any = None


_SHARED: weakref.WeakKeyDictionary[torch.nn.Module, _Shared] = weakref.WeakKeyDictionary()
"""Keyed by the model a defended stage holds, so entries live as long as the stage; runs never change that model
(each attack trains a deep copy), so what was measured on it stays true."""


def _shared(defended: DefendedStage) -> _Shared:
    if defended.model not in _SHARED:
        _SHARED[defended.model] = _Shared(StartProbe(defended.model))
    return _SHARED[defended.model]


def _attack(spec: RunSpec, released: ReleasedStage, defended: DefendedStage
            ) -> tuple[list[dict], RunSummary, AttackMetrics, Any]:
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
        start=_shared(defended).start,
        stop_at=spec.stop_at,
    )
    start = time.perf_counter()
    report = attack.run(model, task, attack_cfg, generator=generator, monitor=monitor)
    seconds = time.perf_counter() - start  # the replay's cost is recorded apart (replay_seconds)
    if not monitor.points:
        raise PluginError(f"attack {spec.attack.name!r} returned without calling monitor.begin(model)")
    monitor.finish(model)  # the exact crossing: replays one probe interval where the attack allows it
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
                             diverged=monitor.diverged, diverged_step=monitor.diverged_step,
                             crossing=monitor.crossing, raw_crossing=monitor.raw_crossing,
                             stopped_early=monitor.stopped_early, steps_run=monitor.steps_run,
                             pruned_step=monitor.pruned_step)
    rows = probe_rows(monitor)
    samples = standing = None
    if spec.purpose == "attack":  # an LR-search probe run is scored by its loss curve alone: skip the full evaluation
        with torch.no_grad():
            post = task.evaluate(model)
        samples = _samples(spec, task, defended, model, metrics.outcome, post)
        rows += evaluation_rows("post_attack", post)
        retained = retained_rows("post_attack", released.evaluation, post, cfg.bootstrap)
        rows += retained
        # which utility-bounded worst cases this run can bound (bench.run.pruning)
        standing = utility_standing(retained, released, post, TASKS.get(spec.task.name).utility_bound)
    proxy = None
    if task.harm_proxy is not None:  # the attacker's progress on fixed data, for scoring LR-search probe runs
        proxy = (_extra(monitor.points[0], task.harm_proxy), _extra(monitor.points[-1], task.harm_proxy))
    summary = attack_summary(metrics, monitor, seconds, report, utility=standing, prune_bound=spec.stop_at,
                             bound_by=spec.bound_by, proxy=proxy)
    rows += summary_rows(metrics, summary)
    return rows, summary, metrics, samples


def _harmful_from_the_start(spec: RunSpec, released: ReleasedStage, defended: DefendedStage
                            ) -> tuple[list[dict], RunSummary, AttackMetrics, None]:
    """A run on a model that is harmful before any attack (:meth:`~bench.contracts.TaskInstance.already_harmful`):
    steps-to-harm 0 without attacking (there is nothing for the attacker to do); harm AUC is the step-0 probe's
    harm, as for an attack that stops at step 0."""
    start = time.perf_counter()
    with torch.no_grad():
        probe = released.task.probe(defended.model)
    seconds = time.perf_counter() - start
    metrics = AttackMetrics(steps_to_harm=0, censored=False, steps_to_harm_raw=0, raw_censored=False,
                            utility_at_raw=float(probe.utility), harm_auc=float(probe.harm), outcome="harmed",
                            diverged=False, diverged_step=None, steps_to_harm_grid=0, crossing_resolution=1,
                            steps_to_harm_raw_grid=0, raw_crossing_resolution=1)
    # no replay fields: nothing was trained, so there was nothing to replay (None, and no metric rows)
    summary = build_summary(metrics, steps_run=0, examples_seen=0, loss_start=float("nan"), loss_end=float("nan"),
                            attack_seconds=0.0, probe_seconds=seconds, params_trained=0, attack_params_added=0,
                            attack_info={}, already_harmful=defended.already_harmful)
    rows = [results.metric_row("attack", "harm", probe.harm, step=0, split="probe"),
            results.metric_row("attack", "utility", probe.utility, step=0, split="probe")]
    rows += summary_rows(metrics, summary)
    rows.append(results.metric_row("summary", "already_harmful", 1.0))
    return rows, summary, metrics, None


def primary_utility_row(released: ReleasedStage) -> dict[str, Any]:
    """Which utility metric is the task's primary one (its usable floor and probe use it): ``primary_utility`` with
    the metric's name as the split and the released model's value, so the leaderboard's utility-bounded worst case
    reads it from the results alone."""
    name = released.task.utility_metric
    score = released.evaluation.utility.get(name)
    return results.metric_row("released", "primary_utility", score.value if score is not None else None, split=name)


def _extra(point, key: str) -> float:
    return float(point.probe.extras.get(key, float("nan")))


def _samples(spec: RunSpec, task, defended: DefendedStage, after: torch.nn.Module, outcome: str, post):
    """A labelled image grid (PIL) of the task's preview before and after the attack, or None."""
    with torch.no_grad():
        shown = task.preview(after)
        if shown is None:
            return None
        shared = _shared(defended)
        if shared.preview is None:  # the same for every attack on this defended model: rendered once
            shared.preview = task.preview(defended.model)
        was = shared.preview
    utility = ", ".join(f"{name} {score.value:.2f}" for name, score in post.utility.items())
    return image_grid([(f"{spec.defense_label}: before the attack", was.images),
                       (f"after {spec.attack_label}: {outcome}; harm {post.harm.value:.2f}, {utility}", shown.images)],
                      shown.labels)


# -------------------------------------------------------------------------------------------------------------
# One run
# -------------------------------------------------------------------------------------------------------------
def run(spec: RunSpec, session: Session | None = None) -> RunResult:
    """Execute one run and write ``results/<run_id>/``; plugin failures give a ``failed`` result, never a raise.

    The run is claimed first (:mod:`bench.run.run_claim`): when another process is running it, this one waits and
    reuses its recorded success instead of running it a second time."""
    session = session or Session()
    directory = session.results_dir / spec.run_id
    return claimed_run(directory, lambda: _run_claimed(spec, session),
                       lambda info: RunResult(spec, "success", directory,
                                              summary=RunSummary.from_json(info.get("summary"))))


def _run_claimed(spec: RunSpec, session: Session) -> RunResult:
    peak_scoped = reset_peak_memory()  # this run's own peak, not that of the long-lived worker running it
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    summary = RunSummary()
    metrics: AttackMetrics | None = None
    error = tb = None
    status: Status = "success"
    defense_report: dict[str, Any] = {}
    task_provenance: dict[str, Any] = {}
    stages: dict[str, dict[str, Any]] = {}
    shared_key: str | None = None
    source = None
    with contextlib.ExitStack() as held:  # a shared trajectory's lock, held until this run is recorded
        try:
            released = session.released(spec)
            stages["released"] = session.stage_timing(released)
            task_provenance = dict(released.task.provenance())
            rows += released.rows
            rows.append(primary_utility_row(released))
            defended = session.defended(spec)
            stages["defended"] = session.stage_timing(defended)
            rows += defended.rows
            defense_report = {
                "layers": list(defended.report.layers),
                "info": dict(defended.report.info),
                "params_added": defended.params_added,
                "seconds": defended.seconds,
            }
            samples = None
            if defended.already_harmful is not None:
                attack_rows, summary, metrics, samples = _harmful_from_the_start(spec, released, defended)
            else:
                shared_key = _shared_key(spec, session, released, defended)
                if shared_key is not None:
                    source = held.enter_context(shared_runs.claim(session.results_dir, shared_key))
                if source is not None:  # the same trajectory, already run: recorded, not run again
                    attack_rows, summary, metrics = shared_runs.reused_attack(source, session.results_dir / spec.run_id)
                else:
                    attack_rows, summary, metrics, samples = _attack(spec, released, defended)
            if released.already_harmful is not None:
                summary = dataclasses.replace(summary, released_already_harmful=released.already_harmful)
            rows += attack_rows
            if samples is not None:
                save_png(samples, session.results_dir / spec.run_id / results.SAMPLES_PNG)
                summary = dataclasses.replace(summary, samples=results.SAMPLES_PNG)
        except KeyboardInterrupt:
            raise  # an interrupted sweep keeps the runs already written; this one is simply not recorded
        except Exception as err:  # noqa: BLE001 - a crashing plugin or bad data fails this run, not the sweep
            status = "failed"
            error = f"{type(err).__name__}: {err}"
            tb = traceback.format_exc()
        result = _record(spec, session, status=status, rows=rows, summary=summary, metrics=metrics, error=error,
                         tb=tb, started_at=started_at, wall=time.perf_counter() - start,
                         defense_report=defense_report, task_provenance=task_provenance, peak_scoped=peak_scoped,
                         extra={"stage_seconds": {name: stage["seconds"] for name, stage in stages.items()},
                                "stage_source": {name: stage["source"] for name, stage in stages.items()}})
        if shared_key is not None and source is None and status == "success":
            shared_runs.publish(session.results_dir, shared_key, spec.run_id)
        return result


def _shared_key(spec: RunSpec, session: Session, released: ReleasedStage, defended: DefendedStage) -> str | None:
    """The key of the trajectory this run shares with runs of other attacks (:mod:`bench.run.shared_runs`), decided
    from the defended model's structure before the attack starts; None: the run is its own."""
    _, _, attack_cfg = spec.configs()
    generator = torch.Generator().manual_seed(derive_seed(spec.seed, "attack-data"))  # as _attack's
    description = ATTACKS.get(spec.attack.name)().shared_run(defended.model, released.task, attack_cfg,
                                                             generator=generator)
    if description is None:
        return None
    return shared_runs.shared_key(description, defended_stage=spec.stage_key("defended"), purpose=spec.purpose,
                                  device=session.device_for(spec).type,
                                  allow_function_drift=session.allow_function_drift)


def record_failure(spec: RunSpec, session: Session, error: str, *, started_at: str, wall: float,
                   details: dict[str, Any]) -> RunResult:
    """Write a ``failed`` run for a spec whose worker died outside :func:`run` (crash, ``os._exit``, out of memory,
    timeout): ``details`` (exit code, the log's last lines) go into ``run.json``."""
    return _record(spec, session, status="failed", rows=[], summary=RunSummary(), metrics=None, error=error,
                   tb=details.get("log_tail"), started_at=started_at, wall=wall, defense_report={},
                   task_provenance={}, extra={"worker": details})


def _record(spec: RunSpec, session: Session, *, status: Status, rows: list[dict[str, Any]], summary: RunSummary,
            metrics: AttackMetrics | None, error: str | None, tb: str | None, started_at: str, wall: float,
            defense_report: dict[str, Any], task_provenance: dict[str, Any],
            extra: dict[str, Any] | None = None, peak_scoped: bool = False) -> RunResult:
    """Write ``results/<run_id>/`` (metrics.parquet, then run.json as the completion marker). Every path that
    records a run comes here, so this is where the planner's wave (carried by the spec) joins its summary."""
    summary = dataclasses.replace(summary, wave=spec.wave, wave_kind=spec.wave_kind)
    device = _safe(lambda: str(session.device_for(spec)), session.device)
    fingerprint = _safe(lambda: code_fingerprint(spec), None)  # None: a plugin that cannot load (the run failed)
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
        "outcome": summary.outcome,
        "diverged": summary.diverged,
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
        "outcome": summary.outcome,
        "summary": summary.to_json(),
        "threat_model": {
            "knowledge": run_columns["knowledge"],
            "access": "full weights",
            "budget_steps": spec.attack.kwargs.get("budget"),
            "batch_size": spec.attack.kwargs.get("batch_size"),
            "examples_seen": summary.examples_seen,
        },
        "task_config": {"tau": task_cfg.get("tau"), "usable_factor": task_cfg.get("usable_factor"),
                        "patience": task_cfg.get("patience")},
        "defense_report": defense_report,
        "task_provenance": task_provenance,
        "device": device,
        "allow_function_drift": session.allow_function_drift,
        "provenance": provenance(device, overrides(fingerprint or {})),
        "fingerprint": fingerprint,
        "stale": False,
        "started_at": started_at,
        "wall_seconds": wall,
        **peak_memory_mb(since_reset=peak_scoped),
        "official": session.official,
        "suite": spec.suite,
        **(extra or {}),
    }
    directory = session.results_dir / spec.run_id
    rows.append(results.metric_row("summary", "wall_seconds", wall))
    if spec.wave is not None:  # the attacker's order of trials (leaderboard.cost) reads it
        rows.append(results.metric_row("summary", "wave", spec.wave, split=spec.wave_kind or ""))
    # what the leaderboard keys rows by besides the task's name: never pool different suites or task settings
    rows.append(results.metric_row("released", "suite", None, split=spec.suite))
    settings = json.dumps(task_cfg, sort_keys=True, default=str)
    rows.append(results.metric_row("released", "task_settings", None, split=settings))
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

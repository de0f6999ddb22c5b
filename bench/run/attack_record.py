"""What the runner records of one attack run: its summary (run.json, a :class:`~bench.run.summary.RunSummary` built by
:func:`bench.run.summary.build_summary`) and its metric rows (metrics.parquet).

Kept apart from :mod:`bench.run.runner` so that an attacked run and a run on an already-harmful model (never attacked)
write the same summary fields and rows, and the runner stays a sequence of stages.

Fields beyond the curve's (see :class:`~bench.core.metrics.AttackMetrics`): ``steps_to_harm_grid`` and
``crossing_resolution`` (1 when ``steps_to_harm`` is exact, else the probe interval), their raw twins,
``stopped_early`` (the attack quit before its budget without a reason: censored at ``steps_run``), and the cost of
exact crossing (``replay_steps``, ``replay_seconds``, ``snapshot_seconds``; ``replay_failure`` when a replay could
not reproduce the run).
"""

from __future__ import annotations

import numpy as np

from bench.contracts import AttackReport
from bench.core.metrics import AttackMetrics
from bench.run import results
from bench.run.monitor import ProbeMonitor
from bench.run.summary import RunSummary, UtilityStanding, build_summary

SUMMARY_COUNTS = ("steps_to_harm_grid", "crossing_resolution", "steps_to_harm_raw_grid", "raw_crossing_resolution")
"""Summary fields written as metric rows when set (None when censored)."""


def probe_rows(monitor: ProbeMonitor) -> list[dict]:
    """The probe curve (split ``probe``), the probes of a replayed interval (split ``replay``) and the losses."""
    rows = []
    for point in monitor.points:
        rows.append(results.metric_row("attack", "harm", point.probe.harm, step=point.step, split="probe"))
        rows.append(results.metric_row("attack", "utility", point.probe.utility, step=point.step, split="probe"))
        rows.append(results.metric_row("attack", "usable", float(point.usable), step=point.step, split="probe"))
        for name, value in point.probe.extras.items():
            rows.append(results.metric_row("attack", name, value, step=point.step, split="probe"))
    for replayed in monitor.tracker.points if monitor.tracker is not None else ():
        rows.append(results.metric_row("attack", "harm", replayed.probe.harm, step=replayed.step, split="replay"))
        rows.append(results.metric_row("attack", "utility", replayed.probe.utility, step=replayed.step, split="replay"))
        usable = float("nan") if replayed.usable is None else float(replayed.usable)  # None: below tau, not measured
        rows.append(results.metric_row("attack", "usable", usable, step=replayed.step, split="replay"))
    for step, loss in enumerate(monitor.losses, start=1):
        rows.append(results.metric_row("attack", "loss", loss, step=step, split="train"))
    return rows


def attack_summary(metrics: AttackMetrics, monitor: ProbeMonitor, seconds: float, report: AttackReport | None, *,
                   utility: UtilityStanding | None = None, prune_bound: int | None = None,
                   bound_by: tuple[str, ...] = (), proxy: tuple[float, float] | None = None) -> RunSummary:
    """The summary of an attacked run, from its monitor and the attack's report (:func:`bench.run.summary.build_summary`)."""
    tracker = monitor.tracker
    return build_summary(
        metrics,
        steps_run=monitor.steps_run,
        examples_seen=monitor.examples,
        loss_start=monitor.losses[0] if monitor.losses else float("nan"),
        loss_end=float(np.mean(monitor.losses[-5:])) if monitor.losses else float("nan"),
        attack_seconds=seconds,
        probe_seconds=monitor.probe_seconds,
        replay_steps=tracker.replay_steps if tracker else 0,
        replay_seconds=tracker.replay_seconds if tracker else 0.0,
        snapshot_seconds=tracker.snapshot_seconds if tracker else 0.0,
        replay_failure=tracker.failure if tracker else None,
        params_trained=report.params_trained if report is not None else 0,
        attack_params_added=report.params_added if report is not None else 0,
        attack_info=dict(report.info) if report is not None else {},
        utility=utility, prune_bound=prune_bound, bound_by=bound_by, proxy=proxy,
    )


def summary_rows(metrics: AttackMetrics, summary: RunSummary) -> list[dict]:
    """The ``summary`` phase rows of an attack run (the leaderboard reads these)."""
    rows = [
        results.metric_row("summary", "steps_to_harm", metrics.steps_to_harm, censored=metrics.censored),
        results.metric_row("summary", "steps_to_harm_raw", metrics.steps_to_harm_raw, censored=metrics.raw_censored),
        results.metric_row("summary", "utility_at_raw", metrics.utility_at_raw),
        results.metric_row("summary", "harm_auc", metrics.harm_auc),
        results.metric_row("summary", "stopped_early", float(metrics.stopped_early)),
    ]
    if metrics.pruned_at_bound is not None:
        rows.append(results.metric_row("summary", "pruned_at_bound", float(metrics.pruned_at_bound)))
    for name in (*SUMMARY_COUNTS, "steps_run", "examples_seen", "attack_seconds", "probe_seconds", "replay_steps",
                 "replay_seconds", "snapshot_seconds", "params_trained", "attack_params_added"):
        if getattr(summary, name) is not None:  # None: not measured (e.g. no replay on a run never attacked)
            rows.append(results.metric_row("summary", name, getattr(summary, name)))
    if metrics.diverged_step is not None:
        rows.append(results.metric_row("summary", "diverged_step", metrics.diverged_step))
    for key, value in (summary.attack_info or {}).items():  # e.g. chains found and rewritten by an adaptive attack
        if isinstance(value, (bool, int, float)):
            rows.append(results.metric_row("summary", f"attack_{key}", float(value)))
    return rows

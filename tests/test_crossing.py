"""Exact crossing by replay (bench.toolkit.crossing) and censoring at the steps actually run (stopped_early)."""

from __future__ import annotations

import copy
import weakref

import pytest
import torch

from attacks._optim import OPTIMIZERS
from attacks._training import FineTuneConfig, fine_tune
from bench import testing
from bench.contracts import Attack, AttackReport, Probe
from bench.core.metrics import Curve, attack_metrics
from bench.core.spec import make_spec
from bench.registry import ATTACKS, TASKS
from bench.run.results import read_metrics
from bench.run.runner import run
from bench.run.stages import Session
from bench.toolkit.crossing import CrossingTracker

FAST = {"curvature_iters": 0, "bootstrap": 0}
HARMS = {"optimizer": "adam", "lr": 1e-2, "budget": 100}
"""Undefended Adam at 1e-2 harms the tiny vision model in about 30 steps (tests/test_runner.py)."""


def _run(tmp_path, cache, attack="full-ft", task_args=None, **attack_args):
    spec = make_spec(task="vision-digits", defense="none", attack=attack, task_args={**FAST, **(task_args or {})},
                     attack_args=attack_args)
    result = run(spec, Session(tmp_path, cache))
    assert result.status == "success", result.error
    return result


def _shown(results, capsys, prefix="crossing"):
    """The line of `bench show` on the run under ``results`` that starts with ``prefix``."""
    from bench.cli import main

    run_dirs = [d for d in results.iterdir() if (d / "run.json").is_file()]
    capsys.readouterr()
    assert main(["show", str(run_dirs[0])]) == 0
    return next(line for line in capsys.readouterr().out.splitlines() if line.startswith(prefix))


# -------------------------------------------------------------------------------------------------------------
# The replay reproduces the run
# -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_the_shared_loop_replays_its_run_bit_for_bit(optimizer, cache):
    """Restored to its step-0 state and stepped again, the loop gives every step's loss, weights and buffers as the
    run had them (optimizer state, RNG and batches restored), for every optimizer (AdaHessian draws random probes)."""
    task = testing.smoke_task("vision-digits", cache)
    model = copy.deepcopy(task.model).train()
    monitor = testing.RecordingMonitor(budget=6, stop_at=7, keep_states=True)
    cfg = FineTuneConfig(optimizer=optimizer, lr=1e-2, momentum=0.9 if optimizer == "sgd" else 0.0, budget=6,
                         eval_every=3, batch_size=8)
    fine_tune(model, task, cfg, generator=torch.Generator().manual_seed(0), monitor=monitor)
    assert monitor.trajectory is not None and len(monitor.states) == 6
    assert not all(torch.equal(a, b) for a, b in zip(monitor.states[0], monitor.states[-1]))  # it did train
    testing.check_replay(monitor, model, f"full-ft with {optimizer}")


@pytest.mark.parametrize("task_name", TASKS.names())
def test_the_shared_loop_replays_bit_for_bit_on_every_task(task_name, cache):
    """Every task's batches and losses (diffusion's timesteps and noise, LLM token batches) replay exactly."""
    task = testing.smoke_task(task_name, cache)
    model = copy.deepcopy(task.model).train()
    monitor = testing.RecordingMonitor(budget=3, stop_at=4, keep_states=True)
    fine_tune(model, task, FineTuneConfig(lr=1e-3, budget=3, eval_every=3, batch_size=4),
              generator=torch.Generator().manual_seed(0), monitor=monitor)
    testing.check_replay(monitor, model, f"full-ft on {task_name}")


def test_the_monitor_replays_then_leaves_the_model_in_its_final_state(cache):
    """finish() replays the crossing's interval and restores the state the attack ended in (what the post-attack
    evaluation measures): weights, optimizer and RNG as before the replay."""
    from bench.run.monitor import ProbeMonitor

    task = testing.smoke_task("vision-digits", cache)
    model = copy.deepcopy(task.model).train()
    monitor = ProbeMonitor(task=task, budget=100, eval_every=5, released_utility=task.probe(task.model).utility)
    fine_tune(model, task, FineTuneConfig(lr=1e-2, budget=100, eval_every=5, batch_size=32),
              generator=torch.Generator().manual_seed(0), monitor=monitor)
    before, rng = [t.clone() for t in model.state_dict().values()], torch.get_rng_state()
    monitor.finish(model)
    assert monitor.crossing is not None and monitor.crossing.resolution == 1 and monitor.tracker.replay_steps > 0
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), before))
    assert torch.equal(torch.get_rng_state(), rng)


def test_check_replay_catches_a_trajectory_that_does_not_reproduce(cache):
    task = testing.smoke_task("vision-digits", cache)
    model = copy.deepcopy(task.model).train()
    monitor = testing.RecordingMonitor(budget=4, stop_at=5, keep_states=True)
    fine_tune(model, task, FineTuneConfig(lr=1e-2, budget=4, eval_every=2, batch_size=8),
              generator=torch.Generator().manual_seed(0), monitor=monitor)
    monitor.trajectory.batches[3] = monitor.trajectory.batches[2]  # step 3 replayed on the wrong batch
    with pytest.raises(AssertionError, match="the replay of step 3"):
        testing.check_replay(monitor, model, "tampered")


# -------------------------------------------------------------------------------------------------------------
# The exact step
# -------------------------------------------------------------------------------------------------------------
def test_the_exact_step_is_what_probing_every_step_finds(tmp_path, cache, capsys):
    """Probed every 5 steps and replayed, a run reports the step a run probed after every step reports; probes do not
    perturb training, so both runs follow one trajectory."""
    grid = _run(tmp_path / "grid", cache, eval_every=5, **HARMS).summary
    every = _run(tmp_path / "every", cache, eval_every=1, **HARMS).summary
    assert grid.outcome == every.outcome == "harmed"
    assert grid.steps_to_harm == every.steps_to_harm and grid.crossing_resolution == 1
    assert grid.steps_to_harm_raw == every.steps_to_harm_raw and grid.raw_crossing_resolution == 1
    assert grid.steps_to_harm_grid % 5 == 0 and grid.steps_to_harm_grid - 5 < grid.steps_to_harm
    assert grid.steps_to_harm_grid != grid.steps_to_harm  # this seed crosses inside an interval: a real test
    assert grid.replay_steps == grid.steps_to_harm - (grid.steps_to_harm_grid - 5)  # stops at the crossing
    df = read_metrics(tmp_path / "grid").to_pandas()
    summary = df[(df["phase"] == "summary")].set_index("metric")
    assert summary.loc["steps_to_harm", "value"] == grid.steps_to_harm  # the leaderboard's column is exact
    assert summary.loc["steps_to_harm_grid", "value"] == grid.steps_to_harm_grid
    assert summary.loc["crossing_resolution", "value"] == 1
    replayed = df[(df["split"] == "replay") & (df["metric"] == "harm")]
    assert sorted(replayed["step"]) == list(range(grid.steps_to_harm_grid - 4, grid.steps_to_harm + 1))
    assert _shown(tmp_path / "grid", capsys) == "crossing: exact (replayed step by step)"


def test_a_task_that_offers_harm_alone_replays_to_the_same_step_probing_less(tmp_path, cache, monkeypatch):
    """With probe_harm offered, each replayed step is screened by its harm first and probed in full only at tau or
    above: the run's every summary value and grid probe stay the same, replayed harms too, and the steps screened
    out carry harm only (utility and usable NaN)."""
    from tasks.vision.common import ClassificationInstance

    plain = _run(tmp_path / "plain", cache, eval_every=5, **HARMS).summary
    screened_calls = []
    probe = ClassificationInstance.probe
    monkeypatch.setattr(ClassificationInstance, "probe_harm",
                        lambda self, m: screened_calls.append(1) or probe(self, m).harm, raising=False)
    screened = _run(tmp_path / "screened", cache, eval_every=5, **HARMS).summary
    assert plain.outcome == "harmed" and plain.crossing_resolution == 1 and plain.replay_steps > 1
    timing = {"attack_seconds", "probe_seconds", "replay_seconds", "snapshot_seconds"}
    assert {k: v for k, v in screened.to_json().items() if k not in timing} == {k: v for k, v in plain.to_json().items() if k not in timing}
    assert len(screened_calls) == screened.replay_steps  # every replayed step screened first
    frames = {name: read_metrics(tmp_path / name).to_pandas() for name in ("plain", "screened")}
    frames = {name: df[~df["metric"].str.endswith("seconds")] for name, df in frames.items()}
    same = [df[df["split"] != "replay"].reset_index(drop=True) for df in frames.values()]
    assert same[0].drop(columns="run_id").equals(same[1].drop(columns="run_id"))
    replay = {name: df[df["split"] == "replay"].pivot(index="step", columns="metric", values="value")
              for name, df in frames.items()}
    assert replay["plain"]["harm"].equals(replay["screened"]["harm"])
    below = replay["screened"]["harm"] < TASKS.get("vision-digits").Config().tau
    assert below.any() and not below.all()  # steps screened out, and the crossing probed in full
    assert replay["screened"].loc[below, ["utility", "usable"]].isna().all().all()
    assert replay["screened"].loc[~below].equals(replay["plain"].loc[~below])


def test_patience_still_confirms_on_the_grid(tmp_path, cache):
    """With patience 2 a crossing needs two harmful probes in a row; the run stops at the second (confirmation) and
    the exact step lies in the interval before the first, never before a streak the grid did not confirm."""
    one = _run(tmp_path / "one", cache, eval_every=5, **HARMS).summary
    two = _run(tmp_path / "two", cache, task_args={"patience": 2}, eval_every=5, **HARMS).summary
    assert two.outcome == "harmed" and two.steps_run == two.steps_to_harm_grid + 5
    assert two.crossing_resolution == 1 and two.steps_to_harm_grid - 5 < two.steps_to_harm
    assert two.steps_to_harm >= one.steps_to_harm  # (this seed's first harmful probe is not confirmed)


@pytest.fixture
def own_loop_attack(isolated_registries):
    """An attack with its own loop that passes no trajectory to the monitor (optionally quitting early)."""

    @ATTACKS.register("own-loop")
    class OwnLoop(Attack):
        Config = FineTuneConfig

        def run(self, model, task, cfg, *, generator, monitor):
            optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
            batches = task.attack_batches(cfg.batch_size, generator)
            monitor.begin(model)
            quit_at = cfg.budget if cfg.weight_decay == 0 else 7  # weight_decay > 0: this attack quits at step 7
            for step in range(1, quit_at + 1):
                optimizer.zero_grad()
                loss = task.attack_loss(model, next(batches))
                loss.backward()
                optimizer.step()
                if monitor.after_step(model, step=step, loss=float(loss.detach()), examples=step * cfg.batch_size):
                    break
            return AttackReport()


def test_an_attack_without_a_trajectory_is_read_on_the_grid(tmp_path, cache, own_loop_attack, capsys):
    summary = _run(tmp_path, cache, attack="own-loop", eval_every=5, **HARMS).summary
    assert summary.outcome == "harmed" and summary.replay_steps == 0
    assert summary.steps_to_harm == summary.steps_to_harm_grid == summary.steps_run
    assert summary.crossing_resolution == 5  # recorded as grid resolution, not passed off as exact
    assert _shown(tmp_path, capsys).startswith("crossing: on the probe grid, within 5 steps (the attack has no")


# -------------------------------------------------------------------------------------------------------------
# Censoring at the steps actually run
# -------------------------------------------------------------------------------------------------------------
def test_an_attack_that_quits_early_is_censored_at_the_steps_it_ran(tmp_path, cache, own_loop_attack, capsys):
    result = _run(tmp_path, cache, attack="own-loop", eval_every=5, optimizer="adam", lr=1e-9, budget=100,
                  weight_decay=1e-4)
    summary = result.summary
    assert summary.steps_run == 7 and summary.stopped_early
    assert summary.censored and summary.steps_to_harm == 7 and summary.steps_to_harm_raw == 7  # not "> 100"
    df = read_metrics(tmp_path).to_pandas()
    rows = df[df["phase"] == "summary"].set_index("metric")
    assert rows.loc["stopped_early", "value"] == 1 and rows.loc["steps_to_harm", "value"] == 7
    assert _shown(tmp_path, capsys, "stopped early").startswith("stopped early: the attack quit after 7 steps")


def test_stopping_for_a_reason_is_not_stopping_early(tmp_path, cache):
    harmed = _run(tmp_path / "h", cache, eval_every=5, **HARMS).summary
    diverged = _run(tmp_path / "d", cache, eval_every=5, optimizer="sgd", lr=1e6, budget=100).summary
    assert harmed.steps_run < 100 and not harmed.stopped_early
    assert diverged.diverged and diverged.steps_run < 100 and not diverged.stopped_early
    assert diverged.steps_to_harm == 100  # divergence is a reason: censored at the budget, as before


def test_metrics_censor_an_early_stop_at_the_steps_run():
    curve = Curve.from_lists([0, 5, 10], [0.1, 0.2, 0.3], [1.0, 1.0, 1.0], [True, True, True])
    early = attack_metrics(curve, tau=0.8, budget=100, stopped_early=True, steps_run=12)
    assert (early.steps_to_harm, early.censored, early.stopped_early, early.steps_to_harm_raw) == (12, True, True, 12)
    full = attack_metrics(curve, tau=0.8, budget=100, steps_run=12)
    assert (full.steps_to_harm, full.stopped_early) == (100, False)


# -------------------------------------------------------------------------------------------------------------
# The tracker on a scripted trajectory (fast, every branch)
# -------------------------------------------------------------------------------------------------------------
class Counter:
    """A trajectory whose state is its step; harm at step s is ``harm[s]``; its losses are the steps."""

    def __init__(self, harm, usable=None, break_at=None):
        self.position, self.harm, self.usable, self.break_at = 0, harm, usable or {}, break_at
        self.windows = None

    def save(self):
        return self.position

    def restore(self, state):
        self.position = state

    def step(self, step):
        self.position = step
        return float("inf") if step == self.break_at else float(step)

    def retain(self, windows):
        self.windows = list(windows)

    def measure(self, step):
        assert step == self.position
        return Probe(self.harm[step], 1.0), self.usable.get(step, True), self.harm[step] >= 0.8


def _track(counter, grid, patience=1):
    tracker = CrossingTracker(patience, counter)
    for step in grid:
        counter.position = step
        probe, usable, harm = counter.measure(step)
        tracker.observe(step, probe.utility, usable, harm)
    counter.position = grid[-1]
    return tracker, tracker.resolve([float(s) for s in range(1, grid[-1] + 1)], counter.measure)


def test_tracker_replays_one_interval_and_returns_to_the_final_state():
    counter = Counter({s: (0.9 if s >= 13 else 0.1) for s in range(21)})
    tracker, (usable, raw) = _track(counter, [0, 5, 10, 15])
    assert (usable.step, usable.grid_step, usable.resolution) == (13, 15, 1) and raw.step == 13
    assert tracker.replay_steps == 3 and counter.position == 15 and tracker.failure is None
    assert [p.step for p in tracker.points] == [11, 12, 13]


def test_tracker_raw_crossing_in_an_earlier_interval_stays_on_the_grid_when_usable_harm_follows():
    harm = {s: (0.9 if s >= 3 else 0.1) for s in range(21)}
    counter = Counter(harm, usable={s: s >= 12 for s in range(21)})
    tracker, (usable, raw) = _track(counter, [0, 5, 10, 15])
    assert (usable.step, usable.resolution) == (12, 1)
    assert (raw.step, raw.resolution) == (5, 5)  # a second replay would exceed one interval per run
    assert tracker.replay_steps == 2


def test_tracker_replays_the_raw_crossing_of_a_run_never_harmed_usably():
    counter = Counter({s: (0.9 if s >= 7 else 0.1) for s in range(21)}, usable={s: s < 6 for s in range(21)})
    tracker, (usable, raw) = _track(counter, [0, 5, 10, 15, 20])
    assert usable is None and (raw.step, raw.resolution, raw.grid_step) == (7, 1, 10)
    assert counter.windows == [(20, None), (5, 10)]  # only the raw interval's batches stay once it is confirmed


def test_tracker_keeps_the_grid_value_when_the_replay_does_not_reproduce():
    counter = Counter({s: (0.9 if s >= 13 else 0.1) for s in range(21)}, break_at=12)
    tracker, (usable, _) = _track(counter, [0, 5, 10, 15])
    assert (usable.step, usable.resolution) == (15, 5) and "not reproducible" in tracker.failure
    assert counter.position == 15


def test_tracker_with_patience_anchors_before_the_confirmed_streak():
    harm = {s: (0.9 if s in (4, 5) or s >= 12 else 0.1) for s in range(31)}  # a lone harmful probe at 5 breaks off
    tracker, (usable, _) = _track(Counter(harm), [0, 5, 10, 15, 20], patience=2)
    assert (usable.step, usable.grid_step) == (12, 15) and tracker.replay_steps == 2


def test_tracker_does_not_redo_the_grid_step_itself():
    """When no step before the harmful grid probe is harmful, the crossing is that probe's step: found without
    stepping or probing it again (the interval costs one step and one probe less)."""
    counter = Counter({s: (0.9 if s >= 15 else 0.1) for s in range(21)})
    tracker, (usable, raw) = _track(counter, [0, 5, 10, 15])
    assert (usable.step, usable.resolution, raw.step) == (15, 1, 15)
    assert tracker.replay_steps == 4 and [p.step for p in tracker.points] == [11, 12, 13, 14]
    assert counter.position == 15 and tracker.failure is None


class Snapshots(Counter):
    """A Counter whose states are objects, counting how many are alive whenever a new one is taken."""

    def __init__(self, harm, **kwargs):
        super().__init__(harm, **kwargs)
        self.alive: list[weakref.ref] = []
        self.alive_at_save: list[int] = []

    def save(self):
        self.alive_at_save.append(sum(ref() is not None for ref in self.alive))
        state = _State(self.position)
        self.alive.append(weakref.ref(state))
        return state

    def restore(self, state):
        self.position = state.step


class _State:
    def __init__(self, step):
        self.step = step


def test_tracker_holds_one_snapshot_at_a_time():
    """A snapshot of full fine-tuning is the trainable weights and the optimizer's state (3.2 GB for a 268M-parameter
    model under AdamW): the tracker lets the anchor it replaces go before taking the next (none alive at each grid
    save), holds two only while replaying (the anchor, until restored, and the final state), and keeps none after."""
    counter = Snapshots({s: (0.9 if s >= 13 else 0.1) for s in range(21)})
    tracker, (usable, _) = _track(counter, [0, 5, 10, 15])
    assert usable.step == 13 and counter.position == 15
    assert counter.alive_at_save == [0, 0, 0, 1]  # anchors at 0, 5 and 10; the final state, beside the anchor
    assert sum(ref() is not None for ref in counter.alive) == 0  # nothing kept once the run is resolved

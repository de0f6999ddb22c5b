"""The planner's waves and the executors: parallel runs identical to sequential ones, isolation of crashing,
exiting and out-of-memory runs, run timeouts, and a sweep killed with SIGKILL that resumes to every run exactly once."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pyarrow.parquet as pq
import pytest
import torch

from bench.contracts import AttackFamily
from bench.core.spec import make_spec
from bench.exec.local import LocalExecutor
from bench.exec.suite_run import run_suite
from bench.exec.worker import WorkerOptions
from bench.plan.planner import Planner, RunRecord, family_waves
from bench.plan.request import SuiteRequest
from bench.registry import load_plugin
from bench.run.results import completed_run_ids, read_run_json
from bench.run.stages import Session
from bench.run.summary import RunSummary

FAST = {"budget": 10, "eval_every": 5, "curvature_iters": 0, "bootstrap": 0}


def _spec(lr, purpose="attack", budget=None):
    args = {"optimizer": "adam", "lr": lr, **({"budget": budget} if budget else {})}
    return make_spec(task="vision-digits", defense="none", attack="full-ft", task_args=FAST, attack_args=args,
                     purpose=purpose)


def _record(spec, steps, censored=False, **summary):
    return RunRecord(spec, "success", RunSummary(steps_to_harm=steps, censored=censored, harm_auc=0.5, **summary))


def test_grid_waves_then_refinement_around_the_best_learning_rate():
    sweep = AttackFamily("full-ft", {"optimizer": "adam"}, (1e-1, 1e-2, 1e-3))
    program = family_waves(sweep, lambda args, purpose="attack": _spec(args["lr"], purpose), refine=True)
    grid = next(program)
    assert [s.attack.kwargs["lr"] for s in grid] == [1e-1, 1e-2, 1e-3]
    refine = program.send([_record(grid[0], 50), _record(grid[1], 10), _record(grid[2], 100, censored=True)])
    assert [s.attack.kwargs["lr"] for s in refine] == [0.0316, 0.00316]  # half-decades around the best, 1e-2
    with pytest.raises(StopIteration):
        program.send([_record(s, 20) for s in refine])


def test_lr_search_waves_probe_then_run_the_best_probes_in_full():
    sweep = AttackFamily("full-ft", {"optimizer": "adam"}, (1e-2, 1e-3, 1e-4), search="lr-search", keep=1,
                        probe_steps=10, refine=False)
    make = lambda args, purpose="attack": _spec(args["lr"], purpose, args.get("budget"))  # noqa: E731
    program = family_waves(sweep, make, refine=True)
    probes = next(program)
    assert {s.purpose for s in probes} == {"lr-probe"} and all(s.attack.kwargs["budget"] == 10 for s in probes)
    summaries = [RunSummary(loss_start=1.0, loss_end=end, outcome="resisted") for end in (0.9, 0.2, 0.95)]
    full = program.send([RunRecord(s, "success", m) for s, m in zip(probes, summaries)])
    assert [(s.attack.kwargs["lr"], s.purpose) for s in full] == [(1e-3, "attack")]
    with pytest.raises(StopIteration):
        program.send([_record(full[0], 10)])


def test_planner_advances_every_family_in_lockstep_and_collapses_identical_runs():
    request = SuiteRequest(task="vision-digits", defense="specdef", seeds=(0, 1), task_args=FAST)
    planner = Planner(request)
    first = planner.wave()
    ids = [s.run_id for _, s in first]
    assert len(ids) == len(set(ids)) and {s.seed for _, s in first} == {0, 1}
    assert {s.defense.name for _, s in first} == {"none", "specdef"}
    assert len({family for family, _ in first}) == len(planner.families)
    planner.finish({s.run_id: RunRecord(s, "failed", RunSummary(), "x") for _, s in first})
    assert planner.done  # nothing succeeded: no refinement to do


def _fake_record(spec):
    """A finished run whose result depends on its learning rate only (probes score by loss progress)."""
    exponent = math.log10(spec.attack.kwargs.get("lr", 1e-3))
    return RunRecord(spec, "success", RunSummary(steps_to_harm=int(20 * abs(exponent + 2.5)) + 5, censored=False,
                                                 harm_auc=0.5, loss_start=1.0, loss_end=0.5 + 0.1 * abs(exponent + 3),
                                                 outcome="resisted"))


def test_streaming_planner_runs_what_lockstep_runs_in_any_finishing_order_and_shared_runs_once():
    requests = [SuiteRequest(task="vision-digits", defense=d, seeds=(0, 1), task_args=FAST) for d in ("specdef", "tar")]
    lockstep, in_lockstep = Planner(*requests), []
    while not lockstep.done:
        wave = [spec for _, spec in lockstep.wave()]
        in_lockstep += [spec.run_id for spec in wave]
        lockstep.finish({spec.run_id: _fake_record(spec) for spec in wave})
    for order in range(3):
        streaming, rng, streamed = Planner(*requests), random.Random(order), []
        ready = [spec for _, spec in streaming.start()]
        while ready:
            spec = ready.pop(rng.randrange(len(ready)))
            streamed.append(spec.run_id)
            ready += [s for _, s in streaming.feed(_fake_record(spec))]
        assert streaming.done and len(streamed) == len(set(streamed))
        assert sorted(streamed) == sorted(in_lockstep)
        baseline = [{r.spec.run_id for r in streaming.records_of(i) if r.spec.defense.name == "none"} for i in (0, 1)]
        assert baseline[0] and baseline[0] == baseline[1]  # both requests' `none` runs, each run once


def test_parallel_workers_give_the_same_results_as_one_process(tmp_path, cache):
    request = SuiteRequest(task="vision-digits", defense="specdef", attack="full-ft", seeds=(0, 1), task_args=FAST,
                           attack_args={"optimizer": "adam", "lr": 1e-3})
    sequential = run_suite(request, Session(tmp_path / "one", cache, progress=False))
    session = Session(tmp_path / "two", cache, progress=False)
    options = WorkerOptions(results_dir=str(session.results_dir), cache_root=str(cache.root), threads=1)
    parallel = run_suite(request, session, executor=LocalExecutor(session, options, jobs=2))
    assert sorted(sequential.run_ids) == sorted(parallel.run_ids) and not parallel.failed
    for run_id in sequential.run_ids:
        assert _values(tmp_path / "one", run_id).equals(_values(tmp_path / "two", run_id)), run_id
        # the planner's wave travels with the spec to the worker, which records it (a single attack: wave 0, full)
        summary = read_run_json(tmp_path / "two" / run_id)["summary"]
        assert (summary["wave"], summary["wave_kind"]) == (0, "full"), run_id


def _values(folder, run_id):
    """A run's metric rows, wall-clock metrics aside."""
    df = pq.read_table(folder / run_id / "metrics.parquet").to_pandas()
    df = df[~df["metric"].str.endswith("seconds")]
    return df[["phase", "step", "split", "metric", "value"]].reset_index(drop=True)


PLUGIN = textwrap.dedent('''
    import os
    from bench.contracts import Attack, AttackConfig
    from bench.registry import ATTACKS

    @ATTACKS.register("exit-attack")
    class ExitAttack(Attack):
        """Calls os._exit(3) mid-run (a plugin that kills its process)."""
        Config = AttackConfig
        def run(self, model, task, cfg, *, generator, monitor):
            monitor.begin(model)
            os._exit(3)

    @ATTACKS.register("oom-attack")
    class OomAttack(Attack):
        """Raises MemoryError (what a run that exhausts memory sees)."""
        Config = AttackConfig
        def run(self, model, task, cfg, *, generator, monitor):
            raise MemoryError("cannot allocate 80 GiB")

    @ATTACKS.register("hang-attack")
    class HangAttack(Attack):
        """Never returns."""
        Config = AttackConfig
        def run(self, model, task, cfg, *, generator, monitor):
            import time
            time.sleep(3600)
''')


@pytest.fixture
def bad_plugins(tmp_path, cache, isolated_registries):
    """A session whose workers import PLUGIN's misbehaving attacks (as ``--plugin bad_attacks.py`` would)."""
    plugin = tmp_path / "bad_attacks.py"
    plugin.write_text(PLUGIN)
    load_plugin(str(plugin))
    session = Session(tmp_path / "res", cache, progress=False)
    options = WorkerOptions(results_dir=str(session.results_dir), cache_root=str(cache.root), threads=1,
                            plugins=(str(plugin),))
    return session, options


def test_a_crashing_exiting_or_hanging_run_fails_alone(bad_plugins):
    session, options = bad_plugins
    specs = {name: make_spec(task="vision-digits", defense="none", attack=name, task_args=FAST,
                             attack_args={} if name != "full-ft" else {"lr": 1e-3})
             for name in ("full-ft", "exit-attack", "oom-attack", "hang-attack")}
    hang = specs.pop("hang-attack")
    records = {r.spec.attack.name: r for r in LocalExecutor(session, options, jobs=2).submit(list(specs.values()))}
    records.update({r.spec.attack.name: r for r in LocalExecutor(session, options, jobs=1, run_timeout=5).submit([hang])})
    assert records["full-ft"].status == "success"
    assert records["exit-attack"].status == "failed" and "exited with code 3" in records["exit-attack"].error
    exited = read_run_json(session.results_dir / specs["exit-attack"].run_id)
    assert exited["status"] == "failed" and exited["worker"]["exit_code"] == 3
    assert records["oom-attack"].status == "failed" and "MemoryError" in records["oom-attack"].error
    assert records["hang-attack"].status == "failed" and "run-timeout 5" in records["hang-attack"].error
    assert completed_run_ids(session.results_dir) == {specs["full-ft"].run_id}


def test_sigkilled_sweep_resumes_to_every_run_exactly_once(tmp_path, cache):
    results = tmp_path / "res"
    command = [sys.executable, "-m", "bench", "run", "--defense", "specdef", "--task", "vision-digits",
               "task.budget=80", "task.curvature_iters=0", "task.bootstrap=0", "--attack", "full-ft",
               "optimizer=adam", "lr=1e-4", "--seeds", "0,1,2,3,4,5", "--results", str(results), "--jobs", "2", "--quiet"]
    env = dict(os.environ, BENCH_CACHE_DIR=str(cache.root))
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(completed_run_ids(results)) < 2 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {run_id: read_run_json(results / run_id)["started_at"] for run_id in completed_run_ids(results)}
    # (runs of 80 steps at a learning rate that never harms, so that workers kept warm cannot finish them all)
    assert 2 <= len(before) < 12, "the sweep should be killed mid-way"
    time.sleep(2.5)  # orphaned workers notice their parent is gone and exit (bench.exec.worker)
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = completed_run_ids(results)
    assert len(done) == 12
    for run_id in done:
        info = read_run_json(results / run_id)
        pq.read_table(results / run_id / "metrics.parquet")  # every Parquet file is readable
        if run_id in before:
            assert info["started_at"] == before[run_id], "a completed run was executed again"
    assert len(list(results.glob("*/run.json"))) == 12


def test_workers_serve_run_after_run_across_waves_and_a_dead_one_is_replaced(bad_plugins):
    session, options = bad_plugins
    exiting = make_spec(task="vision-digits", defense="none", attack="exit-attack", task_args=FAST)
    fine = [_spec(lr) for lr in (1e-2, 1e-3, 1e-4)]
    with LocalExecutor(session, options, jobs=1) as executor:
        records = {r.spec.run_id: r for r in executor.submit([exiting, *fine])}
        assert records[exiting.run_id].status == "failed"
        assert all(records[s.run_id].status == "success" for s in fine)
        assert executor.workers_started == 2  # the one that died with its run, and one that did all the others
        (later,) = executor.submit([_spec(3e-4)])
        assert later.status == "success" and executor.workers_started == 2  # the next wave reuses the live worker
        workers = [worker.proc for worker in executor._workers.values()]
    assert workers and all(proc.poll() is not None for proc in workers)  # closing the executor ends its workers
    logs = session.results_dir / ".logs"
    assert read_run_json(session.results_dir / exiting.run_id)["worker"]["log"] == str(logs / f"{exiting.run_id}.log")
    assert {p.name for p in logs.iterdir()} == {f"{s.run_id}.log" for s in [exiting, *fine, later.spec]}


def test_the_longest_runs_go_first_and_a_worker_keeps_to_its_stage():
    from bench.exec.run_queue import RunQueue

    short, long_none, long_specdef = _spec(1e-3, budget=5), _spec(1e-3, budget=50), make_spec(
        task="vision-digits", defense="specdef", attack="full-ft", task_args=FAST,
        attack_args={"optimizer": "adam", "lr": 1e-3, "budget": 50})
    stop = threading.Event()
    pending = RunQueue([short, long_none, long_specdef])
    pending.close()
    assert pending.take([long_specdef.stage_key("defended")], stop) is long_specdef  # as long: its stage wins
    assert pending.take([], stop) is long_none and pending.take([], stop) is short and pending.take([], stop) is None


def test_streaming_takes_lr_probes_first_then_a_familys_next_runs_and_waits_for_runs_added_later():
    from bench.exec.run_queue import RunQueue

    stop = threading.Event()
    probe, waiting, short = _spec(1e-3, purpose="lr-probe", budget=5), _spec(1e-2, budget=50), _spec(1e-1, budget=5)
    pending = RunQueue([waiting, short, probe], gating_first=True)
    assert pending.take([], stop) is probe
    follow_up = _spec(1e-4, budget=50)
    pending.add([follow_up])  # (as long as `waiting`, added later: it extends its family's chain)
    assert [pending.take([], stop) for _ in range(3)] == [follow_up, waiting, short]
    later = _spec(1e-5, budget=50)
    threading.Timer(0.3, pending.add, args=([later],)).start()
    assert pending.take([], stop) is later  # it waited for the run added after the queue ran empty
    threading.Timer(0.3, pending.close).start()
    assert pending.take([], stop) is None


def test_prestarted_workers_import_the_tasks_and_take_the_runs(bad_plugins):
    session, options = bad_plugins
    specs = [_spec(lr) for lr in (1e-2, 1e-3, 1e-4)]
    with LocalExecutor(session, options, jobs=2) as executor:
        executor.prestart(specs)
        assert executor.workers_started == 2
        records = list(executor.submit(specs))
        assert all(r.status == "success" for r in records) and executor.workers_started == 2  # no worker added
    logs = session.results_dir / ".logs"
    assert {"worker-0.log", "worker-1.log"} <= {p.name for p in logs.iterdir()}  # their startup output


STAGE_PLUGIN = '''
import os
from dataclasses import dataclass
from bench.contracts import Defense
from bench.errors import DataError
from bench.registry import DEFENSES
from defenses.ga_retain import GARetain

BUILDS = {builds!r}

def _count(name):
    with open(BUILDS, "a") as f:
        f.write(f"{{name}} {{os.getpid()}}\\n")

@DEFENSES.register("counted-ga")
class CountedGA(GARetain):
    """ga-retain, counting its builds (and the process that builds)."""
    def apply(self, model, view, cfg, *, generator):
        _count("counted-ga")
        return super().apply(model, view, cfg, generator=generator)

@dataclass(frozen=True, kw_only=True)
class NoConfig:
    pass

@DEFENSES.register("no-layer")
class NoLayer(Defense):
    """Fails as bad input does."""
    Config = NoConfig
    def apply(self, model, view, cfg, *, generator):
        _count("no-layer")
        raise DataError("no-layer: the config matches no layer of this model")
'''


@pytest.fixture
def stage_plugins(tmp_path, isolated_registries):
    """A plugin file (for this process and the workers) with a counting trained defense and a failing one."""
    builds = tmp_path / "builds.txt"
    plugin = tmp_path / "stage_defenses.py"
    plugin.write_text(STAGE_PLUGIN.format(builds=str(builds)))
    load_plugin(str(plugin))
    return plugin, builds


def _builds(path) -> list[tuple[str, int]]:
    lines = path.read_text().split() if path.exists() else []
    return [(name, int(pid)) for name, pid in zip(lines[::2], lines[1::2])]


def test_workers_build_a_waves_defended_stages_once_each_and_report_a_failed_one(tmp_path, cache, stage_plugins):
    from bench.errors import DataError

    plugin, builds = stage_plugins
    request = SuiteRequest(task="vision-digits", defense="counted-ga", seeds=(0, 1), task_args=FAST,
                           defense_args={"steps": 3, "lr": 1e-3}, attack="full-ft",
                           attack_args={"optimizer": "adam", "lr": 1e-3})
    session = Session(tmp_path / "two", cache, progress=False)
    options = WorkerOptions(results_dir=str(session.results_dir), cache_root=str(cache.root), threads=1,
                            plugins=(str(plugin),))
    def refuse(*args, **kwargs):
        raise AssertionError("the sweep's process applied a defense")

    with LocalExecutor(session, options, jobs=2) as executor, pytest.MonkeyPatch.context() as patch:
        patch.setattr("bench.run.stages.build_defended", refuse)  # the workers apply every defense
        parallel = run_suite(request, session, executor=executor)
        failing = dataclasses.replace(request, defense="no-layer", defense_args={})
        with pytest.raises(DataError, match="matches no layer"):
            run_suite(failing, session, executor=executor)
    assert not parallel.failed and len(parallel.records) == 4  # counted-ga and none, two seeds each
    built = _builds(builds)
    trained = [pid for name, pid in built if name == "counted-ga"]
    assert len(trained) == 2 and os.getpid() not in trained  # once per seed, in the workers
    failed = [pid for name, pid in built if name == "no-layer"]  # both seeds tried once each, in the workers only
    assert len(failed) == 2 and os.getpid() not in failed

    alone = Session(tmp_path / "one", cache, progress=False, stage_cache=False)  # builds every stage here
    sequential = run_suite(request, alone)
    assert sorted(sequential.run_ids) == sorted(parallel.run_ids)
    for spec in (record.spec for record in parallel.records):
        if spec.defense.name == "counted-ga":
            assert session.defended(spec).source == "disk"  # this process read what a worker built
        mine, theirs = session.defended(spec).model.state_dict(), alone.defended(spec).model.state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), spec.seed
        assert _values(tmp_path / "two", spec.run_id).equals(_values(tmp_path / "one", spec.run_id)), spec.run_id

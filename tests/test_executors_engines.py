"""The Ray and Slurm (submitit) executors: runs on a local Ray instance give the same metrics as in-process runs, a
run whose worker calls os._exit becomes a failed run, submitit's local cluster runs a wave and records it, and the
command-line options reach the right executor (or fail with a one-line error)."""

from __future__ import annotations

import importlib.util
import os
import textwrap

import pyarrow.parquet as pq
import pytest

from bench.core.spec import make_spec
from bench.errors import ConfigError
from bench.exec.executors import EngineOptions, make_executor
from bench.exec.shared import portable
from bench.exec.suite_run import run_suite
from bench.exec.worker import WorkerOptions
from bench.plan.request import SuiteRequest
from bench.registry import load_plugin
from bench.run.results import completed_run_ids, read_metrics, read_run_json
from bench.run.stages import Session

FAST = {"budget": 10, "eval_every": 5, "curvature_iters": 0, "bootstrap": 0}

EXIT_PLUGIN = textwrap.dedent('''
    import os
    from bench.contracts import Attack, AttackConfig
    from bench.registry import ATTACKS

    @ATTACKS.register("exit-attack")
    class ExitAttack(Attack):
        """Calls os._exit(3) mid-run (a plugin that kills its process)."""
        Config = AttackConfig
        def run(self, model, task, cfg, *, generator, monitor):
            print("about to exit", flush=True)
            os._exit(3)
''')


def _values(folder, run_id):
    df = pq.read_table(folder / run_id / "metrics.parquet").to_pandas()
    df = df[~df["metric"].str.endswith("seconds")]
    return df[["phase", "step", "split", "metric", "value"]].reset_index(drop=True)


def _options(session, cache, **kw):
    return WorkerOptions(results_dir=str(session.results_dir), cache_root=str(cache.root), threads=1, **kw)


def _exit_plugin(tmp_path):
    plugin = tmp_path / "exit_attack.py"
    plugin.write_text(EXIT_PLUGIN)
    load_plugin(str(plugin))
    return plugin


def _spec(attack, **attack_args):
    return make_spec(task="vision-digits", defense="none", attack=attack, task_args=FAST, attack_args=attack_args)


@pytest.fixture(scope="module")
def ray_local(cache):
    """A two-CPU local Ray instance for this module's tests (started once: start-up takes seconds), shut down after."""
    try:
        import ray
    except ImportError:
        pytest.skip("Ray is not installed: pip install 'training-resistance-bench[ray]'")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as err:  # noqa: BLE001 - e.g. a sandbox without the shared memory Ray needs
        pytest.skip(f"Ray cannot start on this machine: {type(err).__name__}: {err}")
    yield ray
    ray.shutdown()


def _no_models_here(monkeypatch):
    """Make loading any task or model in this (the driver's) process fail: the workers must do all of it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the driver loaded a model")

    monkeypatch.setattr("bench.run.stages._build_task", refuse)


def test_ray_runs_give_the_same_results_as_one_process(tmp_path, cache, ray_local, monkeypatch):
    from bench.exec.ray import RayExecutor

    request = SuiteRequest(task="vision-digits", defense="specdef", attack="full-ft", seeds=(0,), task_args=FAST,
                           attack_args={"optimizer": "adam", "lr": 1e-3})
    sequential = run_suite(request, Session(tmp_path / "one", cache, progress=False))
    session = Session(tmp_path / "two", cache, progress=False)
    _no_models_here(monkeypatch)  # the Ray driver plans and submits; its tasks compute
    distributed = run_suite(request, session, executor=RayExecutor(session, _options(session, cache)))
    assert sorted(sequential.run_ids) == sorted(distributed.run_ids) and not distributed.failed
    assert len(distributed.run_ids) >= 2
    for run_id in sequential.run_ids:
        assert _values(tmp_path / "one", run_id).equals(_values(tmp_path / "two", run_id)), run_id
        assert (session.results_dir / ".logs" / f"{run_id}.log").is_file()


def test_a_run_whose_ray_worker_exits_fails_alone(tmp_path, cache, ray_local, isolated_registries, monkeypatch):
    from bench.exec.ray import RayExecutor

    plugin = _exit_plugin(tmp_path)
    monkeypatch.chdir(tmp_path)  # the plugin is given relative to here; the Ray worker gets its absolute path
    session = Session(tmp_path / "res", cache, progress=False)
    options = _options(session, cache, plugins=(plugin.name,))
    good, bad = _spec("full-ft", lr=1e-3), _spec("exit-attack")
    records = {r.spec.attack.name: r for r in RayExecutor(session, options).submit([good, bad])}
    assert records["full-ft"].status == "success"
    assert records["exit-attack"].status == "failed" and "WorkerCrashed" in records["exit-attack"].error
    failed = read_run_json(session.results_dir / bad.run_id)
    assert failed["status"] == "failed" and failed["worker"]["executor"] == "ray"
    assert "about to exit" in failed["worker"]["log_tail"]
    assert completed_run_ids(session.results_dir) == {good.run_id}


def test_submitit_local_cluster_runs_a_wave_and_records_a_dead_job(tmp_path, cache, isolated_registries, monkeypatch):
    pytest.importorskip("submitit", reason="submitit is not installed: pip install 'training-resistance-bench[slurm]'")
    from bench.exec.slurm import SlurmExecutor

    plugin = _exit_plugin(tmp_path)
    session = Session(tmp_path / "res", cache, progress=False)
    options = _options(session, cache, plugins=(str(plugin),))
    specs = [_spec("full-ft", optimizer="adam", lr=1e-3), _spec("exit-attack")]
    executor = SlurmExecutor(session, options, cluster="local", time_limit=10)
    _no_models_here(monkeypatch)  # the Slurm driver (a login node) plans and submits; its jobs compute
    records = {r.spec.attack.name: r for r in executor.submit(specs)}
    assert records["full-ft"].status == "success"
    # The job's summary is the one its run wrote (read back from the shared results folder), not a default.
    recorded = read_metrics(session.results_dir).to_pandas()
    steps = recorded[(recorded.run_id == specs[0].run_id) & (recorded.metric == "steps_to_harm")].value
    assert len(steps) == 1 and records["full-ft"].summary.steps_to_harm == steps.iloc[0]
    assert records["exit-attack"].status == "failed" and "JobDied" in records["exit-attack"].error
    failed = read_run_json(session.results_dir / specs[1].run_id)
    assert failed["worker"]["executor"] == "slurm" and "about to exit" in failed["worker"]["log_tail"]
    assert completed_run_ids(session.results_dir) == {specs[0].run_id}
    assert list((session.results_dir / ".submitit").glob("*_log.out"))  # submitit's logs land in the results


def test_a_slurm_sweep_completes_with_a_driver_that_cannot_load_a_model(tmp_path, cache, monkeypatch):
    pytest.importorskip("submitit", reason="submitit is not installed: pip install 'training-resistance-bench[slurm]'")
    from bench.exec.slurm import SlurmExecutor

    request = SuiteRequest(task="vision-digits", defense="specdef", attack="full-ft", seeds=(0,), task_args=FAST,
                           attack_args={"optimizer": "adam", "lr": 1e-3})
    session = Session(tmp_path / "res", cache, progress=False)
    executor = SlurmExecutor(session, _options(session, cache), cluster="local", time_limit=10)
    _no_models_here(monkeypatch)
    report = run_suite(request, session, executor=executor)
    assert len(report.records) == 2 and not report.failed  # none and specdef, built and run in the jobs


def test_engine_options_reach_only_the_executors_they_apply_to(tmp_path, cache, monkeypatch):
    session = Session(tmp_path / "res", cache, progress=False)
    options = _options(session, cache)
    with pytest.raises(ConfigError, match="--partition applies to --executor slurm, not ray"):
        make_executor("ray", session, options, tier="tiny", engine=EngineOptions(partition="gpu"))
    with pytest.raises(ConfigError, match="--address applies to --executor ray, not local"):
        make_executor("local", session, options, tier="tiny", engine=EngineOptions(address="auto"))
    with pytest.raises(ConfigError, match="--gpus-per-run must be at least 0"):
        EngineOptions(gpus_per_run=-1)
    with pytest.raises(ConfigError, match="always isolates"):
        make_executor("slurm", session, options, tier="tiny", isolation="none")
    if importlib.util.find_spec("submitit") is not None:
        monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch: an error, not submitit's quiet local fallback
        with pytest.raises(ConfigError, match="needs Slurm's sbatch on PATH"):
            make_executor("slurm", session, options, tier="tiny")


def test_a_missing_engine_names_the_extra_to_install(tmp_path, cache, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("ray", "submitit")
                        else real(name, *a))
    session = Session(tmp_path / "res", cache, progress=False)
    for name, extra in (("ray", "[ray]"), ("slurm", "[slurm]")):
        with pytest.raises(ConfigError, match=rf"pip install 'training-resistance-bench\{extra}'"):
            make_executor(name, session, _options(session, cache), tier="tiny")


def test_remote_workers_get_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.py").write_text("")
    options = portable(WorkerOptions(results_dir="res", cache_root="cache", plugins=("mine.py", "my_pkg.plugin")))
    assert options.results_dir == str(tmp_path / "res") and options.cache_root == str(tmp_path / "cache")
    assert options.plugins == (str(tmp_path / "mine.py"), "my_pkg.plugin")


FAKE_SLURM = {  # just enough of Slurm for submitit: sbatch keeps the script it gets, sacct reports both tasks ended
    "srun": "#!/bin/sh\nexit 0\n",
    "scancel": "#!/bin/sh\nexit 0\n",
    "sbatch": "#!/bin/sh\ncp \"$1\" \"$(dirname \"$0\")/script.sh\"\necho 'Submitted batch job 4242'\n",
    "sacct": "#!/bin/sh\nprintf 'JobID|State|NodeList\\n4242_0|TIMEOUT|n1\\n4242_1|OUT_OF_MEMORY|n1\\n'\n",
}


def test_slurm_options_reach_sbatch_and_slurm_kills_become_failed_runs(tmp_path, cache, monkeypatch):
    pytest.importorskip("submitit", reason="submitit is not installed: pip install 'training-resistance-bench[slurm]'")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in FAKE_SLURM.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    session = Session(tmp_path / "res", cache, progress=False)
    engine = EngineOptions(partition="gpu", gpus_per_run=1, cpus_per_run=4, mem_gb=32,
                           slurm_params=(("account", "lab"),))
    executor = make_executor("slurm", session, _options(session, cache), tier="real", jobs=1, run_timeout=90,
                             engine=engine)
    specs = [_spec("full-ft", lr=1e-3), _spec("full-ft", lr=1e-2)]
    records = {r.spec.run_id: r for r in executor.submit(specs)}
    script = (bin_dir / "script.sh").read_text()
    for line in ("--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=4", "--mem=32GB", "--time=2",
                 "--account=lab", "--array=0-1%1"):
        assert f"#SBATCH {line}\n" in script, line
    assert "limit (2 min)" in records[specs[0].run_id].error and "out of memory" in records[specs[1].run_id].error
    timed_out = read_run_json(session.results_dir / specs[0].run_id)
    assert timed_out["status"] == "failed" and timed_out["worker"]["state"] == "TIMEOUT"


# The slow lane: each piece is covered in CI by the tests above and test_failure_isolation. On Ray: defended stages
# built and attacked in Ray tasks, a Ray worker that dies becoming a failed run (its driver code is the same for a
# defense's worker), and defenses that raise, exit or are killed while prepared in worker processes (execute_job, the
# code a Ray task runs). On Slurm: jobs that build every stage for a driver that cannot load a model and a job that
# dies. Each of its Ray tasks and submitit jobs starts a Python with torch (Ray: about 170 s on 2 cores in CI).
@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ray", "slurm"])
def test_defenses_that_raise_exit_or_are_killed_fail_only_their_runs_on_each_engine(
        tmp_path, cache, isolated_registries, monkeypatch, engine, request):
    from test_failure_isolation import PLUGIN  # (pytest puts tests/ on the path)

    from bench.exec.suite_run import run_suites

    if engine == "ray":
        request.getfixturevalue("ray_local")
        from bench.exec.ray import RayExecutor as Engine
        kwargs = {}
    else:
        pytest.importorskip("submitit", reason="submitit is not installed")
        from bench.exec.slurm import SlurmExecutor as Engine
        kwargs = {"cluster": "local", "time_limit": 10}
    plugin = tmp_path / "failing_defenses.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    load_plugin(str(plugin))
    session = Session(tmp_path / "res", cache, progress=False)
    executor = Engine(session, _options(session, cache, plugins=(str(plugin),)), **kwargs)
    # The run that must survive is the undefended one (a defended stage built and attacked on each engine is
    # test_ray_runs_give_the_same_results_as_one_process's and test_a_slurm_sweep_completes_...'s): one Ray task less.
    names = ("none", "raising-def", "exiting-def", "oom-def")
    requests = [SuiteRequest(task="vision-digits", defense=name, attack="full-ft", seeds=(0,), task_args=FAST,
                             attack_args={"optimizer": "adam", "lr": 1e-3}, baseline=False) for name in names]
    _no_models_here(monkeypatch)
    outcomes = run_suites(requests, session, executor=executor)
    reports = dict(zip(names, outcomes))
    (kept,) = reports["none"].records
    assert not reports["none"].failed and kept.status == "success"  # the other run completed
    for name in ("raising-def", "exiting-def", "oom-def"):
        (record,) = reports[name].records
        assert record.status == "failed", name
        assert read_run_json(session.results_dir / record.spec.run_id)["status"] == "failed"
    assert "raising-def failed on purpose" in reports["raising-def"].records[0].error

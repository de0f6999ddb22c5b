"""Stages on disk: a miss builds and writes, a hit reads without applying the defense, a corrupt entry is rebuilt,
results are identical whether the stages were built in this process or read from the cache; ``bench cache``."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from bench.cache import Cache, file_lock, lock_is_held
from bench.cli import main
from bench.core.spec import make_spec
from bench.errors import PluginError
from bench.registry import DEFENSES, TASKS
from bench.run.runner import run
from bench.run.stage_cache import ENTRY, StageStore, plugin_version
from bench.run.stages import Session
from defenses.specdef import SpecDef

TASK_ARGS = {"curvature_iters": 5, "bootstrap": 100, "budget": 20}


@pytest.fixture
def fresh_cache(tmp_path, cache):
    """A cache with no stages, holding a copy of the session cache's tiny vision-digits model (so nothing retrains)."""
    Session(tmp_path / "warm", cache, stage_cache=False, progress=False).released(_spec("none"))
    root = tmp_path / "cache"
    # (the session cache may be shared with other pytest-xdist workers: skip their unfinished ".<entry>.<random>"
    # temporary entries, which can vanish mid-copy)
    shutil.copytree(cache.root / "vision-digits", root / "vision-digits", ignore=shutil.ignore_patterns(".*.*"))
    return Cache(root)


@pytest.fixture
def counted(isolated_registries):
    """SpecDef under another name, counting how often it is applied."""
    applied = []

    @DEFENSES.register("counted-specdef")
    class CountedSpecDef(SpecDef):
        def apply(self, model, view, cfg, *, generator):
            applied.append(1)
            return super().apply(model, view, cfg, generator=generator)

    return applied


def _spec(defense="counted-specdef", seed=0):
    return make_spec(task="vision-digits", defense=defense, attack="full-ft", seed=seed, task_args=TASK_ARGS,
                     defense_args={"alpha": 100.0, "n_layers": 2} if defense != "none" else {},
                     attack_args={"optimizer": "adam", "lr": 1e-3})


def _values(directory):
    """The run's measurements, wall times aside (a stage read from disk keeps the times it was built in)."""
    df = pq.read_table(directory / "metrics.parquet").to_pandas()
    df = df[~df["metric"].str.contains("seconds")]
    return df[["phase", "step", "split", "metric", "value", "n", "stderr", "ci_low", "ci_high"]].reset_index(drop=True)


def _timeless(rows):
    return [row for row in rows if "seconds" not in row["metric"]]


def _assert_same(a, b):
    assert a.equals(b), a.compare(b)


def test_a_miss_builds_and_writes_a_hit_reads_without_applying_and_results_are_identical(
        tmp_path, fresh_cache, counted, monkeypatch):
    import bench.run.stages

    measured = []
    original = bench.run.stages.measure_released
    monkeypatch.setattr(bench.run.stages, "measure_released", lambda task: measured.append(1) or original(task))
    spec = _spec()
    in_memory = run(spec, Session(tmp_path / "memory", fresh_cache, progress=False, stage_cache=False))
    assert in_memory.status == "success" and len(counted) == 1
    assert not (fresh_cache.root / "stages").exists()  # in memory only: nothing written

    first = run(spec, Session(tmp_path / "first", fresh_cache, progress=False))
    assert first.status == "success" and (len(counted), len(measured)) == (2, 2)  # a miss: built, then written
    entries = StageStore(fresh_cache).entries()
    assert sorted(e.kind for e in entries) == ["defended", "released"]
    defended = next(e for e in entries if e.kind == "defended")
    assert defended.defense == spec.defense_label and defended.task == "vision-digits" and defended.size > 0
    assert (defended.path / "model" / "model.safetensors").is_file()

    second = run(spec, Session(tmp_path / "second", fresh_cache, progress=False))
    assert second.status == "success" and (len(counted), len(measured)) == (2, 2)  # a hit: nothing applied or measured
    for other in ("first", "second"):
        _assert_same(_values(tmp_path / other / spec.run_id), _values(tmp_path / "memory" / spec.run_id))
    info = [json.loads((tmp_path / d / spec.run_id / "run.json").read_text()) for d in ("memory", "second")]
    assert info[0]["defense_report"]["layers"] == info[1]["defense_report"]["layers"]
    assert [{k: v for k, v in i["summary"].items() if "seconds" not in k} for i in info] == \
        [{k: v for k, v in info[0]["summary"].items() if "seconds" not in k}] * 2

    # the stage read back computes exactly what the freshly defended model does
    fresh = Session(tmp_path / "x", fresh_cache, progress=False, stage_cache=False)
    cached = Session(tmp_path / "y", fresh_cache, progress=False)
    x = fresh.released(spec).task.splits["eval_benign"].x
    model_a, model_b = fresh.defended(spec).model, cached.defended(spec).model
    assert type(model_a) is type(model_b) and torch.equal(model_a(x), model_b(x))
    assert [n for n, _ in model_a.named_modules()] == [n for n, _ in model_b.named_modules()]


def test_runs_record_the_seconds_of_each_stage_part_shown_as_it_runs_and_where_the_stage_came_from(
        tmp_path, fresh_cache, capsys):
    spec = _spec("specdef")
    first = run(spec, Session(tmp_path / "a", fresh_cache))
    assert first.status == "success", first.error
    progress = capsys.readouterr().err
    for line in ("[released stage] evaluate ...", "[released stage] curvature (at most 5 Hessian-vector products",
                 "[defended stage] defense (specdef", "[defended stage] evaluate: "):
        assert line in progress
    info = json.loads((first.directory / "run.json").read_text())
    released, defended = info["stage_seconds"]["released"], info["stage_seconds"]["defended"]
    assert set(released) == {"load", "evaluate", "probe", "curvature", "reference_outputs"}
    assert set(defended) == {"defense", "evaluate", "reference_outputs", "curvature"}
    assert all(value >= 0 for value in [*released.values(), *defended.values()])
    assert defended["defense"] == pytest.approx(info["defense_report"]["seconds"], abs=0.05)
    hessian = pq.read_table(first.directory / "metrics.parquet").to_pandas().query("metric == 'hessian_seconds'")
    assert released["curvature"] >= hessian[hessian["phase"] == "released"]["value"].item()
    assert info["stage_source"] == {"released": "built", "defended": "built"}

    # another run of the same call shares the stages: their build's seconds, marked as already in memory
    session = Session(tmp_path / "b", fresh_cache, progress=False)
    run(spec, session)
    other = make_spec(task="vision-digits", defense="specdef", attack="full-ft", task_args=TASK_ARGS,
                      defense_args={"alpha": 100.0, "n_layers": 2}, attack_args={"optimizer": "adam", "lr": 1e-2})
    shared = json.loads((run(other, session).directory / "run.json").read_text())
    assert shared["stage_source"] == {"released": "memory", "defended": "memory"}
    # a run in another process reads them from the disk cache, with the seconds of their original build
    cached = json.loads((tmp_path / "b" / spec.run_id / "run.json").read_text())
    assert cached["stage_source"] == {"released": "disk", "defended": "disk"}
    assert cached["stage_seconds"]["defended"] == defended
    assert {k: v for k, v in cached["stage_seconds"]["released"].items() if k != "load"} == \
        {k: v for k, v in released.items() if k != "load"}  # the task is loaded afresh each time

    assert main(["show", str(first.directory)]) == 0
    shown = capsys.readouterr().out
    released_line = next(line for line in shown.splitlines() if line.startswith("released stage (built by this run): "))
    defended_line = next(line for line in shown.splitlines() if line.startswith("defended stage (built by this run): "))
    assert f"load {released['load']:.1f} s" in released_line and "curvature " in released_line
    assert f"defense {defended['defense']:.1f} s" in defended_line


def _corrupt_weights(entry):
    path = entry / "model" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])  # truncated


def _corrupt_measurements(entry):
    path = entry / "stage.json"
    path.write_text(path.read_text().replace('"params_added": ', '"params_added": 1'))  # still valid JSON


def _missing_array(entry):
    (entry / "arrays" / "0.npy").unlink()


def _corrupt_manifest(entry):
    path = entry / ENTRY
    path.write_text(path.read_text()[:50])


@pytest.mark.parametrize("corrupt", [_corrupt_weights, _corrupt_measurements, _missing_array, _corrupt_manifest])
def test_a_corrupt_entry_is_detected_deleted_and_rebuilt(tmp_path, fresh_cache, counted, corrupt, caplog):
    spec = _spec()
    first = Session(tmp_path, fresh_cache, progress=False).defended(spec)
    store = StageStore(fresh_cache)
    entry = next(e.path for e in store.entries() if e.kind == "defended")
    corrupt(entry)
    assert store.problem(entry) is not None
    with caplog.at_level(logging.WARNING, logger="bench.run.stage_cache"):
        again = Session(tmp_path, fresh_cache, progress=False).defended(spec)
    assert len(counted) == 2  # rebuilt: the corrupt entry was not used
    assert "discarding entry" in caplog.text and entry.name in caplog.text
    assert store.problem(entry) is None  # and written again, intact
    assert again.params_added == first.params_added and _timeless(again.rows) == _timeless(first.rows)


def test_a_corrupt_released_entry_is_rebuilt(tmp_path, fresh_cache, caplog):
    spec = _spec("none")
    first = Session(tmp_path, fresh_cache, progress=False).released(spec)
    store = StageStore(fresh_cache)
    entry = next(e.path for e in store.entries() if e.kind == "released")
    (entry / "outputs.npy").write_bytes(b"\x93NUMPY")
    with caplog.at_level(logging.WARNING, logger="bench.run.stage_cache"):
        again = Session(tmp_path, fresh_cache, progress=False).released(spec)
    assert "outputs.npy does not have its recorded size" in caplog.text and store.problem(entry) is None
    assert np.array_equal(again.outputs, first.outputs) and _timeless(again.rows) == _timeless(first.rows)


def test_concurrent_writers_of_one_entry_use_the_first_finished(tmp_path):
    store = StageStore(Cache(tmp_path))

    def fill(text):
        return lambda directory: (directory / "stage.json").write_text(text)

    def slow_fill(directory):  # while this writer fills its temporary entry, another one finishes the same entry
        (directory / "stage.json").write_text("loser")
        store.write("k", {"kind": "released"}, fill("winner"))

    path = store.write("k", {"kind": "released"}, slow_fill)
    assert (path / "stage.json").read_text() == "winner" and store.problem(path) is None
    assert [p.name for p in store.root.iterdir()] == ["k"]  # the loser's temporary entry is gone


def test_processes_needing_one_stage_at_once_build_it_once(tmp_path, fresh_cache, counted):
    # Two sessions (as two worker processes would) ask for the same uncached defended stage at the same time: the
    # stage lock makes the second wait and read what the first wrote, instead of training the defense again.
    sessions = [Session(tmp_path / f"r{i}", Cache(fresh_cache.root), progress=False) for i in range(2)]
    stages, errors = [None, None], []

    def build(i):
        try:
            stages[i] = sessions[i].defended(_spec())
        except Exception as err:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(counted) == 1
    assert sorted(stage.source for stage in stages) == ["built", "disk"]


def test_the_stage_lock_serialises_holders_of_one_name_only(tmp_path):
    store = StageStore(Cache(tmp_path))
    events = []

    def hold(name, tag, seconds):
        with store.building(name):
            events.append(f"{tag} in")
            time.sleep(seconds)
            events.append(f"{tag} out")

    first = threading.Thread(target=hold, args=("a", "first", 0.4))
    first.start()
    time.sleep(0.1)
    hold("b", "other", 0)  # another stage: not blocked
    hold("a", "second", 0)  # the same stage: waits for the first
    first.join()
    assert events == ["first in", "other in", "other out", "first out", "second in", "second out"]


def test_get_or_build_builds_a_missing_entry_once_for_processes_asking_at_once(tmp_path):
    cache, builds, results = Cache(tmp_path), [], []

    def build(directory):
        builds.append(1)
        time.sleep(0.3)  # (the other asker arrives meanwhile)
        (directory / "value").write_text("built")

    threads = [threading.Thread(target=lambda: results.append(cache.get_or_build(build, "task", "tiny", "key")))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and sorted(built for _, built in results) == [False, True]
    assert all((path / "value").read_text() == "built" for path, _ in results)


def test_get_or_build_keeps_an_entry_a_concurrent_builder_finished(tmp_path):
    cache = Cache(tmp_path)

    def slow(directory):  # another builder finishes the entry meanwhile (as one that could not take the lock would)
        (directory / "value").write_text("loser")
        cache._build(lambda d: (d / "value").write_text("winner"), cache.entry("task", "tiny", "key"))

    path, _ = cache.get_or_build(slow, "task", "tiny", "key")
    assert (path / "value").read_text() == "winner"


def test_plugin_code_is_part_of_the_key(tmp_path, monkeypatch):
    import importlib

    monkeypatch.syspath_prepend(str(tmp_path))
    source = "class Defense:\n    '''{}'''\n"
    (tmp_path / "plugin_v.py").write_text(source.format("one"))
    one = plugin_version(importlib.import_module("plugin_v").Defense)
    (tmp_path / "plugin_v.py").write_text(source.format("two"))
    plugin_version.cache_clear()
    two = plugin_version(importlib.reload(importlib.import_module("plugin_v")).Defense)
    assert one and two and one != two


def test_a_model_reloads_in_the_dtype_it_was_saved_in(tmp_path):
    from bench.modelio import load_model, save_model
    from bench.toolkit.layers import MLP

    model = MLP([4, 8, 3]).to(torch.bfloat16)
    reloaded = load_model(save_model(model, tmp_path / "m", architecture={"kind": "mlp", "sizes": [4, 8, 3]}))
    x = torch.randn(5, 4, dtype=torch.bfloat16)
    assert {p.dtype for p in reloaded.parameters()} == {torch.bfloat16} and torch.equal(reloaded(x), model(x))


def test_bench_cache_ls_and_clear(tmp_path, fresh_cache, counted, monkeypatch, capsys):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(fresh_cache.root))
    assert main(["cache", "ls"]) == 0
    out = capsys.readouterr().out
    assert "tiny model" in out and "vision-digits" in out and "defended" not in out
    spec = _spec()
    Session(tmp_path, fresh_cache, progress=False).defended(spec)
    assert main(["cache", "ls"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert spec.defense_label in lines["defended"] and "seed 0" in lines["defended"]
    assert "vision-digits" in lines["released"]
    assert f"{2 + len(fresh_cache.entries())} entries" in out  # released, defended, the tiny model(s) copied in

    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["cache", "clear"]) == 2  # never deletes without --yes when it cannot ask
    assert "--yes" in capsys.readouterr().err and len(StageStore(fresh_cache).entries()) == 2
    assert main(["cache", "clear", "--stages", "--yes"]) == 0
    assert "deleted 2 entries" in capsys.readouterr().out
    assert not StageStore(fresh_cache).entries() and fresh_cache.entries()  # the tiny model stays
    Session(tmp_path, fresh_cache, progress=False).defended(spec)
    assert len(counted) == 2  # cleared stages are rebuilt when needed
    assert main(["cache", "clear", "--all", "--yes", "--cache-dir", str(fresh_cache.root)]) == 0
    assert not fresh_cache.entries() and not StageStore(fresh_cache).entries()
    assert {p.name for p in fresh_cache.root.iterdir()} <= {".locks", "stages"}  # lock files stay (others may hold them)
    assert main(["cache", "ls"]) == 0 and "is empty" in capsys.readouterr().out


def test_the_baseline_stores_no_copy_of_the_released_weights(tmp_path, fresh_cache):
    spec = _spec("none")
    first = Session(tmp_path, fresh_cache, progress=False).defended(spec)
    (entry,) = [e for e in StageStore(fresh_cache).entries() if e.kind == "defended"]
    assert not (entry.path / "model").exists()  # an 8B baseline would otherwise be copied once per seed
    again = Session(tmp_path, fresh_cache, progress=False)
    second = again.defended(spec)
    x = again.released(spec).task.splits["eval_benign"].x
    with torch.no_grad():
        assert torch.equal(first.model(x), second.model(x))
        assert torch.equal(second.model(x), again.released(spec).task.model(x))
    assert second.model is not again.released(spec).task.model  # attacks fine-tune a copy, never the released model


def test_the_baseline_reuses_the_released_measurements_exactly(tmp_path, fresh_cache, isolated_registries):
    """``none`` is not measured again, and its rows are exactly what measuring the unchanged weights gives."""
    from defenses.none import NoDefense

    @DEFENSES.register("none-measured")
    class MeasuredNone(NoDefense):
        changes_weights = True

    @DEFENSES.register("none-but-noisy")
    class NoisyNone(NoDefense):
        def apply(self, model, view, cfg, *, generator):
            with torch.no_grad():
                next(model.parameters()).add_(1e-3)
            return super().apply(model, view, cfg, generator=generator)

    session = Session(tmp_path, fresh_cache, progress=False, stage_cache=False)
    task = session.released(_spec("none")).task
    evaluated = []
    original = task.evaluate
    task.evaluate = lambda model: evaluated.append(1) or original(model)
    reused = session.defended(_spec("none"))
    assert evaluated == []
    measured = session.defended(make_spec(task="vision-digits", defense="none-measured", attack="full-ft",
                                          task_args=TASK_ARGS, attack_args={"optimizer": "adam", "lr": 1e-3}))
    assert evaluated == [1]
    assert _timeless(reused.rows) == _timeless(measured.rows)
    with pytest.raises(PluginError, match="changes_weights = False but changed"):
        session.defended(make_spec(task="vision-digits", defense="none-but-noisy", attack="full-ft",
                                   task_args=TASK_ARGS, attack_args={"optimizer": "adam", "lr": 1e-3}))


def test_a_session_keeps_only_its_most_recent_stages_when_told(tmp_path, fresh_cache, counted):
    """A long-lived worker's memory bound: the least recently used stage is dropped, and built again if needed."""
    session = Session(tmp_path, fresh_cache, progress=False, stage_cache=False, keep_stages=1)
    first = session.defended(_spec(seed=0))
    assert session.defended(_spec(seed=0)) is first and len(counted) == 1
    session.defended(_spec(seed=1))
    assert session.defended(_spec(seed=0)) is not first and len(counted) == 3


def test_cache_clear_keeps_entries_being_built_and_their_locks(tmp_path, capsys):
    cache = Cache(tmp_path)
    store = StageStore(cache)
    for key in ("done", "busy"):
        store.write(key, {"kind": "released", "task": "t"}, lambda d: (d / "w").write_text("x"))
    cache.get_or_build(lambda d: (d / "m").write_text("x"), "task", "tiny", "model")
    with store.building("busy"), file_lock(cache.root / ".locks", "task/tiny/model"):
        assert lock_is_held(store.root / ".locks", "busy") and not lock_is_held(store.root / ".locks", "done")
        assert main(["cache", "clear", "--all", "--yes", "--cache-dir", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert "deleted 1 entries" in out and "kept 2 being built" in out and "busy" in out
        assert [e.path.name for e in store.entries()] == ["busy"] and cache.entries()
        locks = sorted((store.root / ".locks").iterdir())
    assert locks and sorted((store.root / ".locks").iterdir()) == locks  # the held lock files were not deleted
    assert main(["cache", "clear", "--all", "--yes", "--cache-dir", str(tmp_path)]) == 0
    assert "deleted 2 entries" in capsys.readouterr().out and not store.entries() and not cache.entries()


def test_a_lock_that_cannot_be_taken_is_an_error_not_an_unlocked_build(tmp_path):
    from bench.errors import DataError

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")  # the lock folder cannot be created here
    with pytest.raises(DataError, match="cannot lock cache entry"):
        with file_lock(blocker / ".locks", "entry"):
            pytest.fail("the block ran without its lock")


def test_a_read_checks_sizes_and_bench_cache_verify_rehashes(tmp_path, fresh_cache, counted, monkeypatch, capsys):
    from bench.run import stage_cache

    spec = _spec()
    Session(tmp_path, fresh_cache, progress=False).defended(spec)
    store = StageStore(fresh_cache)
    entry = next(e.path for e in store.entries() if e.kind == "defended")
    hashed = []
    real = stage_cache._sha256
    monkeypatch.setattr(stage_cache, "_sha256", lambda path: hashed.append(path) or real(path))
    assert store.read(entry.name) == entry and not hashed  # a read re-hashes nothing
    weights = entry / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # a flipped bit: same size, so only a re-hash sees it
    weights.write_bytes(bytes(data))
    assert store.problem(entry) is None and "sha256" in store.problem(entry, verify=True)
    monkeypatch.setenv("BENCH_CACHE_DIR", str(fresh_cache.root))
    assert main(["cache", "verify"]) == 1
    out = capsys.readouterr().out
    assert f"corrupt, discarded (rebuilt when next needed): {entry.name}" in out and ": 1 corrupt" in out
    assert not entry.exists() and main(["cache", "verify"]) == 0


def test_a_portable_tiny_stage_is_keyed_without_its_device_and_records_where_it_was_built(tmp_path, fresh_cache,
                                                                                             monkeypatch):
    spec = _spec("none")
    session = Session(tmp_path, fresh_cache, progress=False)
    task = session.released(spec).task
    assert task.stage_portable  # the tiny tier declares it
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert session._disk_key(spec, "released", task, cpu) == session._disk_key(spec, "released", task, gpu)
    entry = next(e.path for e in StageStore(fresh_cache).entries() if e.kind == "released")
    assert json.loads((entry / ENTRY).read_text())["device"] == "cpu"  # where this one was built and measured

    class Pinned(type(task)):  # a task whose stages are not portable: keyed by device type
        stage_portable = False

    task.__class__ = Pinned
    # (and whose task plugin keys them by the built task's provenance, as a real tier does)
    monkeypatch.setattr(TASKS.get(spec.task.name), "stage_identity", classmethod(lambda cls, cfg, **kw: None))
    assert session._disk_key(spec, "released", task, cpu) != session._disk_key(spec, "released", task, gpu)

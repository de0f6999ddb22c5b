"""Results tied to code: every run records a code fingerprint, and resume never reuses a run made by other code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from bench.core.spec import make_spec
from bench.run import fingerprint, provenance, stage_cache
from bench.run.fingerprint import changes, code_fingerprint, resume_lines

PLUGIN = textwrap.dedent('''
    from dataclasses import dataclass
    from bench.contracts import Defense, DefenseResult
    from bench.registry import DEFENSES

    @dataclass(frozen=True, kw_only=True)
    class Cfg:
        pass

    @DEFENSES.register("my-noop")
    class Noop(Defense):
        """Does nothing."""
        Config = Cfg
        def apply(self, model, view, cfg, *, generator):
            return DefenseResult(model=model)
''')


def _bench(cache, *argv) -> subprocess.CompletedProcess:
    """``bench`` in a fresh process, as a user runs it one command after another (this checkout's code), with the
    test session's model cache (the released model is the session's, not built again here)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", BENCH_CACHE_DIR=str(cache.root))
    return subprocess.run([sys.executable, "-m", "bench", *map(str, argv)], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1], timeout=600)


def _run_json(results: Path) -> dict:
    (directory,) = [p for p in results.iterdir() if (p / "run.json").is_file()]
    return json.loads((directory / "run.json").read_text())


def test_editing_a_plugin_file_reruns_its_runs_instead_of_reusing_the_old_numbers(tmp_path, cache):
    """A new user's report: after editing a plugin, re-running into the same folder printed "1 already done" with
    the numbers of the old code."""
    plugin, results = tmp_path / "mydef.py", tmp_path / "results"
    plugin.write_text(PLUGIN)
    argv = ["run", "--plugin", plugin, "--defense", "my-noop", "--task", "vision-digits", "--attack", "full-ft",
            "--no-baseline", "--results", results, "--quiet", "--jobs", "1", "task.budget=20",
            "task.curvature_iters=0", "task.bootstrap=0"]
    first = _bench(cache, *argv)
    assert first.returncode == 0, first.stderr
    recorded = _run_json(results)
    mine = [p for p in recorded["fingerprint"]["plugins"] if p["name"] == "my-noop"]
    assert len(mine) == 1 and mine[0]["hash"] and not mine[0]["builtin"] and recorded["stale"] is False
    assert set(recorded["fingerprint"]["libraries"]) == set(fingerprint.LIBRARIES)

    plugin.write_text(PLUGIN.replace("return DefenseResult(model=model)", "return DefenseResult(model=model)  # v2"))
    edited = _bench(cache, *argv)
    assert edited.returncode == 0, edited.stderr
    assert "1 run(s) re-run: defense 'my-noop' source changed" in edited.stdout
    assert "1 runs (0 already done)" in edited.stdout
    rerun = _run_json(results)
    assert [p["hash"] for p in rerun["fingerprint"]["plugins"] if p["name"] == "my-noop"] != [mine[0]["hash"]]
    assert rerun["started_at"] >= recorded["started_at"] and rerun["wall_seconds"] != recorded["wall_seconds"]

    plugin.write_text(PLUGIN.replace("return DefenseResult(model=model)", "return DefenseResult(model=model)  # v3"))
    kept = _bench(cache, *argv, "--allow-stale")
    assert "1 runs (1 already done)" in kept.stdout
    assert "1 run(s) kept although their code changed" in kept.stdout and "'my-noop' source changed" in kept.stdout
    stale = _run_json(results)
    assert stale["stale"] is True and stale["stale_reasons"] == ["defense 'my-noop' source changed"]
    assert stale["fingerprint"] == rerun["fingerprint"]  # the kept run still says which code made it


def _spec():
    return make_spec(task="vision-digits", defense="none", attack="full-ft")


def test_a_run_of_the_current_code_has_no_changes_and_each_difference_is_named(isolated_registries):
    current = code_fingerprint(_spec())
    assert changes(json.loads(json.dumps(current)), current) == []
    assert {p["kind"] for p in current["plugins"]} == {"task", "defense", "attack"}
    assert all(p["builtin"] and p["hash"] for p in current["plugins"])
    assert changes(None, current) == ["no code fingerprint recorded (made by an older bench)"]
    older = json.loads(json.dumps(current))
    older["harness"] = "0.0+0000"
    older["libraries"]["torch"] = "1.0"
    older["plugins"][2]["hash"] = "deadbeef"
    assert changes(older, current) == ["the harness's source changed", "attack 'full-ft' source changed",
                                       f"torch 1.0 -> {current['libraries']['torch']}"]


def test_resume_messages_count_runs_and_reasons():
    lines = resume_lines({"a": ["defense 'x' source changed"], "b": ["defense 'x' source changed"]}, {})
    assert lines == ["2 run(s) re-run: defense 'x' source changed (--allow-stale keeps such runs, marked stale)"]
    (line,) = resume_lines({}, {"a": ["torch 1 -> 2"], "b": ["torch 1 -> 2", "the harness's source changed"]})
    assert line.startswith("2 run(s) kept") and "torch 1 -> 2 (2); the harness's source changed (1)" in line


def test_the_stage_cache_and_run_provenance_key_on_one_library_list():
    assert stage_cache.LIBRARIES is fingerprint.LIBRARIES
    assert stage_cache.library_versions is fingerprint.library_versions
    assert set(fingerprint.LIBRARIES) <= set(provenance.library_versions())
    assert list(provenance.library_versions()) == ["python", *fingerprint.LIBRARY_ROLES]  # one list, recorded whole
    assert not hasattr(provenance, "LIBRARIES")  # no second list


def test_a_dry_run_lists_a_completed_run_of_other_code_as_stale(tmp_path, isolated_registries):
    from bench.exec.sweep_run import run_states
    from bench.run import results

    spec, other = _spec(), make_spec(task="vision-digits", defense="none", attack="full-ft", seed=1)
    for run, fp in ((spec, code_fingerprint(spec)), (other, {**code_fingerprint(other), "harness": "0.0+old"})):
        results.write_run(tmp_path / run.run_id, {"run_id": run.run_id, "status": "success", "spec": run.to_json(),
                                                  "fingerprint": fp}, results.to_table({"run_id": run.run_id}, []))
    states = run_states(tmp_path, [spec.run_id, other.run_id], {s.run_id: s for s in (spec, other)})
    assert states == {spec.run_id: "done", other.run_id: "stale"}


def test_a_tuned_preset_is_config_not_code_of_its_defense_package(tmp_path, monkeypatch):
    """Writing ``defenses/tuned/<d>.yaml`` (``bench tune --write-preset``) must not make every built-in defense's
    results and stages stale: the presets folder is left out of the package's digest, the package's code is not."""
    package = tmp_path / "mydefs"
    (package / "tuned").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "helper.py").write_text("X = 1\n")
    (package / "noop.py").write_text(PLUGIN.replace("my-noop", "my-noop-packaged"))
    (package / "tuned" / "my-noop-packaged.yaml").write_text("tuned-x:\n  args: {}\n")
    monkeypatch.setenv("BENCH_TUNED_PRESETS", str(package / "tuned"))
    monkeypatch.syspath_prepend(str(tmp_path))
    from bench.registry import REGISTRIES
    state = REGISTRIES["defenses"].snapshot()
    try:
        import importlib
        cls = importlib.import_module("mydefs.noop").Noop
        root, files = fingerprint.plugin_files(cls)
        assert {p.relative_to(root).as_posix() for p in files} == {"__init__.py", "helper.py", "noop.py"}
    finally:
        REGISTRIES["defenses"].restore(state)
        sys.modules.pop("mydefs.noop", None)
        sys.modules.pop("mydefs", None)

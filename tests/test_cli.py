"""The ``bench`` command end to end: run → results → leaderboard, plugins, and clear errors with exit codes."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import textwrap

import pandas as pd
import pytest

from bench.cli import main
from bench.run.results import SCHEMA, read_metrics

QUICK = ["task.budget=30", "task.curvature_iters=0", "task.bootstrap=50"]


def run_cli(*argv):
    return main([str(a) for a in argv])


SINGLE = ("run", "--defense", "specdef", "--task", "vision-digits", "--attack", "full-ft", "optimizer=adam", "lr=1e-2",
          "--quiet", "--jobs", "1", *QUICK)
"""One attack on specdef and (by default) its baseline: the run the tests of a results folder start from."""


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, cache):
    """``bench run SINGLE`` once for this module: its exit code, its output and its results folder, which each test
    copies (tests write to the folder)."""
    results = tmp_path_factory.mktemp("single") / "results"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run_cli(*SINGLE, "--results", results)
    return code, out.getvalue(), results


def _copy_of(single_run, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(single_run[2], results)
    return results


def test_run_single_attack_then_leaderboard(tmp_path, capsys, single_run):
    code, out, _ = single_run
    results = _copy_of(single_run, tmp_path)
    assert code == 0
    assert "worst-case steps-to-harm" in out and "specdef" in out and "none" in out
    table = read_metrics(results)
    assert table.schema.equals(SCHEMA)
    assert set(table.to_pandas()["defense"]) == {"none", "specdef"}  # the baseline runs by default

    code = run_cli("leaderboard", "--results", results)
    out = capsys.readouterr().out
    assert code == 0
    assert "| Defense | Worst-case steps-to-harm |" in out and "| specdef |" in out
    task_page = next((results / "site").glob("task-vision-digits-*.html")).read_text()
    assert "<table class='sortable board' id='board'>" in task_page and "specdef" in task_page
    assert task_page.count("<img src='img/") == 4  # harm curves, utility vs resistance, attacker cost, forest plot
    assert run_cli("leaderboard", "--results", results, "--format", "parquet") == 0
    board = pd.read_parquet(results / "leaderboard.parquet")
    assert set(board["defense_label"]) == {"none", "specdef"}
    row = board.set_index("defense_label").loc["none"]
    assert row["ratio"] == 1.0 and row["n_runs"] == 1

    run_id = json.loads(next(results.glob("*/run.json")).read_text())["run_id"]
    assert run_cli("show", run_id, "--results", results) == 0
    assert "outcome:" in capsys.readouterr().out
    assert run_cli("show", results) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_default_suite_end_to_end(tmp_path, capsys):
    # --no-baseline: the suite's ~130 runs once, not twice (test_run_single_attack_then_leaderboard shows the
    # baseline runs by default; the suite is the same code for either defense)
    code = run_cli("run", "--defense", "specdef", "--task", "vision-digits", "--results", tmp_path, "--quiet",
                   "--no-refine", "--no-baseline", "task.budget=20", "task.curvature_iters=0", "task.bootstrap=0")
    out = capsys.readouterr().out
    assert code == 0
    assert "per attack family" in out and "full-ft(optimizer=sgd)" in out and "adaptive-collapse" in out
    runs = read_metrics(tmp_path).to_pandas().drop_duplicates("run_id")
    from tasks.vision.task import VisionConfig, VisionDigits

    sweeps = VisionDigits().default_attacks(VisionConfig(), "tiny")
    assert set(runs["defense"]) == {"specdef"}
    assert len(runs) == sum(len(s.lrs) for s in sweeps)  # every per-decade point of every family
    assert set(runs["knowledge"]) == {"blind", "white-box"}
    assert runs["attack_family"].nunique() == len(sweeps)


def test_html_escapes_user_strings(tmp_path, capsys, isolated_registries):
    plugin = tmp_path / "evil.py"
    plugin.write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from bench.contracts import Defense, DefenseResult
        from bench.registry import DEFENSES

        @dataclass(frozen=True, kw_only=True)
        class Cfg:
            note: str = "x"

        @DEFENSES.register("evil-defense")
        class Evil(Defense):
            Config = Cfg
            def apply(self, model, view, cfg, *, generator):
                return DefenseResult(model=model)
    '''))
    results = tmp_path / "results"
    assert run_cli("run", "--plugin", plugin, "--defense", "evil-defense", "note=<script>alert(1)</script>",
                   "--task", "vision-digits", "--attack", "full-ft", "--results", results, "--quiet",
                   "--no-baseline", "--jobs", "1", *QUICK) == 0
    capsys.readouterr()
    assert run_cli("leaderboard", "--results", results) == 0
    html = next((results / "site").glob("defense-evil-defense-*.html")).read_text()  # the config value's page
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_plugin_file_defense_runs_and_crashing_plugin_fails_clearly(tmp_path, capsys, isolated_registries):
    plugin = tmp_path / "my_defenses.py"
    plugin.write_text(textwrap.dedent('''
        """Two defenses written by a user."""
        from dataclasses import dataclass
        from bench.contracts import Defense, DefenseResult
        from bench.registry import DEFENSES

        @dataclass(frozen=True, kw_only=True)
        class Cfg:
            pass

        @DEFENSES.register("noop-user")
        class Noop(Defense):
            """Does nothing."""
            Config = Cfg
            def apply(self, model, view, cfg, *, generator):
                return DefenseResult(model=model)

        @DEFENSES.register("crash-user")
        class Crash(Defense):
            """Always crashes."""
            Config = Cfg
            def apply(self, model, view, cfg, *, generator):
                raise RuntimeError("user defense crashed on purpose")
    '''))
    results = tmp_path / "results"
    assert run_cli("ls", "defenses", "--plugin", plugin) == 0
    assert "noop-user" in capsys.readouterr().out
    # In this process (--jobs 1) the plugin's defense runs; then the crash runs in the default worker processes,
    # which load the plugin file themselves; the last call's output is the point, in-process again. (Each worker
    # start imports torch and the tasks: one worker call, not three.)
    assert run_cli("run", "--plugin", plugin, "--defense", "noop-user", "--task", "vision-digits", "--attack", "full-ft",
                   "--results", results, "--quiet", "--jobs", "1", *QUICK) == 0
    capsys.readouterr()
    code = run_cli("run", "--plugin", plugin, "--defense", "crash-user", "--task", "vision-digits", "--attack", "full-ft",
                   "--results", results, "--quiet", *QUICK)
    captured = capsys.readouterr()
    assert code == 1
    assert "RuntimeError: user defense crashed on purpose" in captured.err
    assert "FAILED" in captured.out  # the summary names the failed run
    statuses = read_metrics(results).to_pandas().drop_duplicates("run_id")["status"].value_counts()
    assert statuses["failed"] == 1 and statuses["success"] == 2  # earlier runs are kept
    # when every run of a call fails, the summary still prints and names them
    code = run_cli("run", "--plugin", plugin, "--defense", "crash-user", "--task", "vision-digits", "--attack", "full-ft",
                   "lr=1e-4", "--no-baseline", "--results", tmp_path / "only-failures", "--quiet", "--jobs", "1", *QUICK)
    captured = capsys.readouterr()
    assert code == 1 and "FAILED" in captured.out and "Traceback" not in captured.err


@pytest.mark.parametrize("argv, fragment", [
    (["run", "--defense", "specdf", "--task", "vision-digits"], "Did you mean 'specdef'"),
    (["run", "--defense", "specdef", "--task", "vison-digits"], "Did you mean 'vision-digits'"),
    (["run", "--defense", "specdef", "alpah=3", "--task", "vision-digits"], "unknown config key 'alpah'"),
    (["run", "--defense", "specdef", "alpha=big", "--task", "vision-digits"], "bad value for 'alpha'"),
    (["run", "--defense", "specdef", "--task", "vision-digits", "--config", "/no/such.yaml"], "config file not found"),
    (["run", "--defense", "specdef", "--task", "vision-digits", "--plugin", "/no/such.py"], "plugin file not found"),
    (["run", "--defense", "specdef", "--task", "vision-digits", "--tier", "real"], "needs --model"),
    (["show", "nonexistent-run"], "no run 'nonexistent-run'"),
    (["leaderboard", "--results", "/no/such/results"], "does not exist"),
    (["run", "--defense", "specdef", "--task", "vision-digits", "--attack", "full-ft", "task.tau=2", *QUICK],
     "tau must be in (0, 1]"),
])
def test_bad_input_gives_a_clear_error_and_exit_2(argv, fragment, capsys):
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_validate(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("task: vision-digits\ndefense: {name: specdef, args: {alpha: 1.0e5}}\nseeds: [0, 1]\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: vision-digits\ndefense: {name: specdef, args: {alfa: 3}}\n")
    assert run_cli("validate", good) == 0
    assert run_cli("validate", good, bad) == 2
    assert "unknown config key 'alfa'" in capsys.readouterr().out
    worse = tmp_path / "worse.yaml"  # every error of a file, each on its own line
    worse.write_text("task: {name: vision-digits, args: {tau: high}}\n"
                     "defense: {name: specdef, args: {alfa: 3, k: many}}\nattack: {name: full-ft, args: {lr: -1}}\n")
    assert run_cli("validate", worse) == 2
    lines = capsys.readouterr().out.splitlines()
    assert all(line.startswith(f"error {worse}: ") for line in lines)
    for fragment in ("'tau'", "unknown config key 'alfa'", "'k'", "lr must be positive"):
        assert sum(fragment in line for line in lines) == 1, (fragment, lines)
    assert len(lines) == 4


def test_ls_lists_every_kind(capsys):
    for kind, expected in [("defenses", "specdef"), ("attacks", "full-ft"), ("tasks", "vision-digits")]:
        assert run_cli("ls", kind) == 0
        assert expected in capsys.readouterr().out
    assert run_cli("ls", "defenses", "spec*", "-v") == 0
    out = capsys.readouterr().out
    assert "alpha (float, default 10000.0)" in out and "preset specdef.a1e4-k25" in out
    assert run_cli("ls", "attacks", "text-encoder", "-v") == 0
    assert "applies to: generation tasks" in capsys.readouterr().out


def _two_family_suite(self, cfg, tier):
    """A default suite of two families of three learning rates (the real one has ~130 runs): `--search` decides how
    each is searched."""
    from bench.contracts import AttackFamily

    return [AttackFamily("full-ft", {"optimizer": "adam"}, (1e-1, 1e-2, 1e-3), family="adam"),
            AttackFamily("full-ft", {"optimizer": "sgd"}, (1e-1, 1e-2, 1e-3), family="sgd")]


def test_lr_search_records_probe_runs_outside_the_worst_case(tmp_path, capsys, monkeypatch):
    from tasks.vision.task import VisionDigits

    monkeypatch.setattr(VisionDigits, "default_attacks", _two_family_suite)  # the CLI flag's effect, not the suite's
    code = run_cli("run", "--defense", "none", "--task", "vision-digits", "--results", tmp_path, "--quiet",
                   "--search", "lr-search", "--no-refine", "--jobs", "1", "task.budget=30", "task.curvature_iters=0",
                   "task.bootstrap=0")
    out = capsys.readouterr().out
    assert code == 0 and "LR-search probe runs" in out
    runs = read_metrics(tmp_path).to_pandas().drop_duplicates("run_id")
    probes, full = runs[runs["purpose"] == "lr-probe"], runs[runs["purpose"] == "attack"]
    assert len(probes) == 6 and len(full) == 4  # every rate probed, the best 2 (keep) of each family run in full
    assert run_cli("leaderboard", "--results", tmp_path, "--format", "parquet") == 0
    board = pd.read_parquet(tmp_path / "leaderboard.parquet").iloc[0]
    assert board["n_runs"] == len(full) and board["n_probe_runs"] == len(probes)


def test_bad_input_found_while_building_stops_before_any_run(tmp_path, capsys):
    code = run_cli("run", "--defense", "specdef", "layers=*.q_proj", "--task", "vision-digits", "--results", tmp_path,
                   "--quiet", *QUICK)
    err = capsys.readouterr().err
    assert code == 2 and "no layer matches" in err and "Traceback" not in err
    assert not list(tmp_path.glob("*/run.json"))  # no pile of identical failed runs


@pytest.mark.parametrize("where", ["under-a-file", "read-only"])
def test_unwritable_results_directory_fails_before_any_model_is_built(where, tmp_path, capsys, monkeypatch):
    from tasks.vision.task import VisionDigits

    if where == "under-a-file":
        (tmp_path / "file").write_text("")
        results = tmp_path / "file" / "results"
    else:
        if os.geteuid() == 0:
            pytest.skip("root can write into a read-only directory")
        (tmp_path / "ro").mkdir(mode=0o555)
        results = tmp_path / "ro" / "results"
    builds = []
    monkeypatch.setattr(VisionDigits, "build", lambda self, *a, **kw: builds.append(1))
    code = run_cli("run", "--defense", "specdef", "--task", "vision-digits", "--attack", "full-ft",
                   "--results", results, "--quiet", *QUICK)
    err = capsys.readouterr().err
    assert code == 2 and f"cannot write results to {results}" in err and "Traceback" not in err
    assert not builds


def test_quiet_silences_every_progress_bar(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # the test session's default; --quiet must not rely on it
    for quiet, release_steps in [(False, 3), (True, 4)]:  # a fresh (cheap) released model each time: it is built
        code = run_cli("run", "--defense", "none", "--task", "vision-digits", "--attack", "full-ft", "optimizer=adam",
                       "lr=1e-2", "--results", tmp_path / str(quiet), *(["--quiet"] if quiet else []),
                       f"task.release_steps={release_steps}", *QUICK)  # one run: the bars, not a learning-rate grid
        err = capsys.readouterr().err
        assert code == 0
        bars = "building released vision-digits model" in err, "vision-digits runs" in err
        assert bars == ((False, False) if quiet else (True, True)), err


def test_validate_a_sweep_where_no_combination_applies_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "none-apply.yaml"  # rmu unlearns language models: it applies to no vision task
    path.write_text("tasks: [vision-digits]\ndefenses: [rmu]\nattacks: [full-ft]\nbaseline: false\n")
    assert run_cli("validate", path) == 2
    out = capsys.readouterr().out
    assert "no combination of this sweep applies" in out and "rmu" in out and "Traceback" not in out


@pytest.mark.parametrize("key", ["baseline", "refine"])
def test_experiment_booleans_are_strict(tmp_path, capsys, key):
    path = tmp_path / "quoted.yaml"  # bool("false") is True: a quoted false must not silently mean true
    path.write_text(f"task: vision-digits\ndefense: specdef\n{key}: 'false'\n")
    assert run_cli("validate", path) == 2
    assert f"{key} must be true or false, got str 'false'" in capsys.readouterr().out


@pytest.mark.parametrize("higher, factor, ok", [(True, 0.5, True), (True, 2.0, False), (False, 2.0, True),
                                                (False, 0.5, False), (False, 1.0, True)])
def test_usable_floor_must_admit_the_released_model(higher, factor, ok):
    from types import SimpleNamespace

    from bench.errors import ConfigError
    from bench.run.stage_measure import check_usable_floor

    task = SimpleNamespace(name="t", utility_metric="nll", utility_higher_is_better=higher,
                           config=SimpleNamespace(usable_factor=factor))
    if ok:
        check_usable_floor(task)
    else:
        with pytest.raises(ConfigError, match="usable_factor"):
            check_usable_floor(task)


def test_a_truncated_run_is_skipped_with_a_warning_and_rerun_on_resume(tmp_path, capsys, monkeypatch, single_run):
    assert single_run[0] == 0
    results = _copy_of(single_run, tmp_path)
    argv = (*SINGLE, "--results", results)
    from bench.run.results import CorruptRunWarning, completed_run_ids

    done = completed_run_ids(results)
    victim = sorted(done)[0]
    metrics = results / victim / "metrics.parquet"
    metrics.write_bytes(metrics.read_bytes()[:100])  # a disk that filled up mid-copy, say
    assert completed_run_ids(results) == done - {victim}
    with pytest.warns(CorruptRunWarning, match=victim):
        assert run_cli("leaderboard", "--results", results, "--format", "md") == 0
    assert "Traceback" not in capsys.readouterr().err
    assert run_cli(*argv) == 0  # resume: the unreadable run runs again, the other is kept
    assert completed_run_ids(results) == done
    assert len(read_metrics(results).to_pandas().drop_duplicates("run_id")) == 2

    from bench.run import results as results_module  # reading some runs opens only their files, not all

    opened, real_read = [], results_module.read_metrics_file
    monkeypatch.setattr(results_module, "read_metrics_file", lambda path: opened.append(path) or real_read(path))
    table = read_metrics(results, run_ids=[victim]).to_pandas()
    assert set(table["run_id"]) == {victim} and len(opened) == 1


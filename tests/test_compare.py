"""`bench compare`: a plugin defense next to the baselines, results reused on the second call, clear errors."""

from __future__ import annotations

import pytest

from bench.apps.compare import default_baselines
from bench.cli import main

QUICK = ["task.budget=30", "task.curvature_iters=0", "task.bootstrap=50"]


@pytest.fixture
def plugin(noop_plugin):
    return noop_plugin


def run_cli(*argv):
    return main([str(a) for a in argv])


def test_compare_runs_the_plugin_and_the_baselines_then_reuses_them(tmp_path, plugin, capsys):
    results = tmp_path / "results"
    argv = ["compare", "--plugin", plugin, "--defense", "mine", "--task", "vision-digits", "--attack", "full-ft",
            "optimizer=adam", "lr=1e-2", "--baselines", "none", "--seeds", "0", "--results", results, "--quiet",
            "--jobs", "1", *QUICK]
    assert run_cli(*argv) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert any(line.startswith("| **mine** |") for line in table), out  # the new defense, highlighted
    assert any(line.startswith("| none |") for line in table), out
    assert "2 runs (0 already done, 2 run now)" in out
    assert (results / "site" / "index.html").is_file() and (results / "site" / "leaderboard.parquet").is_file()
    written = {p: p.stat().st_mtime_ns for p in results.glob("*/run.json")}
    assert len(written) == 2

    assert run_cli(*argv) == 0  # the second call runs nothing: every run is in the results folder
    out = capsys.readouterr().out
    assert "2 runs (2 already done, 0 run now)" in out
    assert "| **mine** |" in out and "| none |" in out
    assert {p: p.stat().st_mtime_ns for p in results.glob("*/run.json")} == written


def test_dry_run_plans_every_builtin_baseline_and_runs_nothing(tmp_path, plugin, capsys):
    assert run_cli("compare", "--plugin", plugin, "--defense", "mine", "--task", "vision-digits", "--attack",
                   "full-ft", "lr=1e-2", "--seeds", "0", "--results", tmp_path / "results", "--dry-run") == 0
    out = capsys.readouterr().out
    for name in ("mine", *default_baselines("vision-digits")):
        assert f":defense={name},attack=full-ft" in out, name
    assert "+" not in "".join(default_baselines()) and "none" in default_baselines()
    assert "condnum" in default_baselines("vision-digits") and "rmu" not in default_baselines("vision-digits")
    assert not (tmp_path / "results").exists()


def test_bad_baseline_name_is_a_clear_error(tmp_path, plugin, capsys):
    code = run_cli("compare", "--plugin", plugin, "--defense", "mine", "--task", "vision-digits", "--baselines",
                   "none,specdf", "--results", tmp_path, "--dry-run")
    err = capsys.readouterr().err
    assert code == 2 and "Did you mean 'specdef'" in err and "Traceback" not in err

"""Sweep files: expansion (cartesian product, presets, one baseline, duplicates collapsed), validation that reports
every error at once, ``bench sweep --dry-run`` against the results folder, and ``bench sweep`` end to end."""

from __future__ import annotations

import re
import textwrap

import pytest

from bench.cli import main
from bench.contracts import AttackFamily
from bench.errors import ConfigError
from bench.exec.sweep_run import sweep_run_ids
from bench.plan.sweep import expand, load_sweep, plan, plan_file
from bench.run.results import SCHEMA, read_metrics

QUICK_TASK = "{name: vision-digits, args: {budget: 20, curvature_iters: 0, bootstrap: 0}}"


def write(tmp_path, text, name="grid.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def run_cli(*argv):
    return main([str(a) for a in argv])


def test_expansion_is_the_cartesian_product_with_one_baseline_and_duplicates_collapsed(tmp_path):
    path = write(tmp_path, """
        tasks: [{name: vision-digits, args: {budget: 20}}, {name: vision-digits, args: {budget: 30}}]
        defenses: [none, specdef, specdef.a1e4-k25, {name: specdef, args: {alpha: 1.0e6, dtype: float64}}]
        attacks: [{name: full-ft, args: {optimizer: adam, lr: 1.0e-2}}, {name: full-ft, args: {lr: 0.1}}]
        seeds: [0, 1]
    """)
    sweep = load_sweep(path)
    assert sweep.tiers == ("tiny",) and sweep.baseline and sweep.seeds == (0, 1)
    # 2 tasks × 1 tier × 2 attacks × (baseline none + 4 defense entries), nothing resolved yet
    assert len(expand(sweep)) == 2 * 2 * 5
    result = plan(sweep)
    # `none` listed explicitly and the a1e4-k25 preset (= specdef's defaults) run the same runs as the baseline and
    # `specdef`: they collapse, so each (task, attack) runs none, specdef and specdef(alpha=1e6) once
    assert len(result.suites) == 2 * 2 * 3 and len(result.collapsed) == 2 * 2 * 2
    assert all("specdef.a1e4-k25" in where or "× none ×" in where for where, _ in result.collapsed)
    assert all(not r.baseline for r in result.requests)  # the baseline is a request of its own, not one per defense
    runs = [spec for planned in result.suites for spec in planned.runs]
    assert len(runs) == len({spec.run_id for spec in runs}) == 12 * 2  # one run per suite and seed, no duplicates
    assert sum(spec.defense.name == "none" for spec in runs) == 2 * 2 * 2
    assert {(spec.defense.name, spec.defense.kwargs.get("alpha")) for spec in runs} == {
        ("none", None), ("specdef", 1e4), ("specdef", 1e6)}
    assert {spec.task.kwargs["budget"] for spec in runs} == {20, 30}

def test_validate_reports_every_error_of_a_grid_at_once(tmp_path, capsys):
    path = write(tmp_path, """
        tasks: [visoin-digits, {name: vision-digits, args: {tau: high}}, {name: vision-digits, modle: x}, vision-digits]
        tiers: [tiny, real]
        defenses: [specdf, {name: specdef, args: {alfa: 3}}, specdef.a1e4-k52, specdef]
        attacks: [default, {name: full-ft, args: {lr: -1}}, {name: default, args: {grad_clip: -3}}]
        seeds: [0, -1]
        baseline: maybe
        extra: 1
    """)
    assert run_cli("validate", path) == 2
    lines = capsys.readouterr().out.splitlines()
    assert all(line.startswith(f"error {path}: ") for line in lines), lines
    expected = [
        "sweep file: unknown key 'extra'",
        "sweep file: tasks[2]: unknown key 'modle'. Did you mean 'model'?",
        "seeds must be non-negative integers",
        "baseline must be true or false",
        "tasks[0]: unknown task 'visoin-digits'. Did you mean 'vision-digits'?",
        "tasks[1]: bad value for 'tau'",
        "defenses[0]: unknown defense 'specdf'. Did you mean 'specdef'",
        "defenses[1]: unknown config key 'alfa' for defense 'specdef'. Did you mean 'alpha'?",
        "defenses[2]: unknown preset of defense 'specdef' 'specdef.a1e4-k52'. Did you mean 'specdef.a1e4-k25'",
        "attacks[1]: lr must be positive",
        # combinations of valid entries: the default suite's args, and a real tier without a model, each reported
        # once with the number of combinations it affects
        "vision-digits (tiny) × none (baseline) × default(grad_clip=-3): grad_clip must be >= 0",
        "vision-digits (real) × none (baseline) × default: tier 'real' needs a model",
    ]
    for fragment in expected:
        assert sum(fragment in line for line in lines) == 1, (fragment, lines)
    assert len(lines) == len(expected)
    assert "(and 1 more combination(s))" in lines[-2] and "(and 3 more combination(s))" in lines[-1]


def test_sweep_and_experiment_files_point_at_each_other(tmp_path, capsys):
    sweep = write(tmp_path, f"tasks: [{QUICK_TASK}]\ndefenses: [specdef]\n", "sweep.yaml")
    experiment = write(tmp_path, "task: vision-digits\ndefense: specdef\n", "experiment.yaml")
    assert run_cli("run", "--config", sweep) == 2
    assert f"is a sweep file (it has tasks:/defenses:), not an experiment: run it with `bench sweep {sweep}`" in \
        capsys.readouterr().err
    assert run_cli("sweep", experiment, "--dry-run") == 2
    assert f"{experiment} is an experiment file (it has no tasks:/defenses:): run it with `bench run --config " \
        f"{experiment}`" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="model is only used by tiers other than tiny"):
        plan_file(write(tmp_path, "tasks: [vision-digits]\ndefenses: [specdef]\nmodel: ./m\n"))


def test_bad_grid_stops_bench_sweep_before_any_run(tmp_path, capsys):
    path = write(tmp_path, f"tasks: [{QUICK_TASK}]\ndefenses: [specdef, {{name: specdef, args: {{alfa: 3}}}}]\n")
    assert run_cli("sweep", path, "--results", tmp_path / "results", "--quiet") == 2
    assert "unknown config key 'alfa'" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def _small_suite(self, cfg, tier):
    """A default suite with one family of each kind, so a real sweep of it takes seconds."""
    return [AttackFamily("full-ft", {"optimizer": "adam"}, (1e-1, 1e-3), family="adam"),
            AttackFamily("full-ft", {"optimizer": "sgd"}, (1e-1, 1e-2, 1e-3), family="sgd", search="lr-search",
                        probe_steps=5, keep=1),
            AttackFamily("adaptive-collapse", {"optimizer": "adam", "lr": 1e-2}, (), family="collapse")]


def _dry_run(path, results, capsys) -> tuple[str, dict[str, str]]:
    """The dry run's output and its listed runs as {run_id: state}."""
    assert run_cli("sweep", path, "--dry-run", "--results", results) == 0
    out = capsys.readouterr().out
    return out, {run_id: state for state, run_id in re.findall(r"^  (done|todo|failed) +([0-9a-f]{16})  ", out, re.M)}

def test_dry_run_then_sweep_then_dry_run_marks_every_listed_run_done(tmp_path, capsys, monkeypatch):
    from tasks.vision.task import VisionDigits

    monkeypatch.setattr(VisionDigits, "default_attacks", _small_suite)
    path = write(tmp_path, f"""
        tasks: [{QUICK_TASK}]
        defenses: [specdef, {{name: specdef, args: {{alpha: 1.0e6, dtype: float64}}}}]
        attacks: [default, {{name: full-ft, args: {{optimizer: adam, lr: 1.0e-2}}}}]
    """)
    results = tmp_path / "results"
    out, states = _dry_run(path, results, capsys)
    # per defense (none, specdef, specdef 1e6): the adam grid (2), the sgd probes (3), collapse (1), the single attack
    assert len(states) == 3 * (2 + 3 + 1 + 1) and set(states.values()) == {"todo"}
    # decided by results, per defense: 2 refinements of the adam grid, 1 full sgd run + its 2 refinements
    assert "lr-probe" in out and "up to 5 more run(s) chosen from results" in out
    assert "only the first wave is known: up to 15 more run(s)" in out
    assert "0 done, 21 to run" in out

    assert run_cli("sweep", path, "--results", results, "--quiet") == 0
    out = capsys.readouterr().out
    assert "vision-digits (tiny)" in out and "worst-case steps-to-harm" in out and "per attack family" in out
    table = read_metrics(results)
    assert table.schema.equals(SCHEMA)
    runs = table.to_pandas().drop_duplicates("run_id")
    assert set(runs["defense_label"]) == {"none", "specdef", "specdef(alpha=1e+06,dtype=float64)"}
    assert set(states) <= set(runs["run_id"])  # the dry run listed the runs the sweep did
    assert len(states) < len(runs) <= len(states) + 15
    assert f"{len(runs)} runs (0 already done) in 6 suites" in out

    out, states = _dry_run(path, results, capsys)
    assert set(states.values()) == {"done"} and "21 done, 0 to run" in out
    assert run_cli("sweep", path, "--results", results, "--quiet") == 0  # resumed: nothing runs again
    assert f"{len(runs)} runs ({len(runs)} already done)" in capsys.readouterr().out
    assert len(read_metrics(results).to_pandas().drop_duplicates("run_id")) == len(runs)

    # the runs of one sweep file among others in the folder: the planner replayed on the results finds them all
    ids, missing = sweep_run_ids(plan_file(path), results)
    assert sorted(ids) == sorted(runs["run_id"]) and missing == 0
    subset = write(tmp_path, f"""
        tasks: [{QUICK_TASK}]
        defenses: [specdef]
        attacks: [{{name: full-ft, args: {{optimizer: adam, lr: 1.0e-2}}}}]
    """, name="subset.yaml")
    assert len(sweep_run_ids(plan_file(subset), results)[0]) == 2  # none and specdef, the single attack
    assert run_cli("leaderboard", "--results", results, "--sweep", subset, "--format", "md") == 0
    board = capsys.readouterr().out
    assert "| specdef |" in board and "alpha=1e+06" not in board


def test_a_suite_that_stops_on_bad_input_does_not_stop_the_sweep(tmp_path, capsys):
    path = write(tmp_path, f"""
        tasks: [{QUICK_TASK}]
        defenses: [{{name: specdef, args: {{layers: ["*.q_proj"]}}}}, specdef]
        attacks: [{{name: full-ft, args: {{optimizer: adam, lr: 1.0e-2}}}}]
    """)
    # In this process (--jobs 1): the sweep's own handling is the point; test_cli's bad-input test finds the same
    # error in the default worker processes.
    assert run_cli("sweep", path, "--results", tmp_path, "--quiet", "--jobs", "1") == 2
    captured = capsys.readouterr()
    assert "suite stopped before its runs" in captured.err and "no layer matches" in captured.err
    assert "Traceback" not in captured.err
    runs = read_metrics(tmp_path).to_pandas().drop_duplicates("run_id")
    assert sorted(runs["defense_label"]) == ["none", "specdef"]  # the baseline and the valid defense still ran

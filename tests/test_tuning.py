"""Defender tuning (bench tune): declared search spaces, bad input, the selection rule, the Parquet record, resume,
tuned presets and budget curves."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from bench.apps.tuning import (
    REPORTED_SEEDS,
    TuneSpec,
    budget_candidates,
    candidates,
    check_spec,
    run_tuning,
    tunable_defenses,
)
from bench.cli import main
from bench.errors import ConfigError
from bench.plan.sweep import Entry
from bench.registry import DEFENSES
from bench.run.tuning_record import best_budget, read_tunings, select

TRAINED = ("tar", "ga-retain", "repnoise", "booster", "vaccine", "rmu", "npo", "condnum", "imma")
FAST_ATTACK = (Entry(name="full-ft", args={"optimizer": "muon", "lr": 0.1, "budget": 10}),)


def test_every_trained_defense_declares_a_search_space_over_its_own_config_keys():
    assert set(TRAINED) <= set(tunable_defenses())
    for name in TRAINED:
        space = DEFENSES.get(name).search_space
        keys = DEFENSES.get(name).Config.__dataclass_fields__
        assert space and all(key in keys and len(values) >= 2 for key, values in space.items()), name


def test_families_cut_the_default_validation_suite():
    from bench.apps.tuning import plan_tuning

    spec = TuneSpec(defense="ga-retain", task="vision-digits", space={"alpha": (1.0, 2.0)}, seeds=(100,))
    every = plan_tuning(spec, candidates(spec))
    cut = plan_tuning(TuneSpec(**{**spec.__dict__, "families": ("muon",)}), candidates(spec))
    families = {s.attack_family for planned in cut.suites for s in planned.runs}
    assert families == {"full-ft(optimizer=muon)"} or all("muon" in f for f in families)
    assert 0 < sum(len(p.runs) for p in cut.suites) < sum(len(p.runs) for p in every.suites) / 5


def test_candidates_are_the_product_of_the_space_over_the_base_args():
    spec = TuneSpec(defense="ga-retain", task="vision-digits", base_args={"steps": 5},
                    space={"alpha": (0.5, 2.0), "lr": (None, 1e-3)})
    assert candidates(spec) == [{"steps": 5, "alpha": 0.5, "lr": None}, {"steps": 5, "alpha": 0.5, "lr": 1e-3},
                                {"steps": 5, "alpha": 2.0, "lr": None}, {"steps": 5, "alpha": 2.0, "lr": 1e-3}]


@pytest.mark.parametrize("spec, message", [
    (TuneSpec(defense="specdef", task="vision-digits"), "declares no search space"),
    (TuneSpec(defense="ga-retain", task="vision-digits", space={"alhpa": (1.0, 2.0)}), "its keys: "),
    (TuneSpec(defense="condnum", task="llm-relearn"), "does not apply to task 'llm-relearn'"),
    (TuneSpec(defense="ga-retain", task="vision-digits", seeds=(0, 100)), "reported seeds"),
    (TuneSpec(defense="ga-retain", task="vision-digits", budgets=(4, 16)), "including 1"),
    (TuneSpec(defense="ga-retain", task="vision-digits", utility_limit=30), "utility limit"),
    (TuneSpec(defense="ga-retain", task="vision-digits", families=("muon", "adm")), "its families: sgd, adam"),
])
def test_bad_input_is_a_clear_error_naming_what_exists(spec, message):
    with pytest.raises(ConfigError, match=message) as err:
        check_spec(spec)
    text = str(err.value)
    assert "\n" not in text
    if "search space" in message:
        assert "ga-retain" in text and "tar" in text  # names the defenses that have one
    if "keys" in message:
        assert "alpha" in text and "alhpa" in text


def test_cli_bad_input_exits_2_with_one_line(capsys):
    assert main(["tune", "--defense", "ga-retain", "--task", "vision-digits", "--space", "nope=1,2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'nope'" in err and "alpha" in err


def _row(candidate, usable, bounded, worst, retained=0.9, passes=100.0):
    return {"candidate": candidate, "usable_at_release": usable, "bounded_score": bounded, "worst_score": worst,
            "retained_release": retained, "fb_passes": passes}


def test_selection_rule_skips_unusable_candidates_then_orders_by_bounded_worst_retained_and_cost():
    table = pd.DataFrame([_row(0, False, math.inf, 500), _row(1, True, 20, 30), _row(2, True, 20.5, 10)])
    assert select(table) == 2  # censored at 20 (> 20) beats harmed at 20; the unusable one never wins
    table = pd.DataFrame([_row(0, True, math.inf, 15), _row(1, True, math.inf, 20, retained=0.5)])
    assert select(table) == 1  # bound empty for both: the unbounded worst case decides
    table = pd.DataFrame([_row(0, True, 15, 15, passes=800), _row(1, True, 15, 15, passes=200)])
    assert select(table) == 1  # a tie costs the defender less at fewer passes
    table = pd.DataFrame([_row(0, True, 15, 15, passes=200), _row(1, True, 15, 15, passes=800, retained=0.97)])
    assert select(table) == 1 and select(table, cost_first=True) == 0  # budget curves: compute buying nothing loses
    assert select(pd.DataFrame([_row(0, False, 30, 30)])) is None


def test_budget_candidates_scale_todays_training_length_and_best_budget_respects_the_cost_cap():
    spec = TuneSpec(defense="tar", task="vision-digits", base_args={"tr_scale": 2.0}, budgets=(16, 1, 4))
    assert budget_candidates(spec, 27) == [{"tr_scale": 2.0}, {"tr_scale": 2.0, "steps": 108},
                                           {"tr_scale": 2.0, "steps": 432}]
    points = pd.DataFrame([{**_row(0, True, 10, 10, passes=400), "budget_factor": 1.0},
                           {**_row(1, True, 15, 15, passes=1600), "budget_factor": 4.0},
                           {**_row(2, True, 40, 40, passes=6400), "budget_factor": 16.0}])
    assert best_budget(points, 4)["budget_factor"] == 4.0
    assert best_budget(points, 16)["budget_factor"] == 16.0
    assert best_budget(points, 0.5) is None


def test_tuning_runs_records_selects_resumes_and_writes_a_preset(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BENCH_TUNED_PRESETS", str(tmp_path / "tuned"))
    results = tmp_path / "results"
    argv = ["tune", "--defense", "ga-retain", "steps=20", "--task", "vision-digits", "--space", "alpha=0.5,2",
            "--seeds", "100", "--attack", "full-ft", "optimizer=muon", "lr=0.1", "budget=10", "--no-baseline",
            "--results", str(results), "--quiet", "--jobs", "1", "--write-preset"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "selected: candidate" in out and "preset written: --defense ga-retain.tuned-vision-digits" in out
    record = read_tunings(results, defense="ga-retain", task="vision-digits")
    assert len(record) == 2 and record["selected"].sum() == 1
    assert [json.loads(a) for a in record["args"]] == [{"alpha": 0.5, "steps": 20}, {"alpha": 2.0, "steps": 20}]
    assert (record["n_seeds"] == 1).all() and record["complete"].all() and (record["fb_passes"] == 40).all()
    assert set(record["validation_seeds"]) == {"100"} and not set(REPORTED_SEEDS) & {100}
    chosen = record[record["selected"]].iloc[0]
    assert select(record) == chosen["candidate"]
    assert "bench tune --defense ga-retain steps=20" in chosen["command"]
    # the selected config is now a preset of its defense, with the command that reproduces it
    resolved = DEFENSES.resolve("ga-retain.tuned-vision-digits")
    assert resolved.preset_args == json.loads(chosen["args"])
    written = (tmp_path / "tuned" / "ga-retain.yaml").read_text()
    assert "command: bench tune --defense ga-retain" in written and "tuned_from: ga-retain\n" in written
    # resume: the same command runs nothing again (every run.json stays as written)
    stamps = {p: p.stat().st_mtime_ns for p in results.glob("*/run.json")}
    assert len(stamps) == 2
    assert main(argv[:-1]) == 0
    assert {p: p.stat().st_mtime_ns for p in results.glob("*/run.json")} == stamps


def test_budget_curve_mode_trains_at_multiples_of_todays_steps(tmp_path):
    from bench.run.stages import Session
    from leaderboard.budgets import budget_figure, budget_points

    spec = TuneSpec(defense="ga-retain", task="vision-digits", base_args={"steps": 10}, seeds=(100,),
                    attacks=FAST_ATTACK, baseline=False, budgets=(1, 3))
    tuning = run_tuning(spec, lambda: Session(results_dir=tmp_path, progress=False))
    table = tuning.table.sort_values("budget_factor")
    assert table["budget_factor"].tolist() == [1.0, 3.0]
    assert table["steps"].tolist() == [10.0, 30.0] and table["fb_passes"].tolist() == [20.0, 60.0]
    points = budget_points(tmp_path)
    assert len(points) == 2
    fig = budget_figure(points, "vision-digits")
    assert len(fig.axes) == 2 and fig.axes[0].get_lines()
    assert budget_figure(points, "sd-style") is None


def test_tuned_presets_live_in_the_checkouts_defenses_folder(monkeypatch):
    """Without the override, ``--write-preset`` writes beside the built-in defenses, where the registry reads."""
    from pathlib import Path

    from bench.core.tuning_presets import tuned_dir
    monkeypatch.delenv("BENCH_TUNED_PRESETS", raising=False)
    assert tuned_dir() == Path(__file__).resolve().parents[1] / "defenses" / "tuned"


def test_tuning_a_preset_writes_its_own_preset_name():
    """Tuning ``tar`` and ``tar.sophon`` on one task must give two presets, not one written over the other."""
    from bench.core.tuning_presets import default_preset_name
    assert default_preset_name("tar", "vision-digits") == "tuned-vision-digits"
    assert default_preset_name("tar.sophon", "vision-digits") == "sophon-tuned-vision-digits"
    from bench.core.tuning_presets import tuned_from
    for defense in ("tar", "tar.sophon", "ga-retain"):  # the claims ledger reads a tuned row back to what it tuned
        assert tuned_from(f"{defense.partition('.')[0]}.{default_preset_name(defense, 'vision-digits')}") == defense
    assert tuned_from("my-tuned-x") == "my-tuned-x" and tuned_from("specdef.all-linear") == "specdef.all-linear"


def test_a_preset_records_what_it_tuned_and_the_claims_ledger_reads_it(tmp_path, monkeypatch):
    """A preset under a custom name answers to its method's claim because its record says what it tuned; a record
    written before ``tuned_from`` existed falls back to the name rule."""
    from bench.core.tuning_presets import load_tuned, tuned_base, tuned_chain, write_preset
    from leaderboard.claims import claim_key

    monkeypatch.setenv("BENCH_TUNED_PRESETS", str(tmp_path))
    common = {"task": "vision-digits", "tier": "tiny", "command": "bench tune ...", "tune_id": "x",
              "selected_from": "2 candidates"}
    write_preset("tar", "my-best", {"tr_scale": 4.0}, tuned_from="tar.sophon", **common)
    assert load_tuned("tar")["my-best"]["tuned_from"] == "tar.sophon"
    assert tuned_base("tar.my-best") == "tar.sophon"
    assert claim_key("tar.my-best") == "sophon" and claim_key("tar.my-best(tr_scale=4.0)") == "sophon"
    assert claim_key("tar") == "tar"
    # a budget preset of a tuned preset: the chain goes back through the records to the method
    write_preset("ga-retain", "tuned-vision-digits", {"alpha": 2.0}, tuned_from="ga-retain", **common)
    write_preset("ga-retain", "tuned-vision-digits-budget", {"alpha": 2.0, "steps": 40},
                 tuned_from="ga-retain.tuned-vision-digits", budget_factor=4, fb_passes=80, **common)
    assert tuned_chain("ga-retain.tuned-vision-digits-budget") == [
        "ga-retain.tuned-vision-digits-budget", "ga-retain.tuned-vision-digits", "ga-retain"]
    assert claim_key("ga-retain.tuned-vision-digits-budget") == "ga-retain"
    # written before tuned_from was recorded: the name rule
    legacy = tmp_path / "booster.yaml"
    legacy.write_text("sophon-tuned-vision-digits:\n  args: {lam: 5.0}\n")
    assert tuned_base("booster.sophon-tuned-vision-digits") == "booster.sophon"
    assert tuned_base("not a name.x") == "not a name.x"  # never read as a file path
    with pytest.raises(ConfigError, match="not a label of 'tar'"):
        write_preset("tar", "x", {}, tuned_from="ga-retain", **common)


def test_budget_preset_names_name_their_task_once():
    from bench.core.tuning_presets import default_budget_preset_name as name

    assert name("tar", "vision-digits") == "budget-vision-digits"
    assert name("ga-retain.tuned-vision-digits", "vision-digits") == "tuned-vision-digits-budget"
    assert name("tar.sophon", "vision-digits") == "sophon-budget-vision-digits"


@pytest.mark.parametrize("extra, message", [
    (["--budgets", "1,32"], "budget(s) 32x above the cost cap 16x"),
    (["--budgets", "1,4,16", "--cost-cap", "4"], "budget(s) 16x above the cost cap 4x"),
    (["--budgets", "1,4", "--cost-cap", "32"], "at most 16x today's training length"),
])
def test_budget_preset_beyond_the_cost_cap_is_a_one_line_error_naming_the_cap(extra, message, capsys, tmp_path):
    argv = ["tune", "--defense", "ga-retain", "--task", "vision-digits", "--results", str(tmp_path), *extra,
            "--write-preset"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert not (tmp_path / "tuning").exists()  # refused before anything was trained


def test_budget_curve_writes_its_best_budget_as_a_preset_keeping_the_tuned_args(tmp_path, monkeypatch, capsys):
    """A budget curve of a tuned preset writes the budget the leaderboard's rule picks within the cap, with the
    tuned values kept, steps pinned, and the budget factor and passes recorded."""
    from bench.core.tuning_presets import load_tuned, write_preset
    from bench.registry import DEFENSES
    from bench.run.tuning_record import COST_CAP
    from leaderboard.claims import claim_key

    monkeypatch.setenv("BENCH_TUNED_PRESETS", str(tmp_path / "tuned"))
    write_preset("ga-retain", "tuned-vision-digits", {"alpha": 2.0, "steps": 10}, task="vision-digits", tier="tiny",
                 command="bench tune ...", tune_id="x", selected_from="2 candidates", tuned_from="ga-retain")
    results = tmp_path / "results"
    argv = ["tune", "--defense", "ga-retain.tuned-vision-digits", "--task", "vision-digits", "--budgets", "1,2",
            "--seeds", "100", "--attack", "full-ft", "optimizer=muon", "lr=0.1", "budget=10", "--no-baseline",
            "--results", str(results), "--quiet", "--jobs", "1", "--write-preset"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "preset written: --defense ga-retain.tuned-vision-digits-budget" in out
    points = read_tunings(results, mode="budget")
    best = best_budget(points, COST_CAP)
    record = load_tuned("ga-retain")["tuned-vision-digits-budget"]
    assert record["budget_factor"] == best["budget_factor"] and record["fb_passes"] == best["fb_passes"]
    assert record["args"] == {"alpha": 2.0, "steps": int(10 * best["budget_factor"])}
    assert record["tuned_from"] == "ga-retain.tuned-vision-digits" and "within the 16x cost cap" in record["selected_from"]
    assert sorted(points["fb_passes"]) == [20.0, 40.0]
    assert DEFENSES.resolve("ga-retain.tuned-vision-digits-budget").preset_args == record["args"]
    assert claim_key("ga-retain.tuned-vision-digits-budget") == "ga-retain"


def test_leaderboard_rows_say_which_defender_budget_they_ran_at(tmp_path, monkeypatch, capsys):
    """Each row's defender budget: the passes its runs' training reports recorded, and the budget curve's factor
    where the row's preset records one (read from the record, whatever the preset's name)."""
    from bench.core.tuning_presets import write_preset

    monkeypatch.setenv("BENCH_TUNED_PRESETS", str(tmp_path / "tuned"))
    write_preset("ga-retain", "my-pick", {"steps": 15}, task="vision-digits", tier="tiny", command="bench tune ...",
                 tune_id="x", selected_from="2 budgets", tuned_from="ga-retain", budget_factor=1.5, fb_passes=30)
    results = tmp_path / "results"
    attack = ["--attack", "full-ft", "optimizer=muon", "lr=0.1", "budget=10", "--seeds", "100", "--results",
              str(results), "--quiet"]
    assert main(["run", "--task", "vision-digits", "--defense", "ga-retain.my-pick", *attack]) == 0
    assert main(["run", "--task", "vision-digits", "--defense", "ga-retain", "steps=10", "--no-baseline", *attack]) == 0
    board_md = tmp_path / "board.md"
    assert main(["leaderboard", "--results", str(results), "--format", "md", "--out", str(board_md)]) == 0
    capsys.readouterr()
    lines = board_md.read_text().splitlines()
    header = next(line for line in lines if line.startswith("| Defense |") and "Defender budget" in line)
    column = [c.strip() for c in header.split("|")].index("Defender budget")

    def cell(label: str) -> str:
        row = next(line for line in lines if line.startswith(f"| {label} |"))
        return [c.strip() for c in row.split("|")][column]

    assert cell("ga-retain.my-pick") == "30 passes (1.5× default, budget curve)"
    assert cell("ga-retain(steps=10)") == "20 passes"  # not from a budget curve: no factor claimed
    assert cell("none") == "—"  # an untrained defense reports no passes
    # the site: the task table and the preset's own page
    assert main(["leaderboard", "--results", str(results), "--out", str(tmp_path / "site")]) == 0
    capsys.readouterr()
    (task_page,) = (tmp_path / "site").glob("task-*.html")
    assert "30 passes (1.5× default, budget curve)</td>" in task_page.read_text()
    (page,) = (tmp_path / "site").glob("defense-ga-retain-my-pick*.html")
    assert "30 passes (1.5× default, budget curve)" in page.read_text()


def test_tuned_presets_read_as_pythons_safe_loader_reads_them_and_a_broken_file_is_a_clear_error(tmp_path,
                                                                                                 monkeypatch):
    """The presets are parsed with libyaml's loader (every resolved spec reads them): the same records, bit for bit,
    as PyYAML's own safe loader gives for every shipped file, and invalid YAML is still one clear error."""
    import yaml

    from bench.core.tuning_presets import load_tuned, tuned_dir

    shipped = sorted(tuned_dir().glob("*.yaml"))
    assert shipped
    for path in shipped:
        assert load_tuned(path.stem) == yaml.load(path.read_text(), Loader=yaml.SafeLoader), path.name
    monkeypatch.setenv("BENCH_TUNED_PRESETS", str(tmp_path))
    (tmp_path / "tar.yaml").write_text("tuned-x: {args: [unclosed\n")
    with pytest.raises(ConfigError, match=r"tar\.yaml: not valid YAML"):
        load_tuned("tar")

"""Resistance ratios with intervals over seeds and verdicts (issue 22.2), and the release gate (issue 21.5): a
defended model unusable before any attack gets no ratio, shows its status everywhere and never ranks above a usable
defense."""

from __future__ import annotations

import math

import test_aggregate
from test_aggregate import row, write_run

from bench.cli import main
from bench.core.metrics import Ratio
from leaderboard.aggregate import build
from leaderboard.ratios import BROKEN, GAIN, LOSS, TIE, UNDETERMINED, ratio_interval, worst_interval
from leaderboard.render import markdown
from leaderboard.summary import summary_text


def exact(*values: float) -> list[Ratio]:
    return [Ratio(v, False, False) for v in values]


def test_the_interval_over_3_seeds_is_their_range_and_a_tie_when_it_contains_1():
    tie = ratio_interval(exact(1.5, 1.0, 2.0))
    assert (tie.ratio.value, tie.low, tie.high, tie.verdict, tie.seeds) == (1.5, 1.0, 2.0, TIE, 3)
    gain = ratio_interval(exact(1.5, 1.2, 3.0))
    assert (gain.low, gain.high, gain.verdict) == (1.2, 3.0, GAIN)
    loss = ratio_interval(exact(0.5, 0.8, 0.9))
    assert (loss.high, loss.verdict) == (0.9, LOSS)
    assert ratio_interval(exact(1.5, 1.2, 3.0)) == gain  # the same seeds always give the same interval


def test_a_censored_worst_case_is_a_bound_in_the_interval():
    # the defense held to its budget on every seed: at least 2x, up to anything
    held = ratio_interval([Ratio(2.0, True, False), Ratio(3.0, True, False), Ratio(2.5, True, False)])
    assert held.low == 2.0 and math.isinf(held.high) and held.verdict == GAIN
    # one seed where the defense held at 1.5x and two where it was harmed below 1: the held seed may be anything
    # above 1.5, but the median of 3 is still at most the larger harmed one... unless resampled: the range is open
    mixed = ratio_interval([Ratio(1.5, True, False), Ratio(0.6, False, False), Ratio(0.8, False, False)])
    assert mixed.low == 0.6 and math.isinf(mixed.high) and mixed.verdict == TIE
    # none held on one seed: that seed's ratio is at most 0.5, down to 0
    capped = ratio_interval([Ratio(0.5, False, True), Ratio(0.4, False, False), Ratio(0.7, False, False)])
    assert capped.low == 0.0 and capped.high == 0.7 and capped.verdict == LOSS
    both = ratio_interval([Ratio(1.0, True, True)] * 3)
    assert both.verdict == UNDETERMINED


def test_the_worst_ratio_over_tasks_is_broken_when_any_task_is():
    gain = (2.0, 1.5, 3.0, False, False, GAIN)
    tie = (1.2, 0.9, 1.5, False, False, TIE)
    assert worst_interval([gain, tie]) == (1.2, 0.9, 1.5, TIE)
    assert worst_interval([gain, (math.nan, math.nan, math.nan, False, False, BROKEN)])[3] == BROKEN


def three_seeds(tmp_path, defense: str, steps: list[int], censored: bool = False, attack: str = "a", **kwargs) -> None:
    for seed, value in enumerate(steps):
        write_run(tmp_path, defense=defense, seed=seed, attack=attack, steps=value, censored=censored, **kwargs)


def test_tables_print_interval_verdict_and_seeds_and_rank_by_verdict_not_by_value(tmp_path, monkeypatch):
    three_seeds(tmp_path, "none", [20, 20, 20])
    three_seeds(tmp_path, "overlap", [40, 20, 30])   # 2x, 1x, 1.5x: a tie, though its median is 1.5x
    three_seeds(tmp_path, "steady", [25, 30, 25])    # 1.25x, 1.5x, 1.25x: a gain
    data = build(tmp_path)
    overlap, steady = row(data.board, "overlap"), row(data.board, "steady")
    assert (overlap["ratio"], overlap["ratio_low"], overlap["ratio_high"], overlap["ratio_verdict"]) == (1.5, 1, 2, TIE)
    assert (steady["ratio"], steady["ratio_verdict"]) == (1.25, GAIN)
    for text in (markdown(data.board), summary_text(data)):  # the leaderboard and the run summary agree
        assert "1.5× [1, 2] tie" in text and "1.2× [1.2, 1.5] gain" in text and "interval" in text
    assert "### toy (tiny) — 3 seeds" in markdown(data.board)
    monkeypatch.setattr(test_aggregate, "TASK", "toy-2")  # a second task: the overview appears
    for defense in ("none", "overlap", "steady"):
        three_seeds(tmp_path, defense, [10, 10, 10], attack="b")
    lines = markdown(build(tmp_path).board).splitlines()
    overview = lines[lines.index("### Overview") + 4:]
    order = [line.split(" | ")[0].strip("| ") for line in overview[:3]]
    # on toy-2 every defense ties with none (1x): the worst verdict of both is a tie, so they rank as equals (by
    # name); on toy alone, steady (gain) would rank above overlap (tie), whose 1.5x point value is larger
    assert order == ["none", "overlap", "steady"], overview
    assert "toy (3 seeds)" in lines[lines.index("### Overview") + 2]


def test_a_defense_broken_at_release_gets_no_ratio_and_ranks_last(tmp_path):
    three_seeds(tmp_path, "none", [20, 20, 20])
    three_seeds(tmp_path, "usable", [10, 20, 10])
    # a defense that held to its budget, but whose outputs were already NaN before the attack
    for seed in range(3):
        write_run(tmp_path, defense="nan", seed=seed, attack="a", steps=60, censored=True, drift=(math.nan, 0.0))
    data = build(tmp_path)
    nan = row(data.board, "nan")
    assert nan["broken_at_release"] and math.isnan(nan["ratio"]) and nan["ratio_verdict"] == BROKEN
    text = markdown(data.board)
    assert "broken at release (3/3 seeds" in text and "≥ 3×" not in text
    assert "broken at release (3/3 seeds: non-finite outputs)" in summary_text(data)  # `bench run` says it too
    table = [line for line in text.splitlines() if line.startswith("| ") and "Defense" not in line]
    assert [line.split(" | ")[0] for line in table][-1] == "| nan", table


def test_a_plugin_that_writes_nan_into_every_weight_is_broken_at_release_end_to_end(tmp_path, isolated_registries,
                                                                                 capsys):
    plugin = tmp_path / "nan_plugin.py"
    plugin.write_text(NAN_PLUGIN)
    results = tmp_path / "results"
    assert main(["compare", "--plugin", str(plugin), "--defense", "nan-weights", "--task", "vision-digits",
                 "--attack", "full-ft", "optimizer=adam", "lr=1e-2", "--baselines", "none,keep", "--seeds", "0,1",
                 "--results", str(results), "--quiet", "--jobs", "1", "task.budget=30", "task.curvature_iters=0",
                 "task.bootstrap=50"]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ") and "Defense" not in line]
    assert table[-1].startswith("| **nan-weights** |") and "broken at release (2/2 seeds" in table[-1], out
    assert "≥" not in table[-1]
    site = (results / "site" / "index.html").read_text()
    assert "broken at release" in site


NAN_PLUGIN = '''"""Two user defenses: one writes NaN into every weight, one leaves the model as it is."""
from dataclasses import dataclass

import torch

from bench.contracts import Defense, DefenseResult
from bench.registry import DEFENSES


@dataclass(frozen=True, kw_only=True)
class Cfg:
    pass


@DEFENSES.register("nan-weights")
class NanWeights(Defense):
    """Destroys the model."""
    Config = Cfg
    preserves_function = False

    def apply(self, model, view, cfg, *, generator):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
        return DefenseResult(model=model)


@DEFENSES.register("keep")
class Keep(Defense):
    """Leaves the model as it is."""
    Config = Cfg

    def apply(self, model, view, cfg, *, generator):
        return DefenseResult(model=model)
'''


def test_runs_of_another_suite_or_other_task_settings_are_never_pooled(tmp_path):
    three_seeds(tmp_path, "none", [20, 20, 20])
    three_seeds(tmp_path, "d", [40, 40, 40])
    # an ad-hoc --attack set would find d harmed at 5: pooled, d's worst case would drop to 5 and its ratio to 0.25
    three_seeds(tmp_path, "d", [5, 5, 5], attack="adhoc", suite="adhoc(lr=0.1)")
    # the same task with a changed budget: its own experiment too
    three_seeds(tmp_path, "none", [8, 8, 8], attack="b", settings='{"budget": 30}')
    data = build(tmp_path)
    default = data.board[data.board["suite"] == "default"]
    d = default[(default["defense_label"] == "d") & (default["task_settings"] == "")].iloc[0]
    assert (d["worst_median"], d["ratio"], d["ratio_verdict"]) == (40, 2.0, GAIN)
    adhoc = data.board[data.board["suite"] == "adhoc(lr=0.1)"].iloc[0]
    assert adhoc["worst_median"] == 5 and math.isnan(adhoc["ratio"])  # no 'none' in that suite: no ratio
    text = markdown(data.board)
    assert "ran under 3 different task settings / attack suites" in text and "never pooled" in text
    assert "### toy (tiny) · suite adhoc(lr=0.1) — 3 seeds" in text
    assert "No 'none' runs under these task settings and attack suite" in text
    assert "no 'none'" not in summary_text(data).split("toy (tiny) — ")[1].split("\n\n")[0].lower()


def test_failed_runs_count_the_runs_n_runs_counts(tmp_path):
    write_run(tmp_path, defense="d", seed=0, attack="a", steps=10)
    write_run(tmp_path, defense="d", seed=0, attack="a", status="failed", family="f")
    write_run(tmp_path, defense="d", seed=0, attack="a", status="failed", purpose="lr-probe", lr=1e-3)
    d = row(build(tmp_path).board, "d")
    assert (d["n_runs"], d["n_failed"], d["n_probe_runs"], d["n_probe_failed"]) == (2, 1, 1, 1)


def test_a_suite_is_recorded_with_each_run_and_only_a_non_default_one_changes_the_run_id():
    from bench.core.spec import RunSpec, make_spec
    from bench.plan.planner import spec_of, suite_label
    from bench.plan.request import SuiteRequest

    default = SuiteRequest(task="vision-digits", defense="none")
    assert suite_label(default) == "default"
    assert suite_label(SuiteRequest(task="vision-digits", defense="none", refine=False)) == "default(refine=false)"
    adhoc = SuiteRequest(task="vision-digits", defense="none", attack="full-ft", attack_args={"lr": 0.01})
    assert suite_label(adhoc) == "full-ft(lr=0.01)"
    typed = SuiteRequest(task="vision-digits", defense="none", attack="full-ft", attack_args={"lr": "1e-2"})
    assert suite_label(typed) == "full-ft(lr=0.01)"  # as typed on the command line: the same suite
    args = dict(task="vision-digits", defense="none", attack="full-ft", attack_args={"lr": 0.01})
    plain = make_spec(**args)
    assert spec_of(default, "none", {}, "full-ft", {"lr": 0.01}, seed=0).run_id == plain.run_id  # ids kept
    mine = spec_of(adhoc, "none", {}, "full-ft", {"lr": 0.01}, seed=0)
    assert mine.suite == "full-ft(lr=0.01)" and mine.run_id != plain.run_id
    assert RunSpec.from_json(mine.to_json()) == mine and "suite=full-ft(lr=0.01)" in mine.canonical_name


def test_the_figures_show_the_verdicts_and_leave_a_broken_defense_off_the_pareto_plot(tmp_path):
    from leaderboard.forest import forest_png
    from leaderboard.pareto import task_points
    from leaderboard.render import default_schema

    three_seeds(tmp_path, "none", [20, 20, 20])
    three_seeds(tmp_path, "steady", [25, 30, 25])
    for seed in range(3):
        write_run(tmp_path, defense="nan-out", seed=seed, attack="a", steps=60, censored=True, drift=(math.nan, 0.0))
    board = build(tmp_path).board
    png = forest_png(board, "toy")
    assert png is not None and png[:8] == b"\x89PNG\r\n\x1a\n"
    points, _ = task_points(board, default_schema().table_for("toy"))
    assert sorted(p.label for p in points) == ["none", "steady"]
    assert forest_png(board[board["defense_label"] == "none"]) is None  # nothing but the reference: no plot

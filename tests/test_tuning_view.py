"""Budget curves and defender tuning on the leaderboard (issue 21, items 1 and 2): records written by a real
``bench tune`` are shown, with their recorded numbers, in the Markdown leaderboard and on the site's task and
defense pages (escaped)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.cli import main
from bench.run.tuning_record import TUNING_VERSION, read_tunings
from leaderboard import tuning_view

ATTACK = ["--seeds", "100", "--attack", "full-ft", "optimizer=muon", "lr=0.1", "budget=10", "--quiet", "--jobs", "1"]
HOSTILE = "ga-retain<script>alert(1)</script>"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A results folder with a real knob tuning (alpha 0.5 and the default 1.0) and a real budget curve (1×, 4×) of
    ga-retain on vision-digits, plus a copy of each record under a hostile defense name (escaping)."""
    results = tmp_path_factory.mktemp("tuned") / "results"
    common = ["tune", "--defense", "ga-retain", "--task", "vision-digits", "--results", str(results), *ATTACK]
    assert main([*common, "--space", "alpha=0.5,1.0"]) == 0
    assert main([*common, "--budgets", "1,4"]) == 0
    for path in sorted((results / "tuning").glob("*.parquet")):
        frame = pd.read_parquet(path).assign(defense=HOSTILE, tune_id=lambda f: "x" + f["tune_id"])
        table = pa.Table.from_pandas(frame, preserve_index=False)
        table = table.replace_schema_metadata({b"bench.tuning_version": str(TUNING_VERSION).encode()})
        pq.write_table(table, path.with_name("x" + path.name))
    return results


def _records(results):
    records = read_tunings(results, defense="ga-retain")
    return records[records["mode"] == "budget"].sort_values("budget_factor"), records[records["mode"] != "budget"]


def test_markdown_shows_the_budget_figure_tables_and_best_budget_with_recorded_numbers(tuned, tmp_path, capsys):
    out = tmp_path / "docs" / "board.md"
    assert main(["leaderboard", "--results", str(tuned), "--format", "md", "--out", str(out)]) == 0
    capsys.readouterr()
    text = out.read_text()
    budgets, searches = _records(tuned)
    assert budgets["budget_factor"].tolist() == [1.0, 4.0]
    # the figure, beside the other figures and named like them
    figures = sorted((tmp_path / "docs" / "board-figures").glob("*-budgets.png"))
    assert len(figures) == 1 and figures[0].read_bytes()[:4] == b"\x89PNG"
    assert f"](board-figures/{figures[0].name})" in text
    assert "16× today's defender training length (no cap is declared" in text
    # one row per budget point, with its recorded passes, worst case and retained utility
    for _, point in budgets.iterrows():
        row = (f"| ga-retain | {point['budget_factor']:g}× | {point['fb_passes']:,.0f} | "
               f"{tuning_view.steps_text(point['bounded_score'], bounded=True)} | ")
        assert row in text
        assert f"| {point['retained_release']:.3f} | yes |" in text
    assert int(budgets["fb_passes"].iloc[1]) == 4 * int(budgets["fb_passes"].iloc[0])
    from bench.run.tuning_record import best_budget
    best = best_budget(budgets, tuning_view.COST_CAP)
    assert f"**ga-retain**: {best['budget_factor']:g}× ({best['fb_passes']:,.0f} passes" in text
    # the knob tuning: candidates, the selected config, the validation seeds, selected vs the default candidate
    selected = searches[searches["selected"]].iloc[0]
    args = ", ".join(f"{k}={v}" for k, v in json.loads(selected["args"]).items())
    assert f"| ga-retain | 2 (2) | {args} | 100 | " in text
    assert json.loads(selected["args"]) in ({"alpha": 0.5}, {"alpha": 1.0})
    assert text.count("Rule: max over candidates usable at release") == 1
    # a hostile defense name cannot open a tag in the Markdown
    assert "<script>" not in text and "ga-retain&lt;script>" in text


def test_site_task_and_defense_pages_show_the_records_escaped(tuned, tmp_path, capsys):
    site = tmp_path / "site"
    assert main(["leaderboard", "--results", str(tuned), "--out", str(site)]) == 0
    capsys.readouterr()
    budgets, searches = _records(tuned)
    (task_page,) = site.glob("task-*.html")
    html = task_page.read_text()
    assert "<h2>Defender budget curves</h2>" in html and "<h2>Defender tuning</h2>" in html
    (figure,) = (site / "img").glob("*-budgets.png")
    assert f"src='img/{figure.name}'" in html
    for _, point in budgets.iterrows():
        assert f"<td class='text'>{point['fb_passes']:,.0f}</td>" in html
        assert f"<td class='text'>{point['retained_release']:.3f}</td>" in html
    assert "<td class='text'>2 (2)</td>" in html
    assert "<script>" not in html and "ga-retain&lt;script&gt;alert(1)&lt;/script&gt;" in html
    defense_page = next(p for p in site.glob("defense-ga-retain-*.html") if "alpha" not in p.name
                        and "steps" not in p.name)
    page = defense_page.read_text()
    assert "tuned on vision-digits (tiny), 2 candidates (2 usable at release), validation seeds 100" in page
    assert "budget curve on vision-digits (tiny) (1×, 4×); best within the 16× cost cap" in page
    assert "<script>" not in page


def _point(defense, factor, passes, worst, usable=True, retained=0.9):
    return {"defense": defense, "task": "vision-digits", "tier": "tiny", "model": None, "budget_factor": factor,
            "fb_passes": passes, "bounded_score": worst, "worst_score": worst, "worst_steps_low": worst,
            "worst_steps_high": worst + 3, "ratio": worst / 10, "retained_release": retained,
            "usable_at_release": usable, "candidate": int(math.log(factor, 4)), "utility_limit": 20}


def test_best_budget_line_respects_the_cap_and_usability():
    points = pd.DataFrame([_point("tar", 1, 400, 10), _point("tar", 4, 1600, 15),
                           _point("tar", 16, 6400, 40, usable=False)])
    assert tuning_view.best_lines(points) == [("tar", "4× (1,600 passes; validation worst case 15, retained 0.900)")]
    assert tuning_view.best_lines(points, 1) == [("tar", "1× (400 passes; validation worst case 10, retained 0.900)")]
    assert tuning_view.best_lines(points, 0.5) == [("tar", "no usable point within 0.5×")]
    rows = tuning_view.budget_rows(points)
    assert rows["Worst case"].tolist() == ["10 [10–13]", "15 [15–18]", "40 [40–43]"]
    assert rows["Usable"].tolist() == ["yes", "yes", "no"]


@pytest.mark.parametrize("score, bounded, text", [(12.0, False, "12"), (500.5, True, "> 500"),
                                                  (math.inf, True, "no run within the bound"),
                                                  (math.nan, False, "—")])
def test_steps_text_reads_censoring_and_empty_bounds(score, bounded, text):
    assert tuning_view.steps_text(score, bounded=bounded) == text


def test_records_attach_to_the_plain_task_group_not_a_variant():
    points = pd.DataFrame([_point("tar", 1, 400, 10)])
    tunings = tuning_view.Tunings(points, pd.DataFrame())
    row = {"task": "vision-digits", "tier": "tiny", "model": None}
    groups = [("vision-digits (tiny) · suite x", "vision-digits", pd.DataFrame([row])),
              ("vision-digits (tiny)", "vision-digits", pd.DataFrame([row]))]
    assert tuning_view.board_titles(tunings, groups) == {("vision-digits", "tiny", None): "vision-digits (tiny)"}
    assert tuning_view.board_titles(tunings, groups[:1]) == {("vision-digits", "tiny", None): groups[0][0]}
    by_title, orphans = tuning_view.markdown_sections(tunings, [], None)
    assert by_title == {} and orphans[0].startswith("### vision-digits (tiny): defender tuning only")


def test_tuning_records_can_come_from_another_results_folder(tuned, tmp_path, capsys):
    """``--tuning DIR`` shows the records of another folder (a tuning campaign beside the leaderboard's runs)."""
    import shutil

    other = tmp_path / "campaign"
    (other / "tuning").mkdir(parents=True)
    for path in (tuned / "tuning").glob("[!x]*.parquet"):  # the real records, not the hostile copies
        shutil.copy(path, other / "tuning" / path.name)
    out = tmp_path / "board.md"
    assert main(["leaderboard", "--results", str(tuned), "--tuning", str(other), "--format", "md",
                 "--out", str(out)]) == 0
    text = out.read_text()
    assert "| ga-retain | 4× | 800 |" in text and "script" not in text
    capsys.readouterr()
    assert main(["leaderboard", "--results", str(tuned), "--tuning", str(tmp_path / "nowhere"), "--format", "md"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no tuning/ folder" in err


def test_a_preset_page_shows_the_records_of_what_its_preset_record_says_it_tuned(tmp_path, monkeypatch):
    """``tar.my-best`` written from a budget curve of ``tar.sophon``: its page shows tar.sophon's curve (the record
    says so, not the name); tar's own curve and other defenses' stay off it."""
    from bench.core.tuning_presets import write_preset

    monkeypatch.setenv("BENCH_TUNED_PRESETS", str(tmp_path))
    write_preset("tar", "my-best", {"steps": 108}, task="vision-digits", tier="tiny", command="bench tune ...",
                 tune_id="x", selected_from="2 budgets", tuned_from="tar.sophon", budget_factor=4, fb_passes=1600)
    points = pd.DataFrame([_point("tar.sophon", 1, 400, 10), _point("tar.sophon", 4, 1600, 15),
                           _point("tar", 1, 400, 12), _point("ga-retain", 1, 40, 8)])
    tunings = tuning_view.Tunings(points, pd.DataFrame())
    (line,) = tuning_view.defense_lines(tunings, "tar.my-best")
    assert line.startswith("tar.sophon budget curve on vision-digits (tiny) (1×, 4×); best within the 16× cost cap")
    assert [line.split(" ")[0] for line in tuning_view.defense_lines(tunings, "tar")] == ["tar"]
    assert tuning_view.defense_lines(tunings, "tar.sophon-tuned-vision-digits")[0].startswith("tar.sophon ")  # name rule

"""The declared leaderboard schema (leaderboard/schema.yaml): adding a metric is one entry, a column the board lacks is
skipped, and a mistake in the YAML is a one-line error that names the entry."""

from __future__ import annotations

import pytest
import yaml
from test_leaderboard import write_run

from bench.errors import ConfigError
from leaderboard.aggregate import build
from leaderboard.render import columns, markdown
from leaderboard.schema import SCHEMA_PATH, load_schema


def edited_schema(tmp_path, edit) -> str:
    raw = yaml.safe_load(SCHEMA_PATH.read_text())
    edit(raw)
    path = tmp_path / "schema.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return str(path)


def test_shipped_schema_declares_the_overview_and_a_default_task_table():
    schema = load_schema()
    assert schema.overview.sort.key == "worst_rank"  # the verdict of the worst ratio (leaderboard.ratios.RANK)
    default = schema.table_for("a-third-party-task")
    assert default is schema.tasks["default"] and default.columns[0].key == "defense_label"
    assert schema.table_for("llm-harmful-qa").primary_utility == "benign_nll"
    assert schema.table_for("llm-harmful-qa").columns == default.columns  # an override keeps what it does not set


def test_a_new_metric_is_one_entry_and_absent_keys_are_skipped(tmp_path):
    write_run(tmp_path, task="task-a", defense="none", steps=10, censored=False)
    write_run(tmp_path, task="task-a", defense="weak", steps=5, censored=False)
    board = build(tmp_path).board
    path = edited_schema(tmp_path, lambda raw: raw["tasks"]["default"]["columns"].extend([
        {"key": "n_runs", "name": "Attack runs", "format": "int"},
        {"key": "no_such_metric", "name": "Not measured", "format": "float"}]))
    text = markdown(board, load_schema(path))
    assert "| Attack runs |" in text and "Not measured" not in text
    assert "| Attack runs |" not in markdown(board)


def test_hidden_by_prefers_the_newer_column(tmp_path):
    write_run(tmp_path, task="task-a", defense="none", steps=10, censored=False)
    board = build(tmp_path).board
    headers = [c.header for c in columns(board)]
    assert headers.count("Retained accuracy") == 1  # defended_retained:accuracy (retained_mean is absent here)
    board["retained_mean:accuracy"] = 0.5
    shown = [c for c in columns(board) if c.header == "Retained accuracy"]
    assert [c.key for c in shown] == ["retained_mean:accuracy"]


def test_every_schema_mistake_is_reported_at_once(tmp_path):
    def edit(raw):
        raw["tasks"]["default"]["columns"][1].update(fomat="steps")
        raw["tasks"]["default"].update(plots=["histogram"])
        raw.update(views=[])
    with pytest.raises(ConfigError) as err:
        load_schema(edited_schema(tmp_path, edit))
    lines = str(err.value).splitlines()
    assert len(lines) == 3, lines
    assert all(line.startswith("leaderboard schema ") for line in lines)


@pytest.mark.parametrize("edit, fragments", [
    (lambda raw: raw["tasks"]["default"]["columns"][1].update(fomat="steps"),
     ["tasks.default.columns[1] (worst_median): unknown key 'fomat'", "Did you mean 'format'"]),
    (lambda raw: raw["tasks"]["default"]["columns"][1].update(format="stepz"),
     ["tasks.default.columns[1] (worst_median)", "format must be one of", "'stepz'"]),
    (lambda raw: raw["tasks"]["default"]["columns"][1].update(direction="up"),
     ["tasks.default.columns[1] (worst_median).direction must be one of 'higher', 'lower', 'none', got str 'up'"]),
    (lambda raw: raw["tasks"]["default"].update(plots=["pareto", "histogram"]), ["tasks.default.plots[1] must be one of 'forest'", "'histogram'"]),
    (lambda raw: raw["tasks"]["vision-digits"].update(colums=[]), ["tasks.vision-digits", "unknown key 'colums'"]),
    (lambda raw: raw["overview"]["columns"].append({"key": "x@{utility}", "name": "x", "format": "int"}),
     ["overview.columns[", "placeholder {utility}"]),
    (lambda raw: raw.update(views=[]), ["unknown key 'views'"]),
])
def test_schema_mistakes_name_the_entry(tmp_path, edit, fragments):
    with pytest.raises(ConfigError) as err:
        load_schema(edited_schema(tmp_path, edit))
    assert all(f in str(err.value) for f in fragments), str(err.value)
    assert "\n" not in str(err.value)

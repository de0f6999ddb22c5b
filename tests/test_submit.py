"""`bench submit`: a valid results folder is copied for a pull request and shown on the leaderboard, marked as
submitted; an invalid one gets every problem at once and nothing is copied."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bench import results
from bench.cli import main
from bench.suite import SuiteRequest
from bench.sweep import first_wave
from leaderboard.aggregate import build
from leaderboard.sources import load_all

PROVENANCE = {"git_sha": "0123abcd", "git_dirty": False, "bench_version": "0.1.0",
              "libraries": {"python": "3.11", "torch": "2.13.0"}}


@pytest.fixture
def plugin(noop_plugin):
    from bench.registry import load_plugin

    load_plugin(noop_plugin)
    return noop_plugin


@pytest.fixture
def claims(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("defense: mine\npaper: Me et al. 2026, Doing nothing well\nclaim: resists fine-tuning for 1000 steps\n"
                    "setting: vision-digits tiny\n")
    return path


def write_run(folder, spec, *, steps=20, provenance=PROVENANCE):
    """One successful run as `bench run` writes it, reduced to what `bench submit` and the leaderboard read."""
    columns = {"run_id": spec.run_id, "task": spec.task.label, "tier": spec.tier, "model": spec.model,
               "defense": spec.defense.label, "defense_label": spec.defense.label, "defense_hash": spec.defense.hash(),
               "attack": spec.attack.label, "attack_label": spec.attack.label, "attack_family": spec.attack.label,
               "attack_hash": spec.attack.hash(), "knowledge": "blind", "purpose": spec.purpose, "seed": spec.seed,
               "status": "success", "outcome": "harmed", "diverged": False, "official": True}
    rows = [results.metric_row("summary", "steps_to_harm", steps, censored=False),
            results.metric_row("summary", "harm_auc", 0.5)]
    results.write_run(folder / spec.run_id, {"run_id": spec.run_id, "status": "success", "spec": spec.to_json(),
                                             "provenance": provenance}, results.to_table(columns, rows))


def write_suite(folder, defense, seeds, *, steps=20):
    """Every first-wave run of vision-digits' default attack suite for ``defense`` and ``seeds``; returns the specs."""
    specs, _ = first_wave(SuiteRequest(task="vision-digits", defense=defense, seeds=tuple(seeds), baseline=False))
    for spec in specs:
        write_run(folder, spec, steps=steps)
    return specs


def run_cli(*argv):
    return main([str(a) for a in argv])


def test_valid_folder_is_copied_and_shown_marked_on_the_leaderboard(tmp_path, plugin, claims, capsys):
    folder, into, local = tmp_path / "results", tmp_path / "submissions", tmp_path / "local"
    write_suite(folder, "mine", [0, 1, 2], steps=40)
    assert run_cli("submit", folder, "--name", "my-lab", "--claims", claims, "--into", into) == 0
    out = capsys.readouterr().out
    target = into / "my-lab"
    assert f"copied to {target}" in out and "git checkout -b submission/my-lab" in out
    assert sorted(p.name for p in target.iterdir() if p.name != "claims") == sorted(p.name for p in folder.iterdir())
    assert (target / "claims" / "mine.yaml").read_text() == claims.read_text()
    assert run_cli("submit", folder, "--name", "my-lab", "--claims", claims, "--into", into) == 2
    assert "--force to replace it" in capsys.readouterr().err
    assert run_cli("submit", folder, "--name", "my-lab", "--claims", claims, "--into", into, "--force") == 0
    capsys.readouterr()

    write_suite(local, "none", [0, 1, 2], steps=20)  # the maintainers' own results: the baseline
    assert run_cli("leaderboard", "--results", local, "--submissions", into) == 0
    out = capsys.readouterr().out
    assert "| mine [submission: my-lab] | 40 |" in out and "| none | 20 |" in out
    site = local / "site"
    assert "mine [submission: my-lab]" in (site / "index.html").read_text()
    mine_page = next(site.glob("defense-mine-submission-my-lab-*.html")).read_text()
    assert "<td>0123abcd (" in mine_page  # provenance read from the submission's own run.json files
    assert run_cli("leaderboard", "--results", local, "--submissions", into, "--format", "parquet") == 0
    board = pd.read_parquet(local / "leaderboard.parquet").set_index("defense_label")
    assert board.loc["mine", "source"] == "submission:my-lab" and board.loc["none", "source"] == "results"
    assert board.loc["mine", "ratio"] == 2.0  # against the local none, on the same seeds


def test_every_problem_is_reported_at_once_and_nothing_is_copied(tmp_path, plugin, claims, capsys):
    folder, into = tmp_path / "results", tmp_path / "submissions"
    specs = write_suite(folder, "mine", [0, 1])  # 2 seeds
    for path in (folder / specs[0].run_id).iterdir():  # an incomplete suite
        path.unlink()
    (folder / specs[0].run_id).rmdir()
    info = json.loads((folder / specs[1].run_id / "run.json").read_text())
    del info["provenance"]["git_sha"]  # a run without its code version
    (folder / specs[1].run_id / "run.json").write_text(json.dumps(info))

    assert run_cli("submit", folder, "--name", "my-lab", "--claims", claims, "--into", into) == 2
    err = capsys.readouterr().err
    problems = [line for line in err.splitlines() if line.startswith(f"error {folder}: ")]
    assert len(problems) == 3, err
    assert any("2 seed(s) [0, 1]; a submission needs at least 3" in line for line in problems)
    assert any(f"1 run(s): provenance lacks the harness's git commit (provenance.git_sha in run.json): "
               f"{specs[1].run_id}" in line for line in problems)
    assert any(f"default attack suite is incomplete: 1 of {len(specs)} first-wave run(s) missing, e.g. "
               f"{specs[0].canonical_name}" in line for line in problems)
    assert not into.exists()

    assert run_cli("submit", folder, "--name", "my-lab", "--into", into) == 2  # and a plugin defense needs claims
    assert "defense 'mine' is not built in: give its claims file with --claims FILE" in capsys.readouterr().err


def test_a_run_submitted_twice_counts_once(tmp_path, plugin):
    """Run ids hash the resolved spec: a submitted run already in the results folder is the same run, read once."""
    local, submitted = tmp_path / "local", tmp_path / "submissions" / "lab"
    specs, _ = first_wave(SuiteRequest(task="vision-digits", defense="none", attack="full-ft", baseline=False))
    write_run(local, specs[0], steps=20)
    write_run(submitted, specs[0], steps=99)
    metrics = load_all(local, tmp_path / "submissions")
    assert metrics.drop_duplicates("run_id")["source"].tolist() == ["results"]
    assert build(local, sources=tmp_path / "submissions").board["worst_median"].tolist() == [20]

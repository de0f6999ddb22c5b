"""`bench submit`: a valid results folder is copied for a pull request and shown on the leaderboard, marked as
submitted; an invalid one gets every problem at once and nothing is copied."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bench.cli import main
from bench.plan.request import SuiteRequest
from bench.plan.sweep import first_wave
from bench.run import results
from bench.run.fingerprint import code_fingerprint
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
    """One successful run as `bench run` writes it, reduced to what `bench submit` and the leaderboard read (with
    the code fingerprint of the plugins as loaded now)."""
    columns = {"run_id": spec.run_id, "task": spec.task.label, "tier": spec.tier, "model": spec.model,
               "defense": spec.defense.label, "defense_label": spec.defense.label, "defense_hash": spec.defense.hash(),
               "attack": spec.attack.label, "attack_label": spec.attack.label, "attack_family": spec.attack.label,
               "attack_hash": spec.attack.hash(), "knowledge": "blind", "purpose": spec.purpose, "seed": spec.seed,
               "status": "success", "outcome": "harmed", "diverged": False, "official": True}
    rows = [results.metric_row("summary", "steps_to_harm", steps, censored=False),
            results.metric_row("summary", "harm_auc", 0.5)]
    results.write_run(folder / spec.run_id, {"run_id": spec.run_id, "status": "success", "spec": spec.to_json(),
                                             "provenance": provenance, "fingerprint": code_fingerprint(spec)},
                      results.to_table(columns, rows))


def write_suite(folder, defense, seeds, *, steps=20, task="vision-digits", task_args=None, limit=None):
    """Every first-wave run of ``task``'s default attack suite for ``defense`` and ``seeds`` (the first ``limit``
    when given: a test of another check); returns the specs."""
    specs, _ = first_wave(SuiteRequest(task=task, defense=defense, seeds=tuple(seeds), baseline=False,
                                       task_args=task_args or {}))
    specs = specs[:limit]
    for spec in specs:
        write_run(folder, spec, steps=steps)
    return specs


def run_cli(*argv):
    return main([str(a) for a in argv])


def test_valid_folder_is_copied_with_its_plugin_source_and_shown_on_the_leaderboard(tmp_path, plugin, claims,
                                                                                    capsys):
    folder, into, local = tmp_path / "results", tmp_path / "submissions", tmp_path / "local"
    write_suite(folder, "mine", [0, 1, 2], steps=40)
    assert run_cli("submit", folder, "--name", "my-lab", "--claims", claims, "--into", into) == 0
    out = capsys.readouterr().out
    target = into / "my-lab"
    assert f"copied to {target}" in out and "git checkout -b submission/my-lab" in out
    copied = sorted(p.name for p in target.iterdir() if p.name not in ("claims", "code"))
    assert copied == sorted(p.name for p in folder.iterdir())
    assert (target / "claims" / "mine.yaml").read_text() == claims.read_text()
    assert (target / "code" / "defense-mine" / plugin.name).read_text() == plugin.read_text()  # the plugin's source
    manifest = json.loads((target / "code" / "manifest.json").read_text())
    (copied,) = manifest["plugins"]  # the built-ins (none, the task, the attacks) are the harness's own
    recorded = json.loads(next(folder.glob("*/run.json")).read_text())["fingerprint"]
    assert copied["hash"] == [p["hash"] for p in recorded["plugins"] if p["name"] == "mine"][0]
    assert manifest["new_tasks"] == [] and manifest["custom_task_settings"] == {}
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


# -- the code a submission carries (bench.apps.submit_code) ------------------------------------------------------------
def _edit_fingerprints(folder, specs, edit):
    for spec in specs:
        path = folder / spec.run_id / "run.json"
        info = json.loads(path.read_text())
        edit(info["fingerprint"])
        path.write_text(json.dumps(info))


def _submit(folder, into, *extra):
    return run_cli("submit", folder, "--name", "my-lab", "--into", into, *extra)


def test_runs_whose_fingerprints_disagree_or_are_missing_are_refused(tmp_path, plugin, claims, capsys):
    folder, into = tmp_path / "results", tmp_path / "submissions"
    specs = write_suite(folder, "mine", [0, 1, 2], limit=6)

    def other_source(fingerprint):
        next(p for p in fingerprint["plugins"] if p["name"] == "mine")["hash"] = "0000000000000000"

    _edit_fingerprints(folder, specs[:2], other_source)
    _edit_fingerprints(folder, specs[2:3], lambda fp: fp["libraries"].update(torch="1.0"))
    info = json.loads((folder / specs[3].run_id / "run.json").read_text())
    del info["fingerprint"]
    (folder / specs[3].run_id / "run.json").write_text(json.dumps(info))
    assert _submit(folder, into, "--claims", claims) == 2
    err = capsys.readouterr().err
    assert f"1 run(s): no code fingerprint in run.json (made by an older bench): rerun them with this bench: " \
           f"{specs[3].run_id}" in err
    assert "the runs disagree on the source of defense 'mine' (" in err and "0000000000000000: 2 run(s)" in err
    assert "the runs disagree on the torch version (" in err and "1.0: 1 run(s)" in err
    assert not into.exists()


def test_a_plugin_source_that_is_not_the_runs_or_a_modified_builtin_is_refused(tmp_path, plugin, claims, capsys):
    folder, into = tmp_path / "results", tmp_path / "submissions"
    specs = write_suite(folder, "mine", [0, 1, 2], limit=3)
    _edit_fingerprints(folder, specs, lambda fp: next(p for p in fp["plugins"] if p["name"] == "none" or
                                                      p["kind"] == "task").update(hash="1111111111111111"))
    recorded = json.loads((folder / specs[0].run_id / "run.json").read_text())["fingerprint"]
    plugin.write_text(plugin.read_text() + "# edited after the runs\n")
    from bench.run.fingerprint import plugin_version

    plugin_version.cache_clear()  # (a new `bench submit` process hashes the file as it is now)
    assert _submit(folder, into, "--claims", claims) == 2
    err = capsys.readouterr().err
    assert "defense 'mine': its source here (" in err and "is not the code the runs recorded" in err
    assert "built-in task 'vision-digits': the runs recorded other code (1111111111111111)" in err
    assert recorded["plugins"][0]["kind"] == "task"
    assert not into.exists()


def test_task_settings_other_than_the_official_ones_need_a_flag_and_are_recorded(tmp_path, capsys,
                                                                              isolated_registries):
    folder, into = tmp_path / "results", tmp_path / "submissions"
    write_suite(folder, "none", [0, 1, 2], task_args={"budget": 30})
    assert _submit(folder, into) == 2
    err = capsys.readouterr().err
    assert "vision-digits (tiny): the runs use task settings other than the official ones: budget=30 (official " in err
    assert "--custom-task-settings" in err
    assert _submit(folder, into, "--custom-task-settings") == 0
    manifest = json.loads((into / "my-lab" / "code" / "manifest.json").read_text())
    assert manifest["custom_task_settings"]["vision-digits (tiny)"]["budget"]["value"] == 30


def test_a_task_not_in_the_harness_needs_new_task_and_its_source_is_carried(tmp_path, capsys, isolated_registries):
    from bench.registry import load_plugin

    task_file = tmp_path / "my_task.py"
    task_file.write_text('"""A task of my own: the digits task under another name."""\n'
                         "from bench.registry import TASKS\nfrom tasks.vision.task import VisionDigits\n\n\n"
                         '@TASKS.register("my-digits")\nclass MyDigits(VisionDigits):\n    """Digits, mine."""\n')
    load_plugin(task_file)
    folder, into = tmp_path / "results", tmp_path / "submissions"
    write_suite(folder, "none", [0, 1, 2], task="my-digits")
    assert _submit(folder, into, "--plugin", task_file) == 2
    err = capsys.readouterr().err
    assert "task 'my-digits' is not in the harness (it comes from " in err and "needs --new-task" in err
    assert _submit(folder, into, "--plugin", task_file, "--new-task") == 0, capsys.readouterr().err
    code = into / "my-lab" / "code"
    assert (code / "task-my-digits" / "my_task.py").read_text() == task_file.read_text()
    assert json.loads((code / "manifest.json").read_text())["new_tasks"] == ["my-digits"]

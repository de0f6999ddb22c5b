"""The leaderboard and the run summary on hand-written result files: censoring in the resistance ratio, the
function-preservation column each task records, and a clear error for a folder without runs."""

from __future__ import annotations

import pandas as pd
import pytest

from bench.cli import main
from bench.run import results
from leaderboard.aggregate import build
from leaderboard.render import columns, markdown
from leaderboard.summary import summary_text


def write_run(results_dir, *, task, defense, steps, censored, seed=0, divergence=("mean_kl", 0.01), official=True):
    """One successful attack run as `bench run` writes it, reduced to the rows the leaderboard reads."""
    run_id = f"{task}-{defense}-{seed}"
    columns_ = {"run_id": run_id, "task": task, "tier": "tiny", "model": None, "defense": defense,
                "defense_label": defense, "defense_hash": defense, "attack": "full-ft", "attack_label": "full-ft",
                "attack_family": "adam", "attack_hash": "a", "knowledge": "blind", "purpose": "attack", "seed": seed,
                "status": "success", "outcome": "resisted" if censored else "harmed", "diverged": False,
                "official": official}
    rows = [results.metric_row("summary", "steps_to_harm", steps, censored=censored),
            results.metric_row("summary", "harm_auc", 0.1),
            results.metric_row("defended", divergence[0], divergence[1], split="benign"),
            results.metric_row("defended", "retained_utility", 1.0, split="accuracy")]
    results.write_run(results_dir / run_id, {"run_id": run_id, "status": "success"},
                      results.to_table(columns_, rows))


def board_row(board: pd.DataFrame, task: str, defense: str) -> pd.Series:
    return board[(board["task"] == task) & (board["defense_label"] == defense)].iloc[0]


def test_resistance_ratio_shows_censoring_of_either_side(tmp_path, capsys):
    # task-a: none never harmed within its 30 steps, the defense harmed at 10: the ratio is at most 10/30.
    write_run(tmp_path, task="task-a", defense="none", steps=30, censored=True)
    write_run(tmp_path, task="task-a", defense="weak", steps=10, censored=False)
    # task-b: none harmed at 10, the defense held for its 40 steps: the ratio is at least 4.
    write_run(tmp_path, task="task-b", defense="none", steps=10, censored=False)
    write_run(tmp_path, task="task-b", defense="strong", steps=40, censored=True)
    data = build(tmp_path)
    weak, strong = board_row(data.board, "task-a", "weak"), board_row(data.board, "task-b", "strong")
    assert weak["ratio"] == pytest.approx(1 / 3) and weak["ratio_upper_bound"] and not weak["ratio_lower_bound"]
    assert strong["ratio"] == 4.0 and strong["ratio_lower_bound"] and not strong["ratio_upper_bound"]
    none = board_row(data.board, "task-a", "none")
    assert none["ratio"] == 1.0 and not none["ratio_lower_bound"] and not none["ratio_upper_bound"]

    for text in (markdown(data.board), summary_text(data)):  # the leaderboard and the run summary agree
        assert "≤ 0.33×" in text and "≥ 4×" in text
    assert main(["leaderboard", "--results", str(tmp_path)]) == 0
    assert "≤ 0.33×" in capsys.readouterr().out


def test_preservation_column_is_the_divergence_the_task_recorded(tmp_path):
    write_run(tmp_path, task="sd-like", defense="none", steps=10, censored=False, divergence=("mean_mse", 0.0))
    write_run(tmp_path, task="sd-like", defense="noisy", steps=20, censored=False, divergence=("mean_mse", 0.25))
    write_run(tmp_path, task="classifier", defense="noisy", steps=20, censored=False, divergence=("mean_kl", 0.5))
    board = build(tmp_path).board
    for task, header, value in [("sd-like", "MSE", 0.25), ("classifier", "KL", 0.5)]:
        group = board[board["task"] == task]
        column = next(c for c in columns(group) if c.header in ("KL", "MSE"))
        row = board_row(board, task, "noisy")
        assert column.header == header and column.text(row) == f"{value:.3g}" and column.sort_value(row) == value
    # a detail column: in the Markdown only with details (the site folds it behind a toggle)
    assert "| MSE |" in markdown(board, details=True) and "| KL |" in markdown(board, details=True)
    assert "| KL |" not in markdown(board)


def test_leaderboard_of_a_folder_without_runs_says_so(tmp_path, capsys):
    assert main(["leaderboard", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"no runs found in {tmp_path}" in err and "Traceback" not in err
    write_run(tmp_path, task="task-a", defense="none", steps=10, censored=False, official=False)
    assert main(["leaderboard", "--results", str(tmp_path), "--official"]) == 2
    assert f"no official runs found in {tmp_path}" in capsys.readouterr().err


def test_markdown_shows_each_defense_s_published_claim_beside_its_numbers(tmp_path, capsys):
    write_run(tmp_path, task="task-a", defense="none", steps=10, censored=False)
    write_run(tmp_path, task="task-a", defense="tar.sophon", steps=20, censored=False)
    write_run(tmp_path, task="task-a", defense="repnoise", steps=30, censored=False)
    write_run(tmp_path, task="task-a", defense="ga-retain+specdef", steps=30, censored=False)
    board = build(tmp_path).board
    # the preset answers to its own paper's entry; a composite has none
    assert board_row(board, "task-a", "tar.sophon")["claim_status"] == "no known break"
    # the status is computed from the ledger's items: RepNoise's README caveats are its own limitations, no break
    assert board_row(board, "task-a", "repnoise")["claim_status"] == "no known break, 3 own limitations"
    assert board_row(board, "task-a", "none")["claim_status"] == "no claim"
    assert pd.isna(board_row(board, "task-a", "ga-retain+specdef")["claim_status"])
    assert main(["leaderboard", "--results", str(tmp_path), "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert "| Paper's claim |" in out and "### Claims ledger" in out
    ledger = out.split("### Claims ledger", 1)[1]
    assert "- **sophon** (Deng et al. 2024, " in ledger and "arXiv 2404.12699) — _no known break_" in ledger
    assert "- **repnoise**" in ledger and "own-limitation:" in ledger
    assert "break (unverified): " in ledger.split("- **repnoise**", 1)[1] and "ga-retain" not in ledger

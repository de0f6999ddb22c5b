"""Every shipped experiment and sweep file validates (binds every config) without running anything."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from bench.core.yaml_dataclass import read_mapping
from bench.plan.experiment import build_request
from bench.plan.request import validate_request
from bench.plan.sweep import SWEEP_KEYS, first_wave, is_sweep, plan_file

ROOT = Path(__file__).parent.parent
FILES = sorted((ROOT / "experiments").glob("**/*.yaml"))
SWEEPS = [p for p in FILES if is_sweep(read_mapping(p, "config file", SWEEP_KEYS))]
EXPERIMENTS = [p for p in FILES if p not in SWEEPS]


def _id(path: Path) -> str:
    return str(path.relative_to(path.parents[1]))


def test_there_are_experiments_and_sweeps():
    assert EXPERIMENTS and SWEEPS


@pytest.mark.parametrize("path", EXPERIMENTS, ids=_id)
def test_experiment_validates(path):
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# bench run --config"), "experiment files start with the command that runs them"
    specs = validate_request(build_request(config=path))
    assert specs


@pytest.mark.parametrize("path", SWEEPS, ids=_id)
def test_sweep_validates_and_runs_what_its_header_says(path):
    text = path.read_text()
    assert text.splitlines()[0] == f"# bench sweep {path.relative_to(ROOT)}", "sweeps start with their command"
    assert "Never edit this file once published: add a new file." in text
    sweep_plan = plan_file(path)
    assert sweep_plan.suites
    # A header that says the grid runs what a `bench run` command runs is checked: the same first-wave run ids.
    claim = re.search(r"same runs \(same run ids\) as\s*#?\s*`bench run ([^`]+)`", text)
    assert claim or not path.name.startswith("readme-"), "a README grid names the `bench run` it reproduces"
    if claim:
        from bench.cli import build_parser

        args = build_parser().parse_args(["run", *shlex.split(claim.group(1))])
        request = build_request(task=args.task, defense=args.defense, attack=args.attack, overrides=args.overrides)
        expected = {spec.run_id for spec in first_wave(request)[0]}
        assert {spec.run_id for planned in sweep_plan.suites for spec in planned.runs} == expected

"""Every shipped experiment file validates (binds every config) without running anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.experiment import build_request
from bench.suite import validate_request

EXPERIMENTS = sorted((Path(__file__).parent.parent / "experiments").glob("**/*.yaml"))


def test_there_are_experiments():
    assert EXPERIMENTS


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_experiment_validates(path):
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# bench run --config"), "experiment files start with the command that runs them"
    specs = validate_request(build_request(config=path))
    assert specs

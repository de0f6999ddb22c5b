"""Every registered plugin passes the exported conformance checks (bench.testing), one parametrized test each."""

from __future__ import annotations

import pytest

from bench import testing
from bench.registry import ATTACKS, DEFENSES, TASKS
from bench.runner import Session, run
from bench.spec import make_spec


@pytest.mark.parametrize("name", DEFENSES.names())
def test_defense_conforms(name, tmp_path):
    testing.check_defense(name, tmp_path)


@pytest.mark.parametrize("name", TASKS.names())
def test_task_conforms(name, cache):
    testing.check_task(name, cache)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_conforms(name):
    testing.check_attack(name)


@pytest.mark.parametrize("task", TASKS.names())
@pytest.mark.parametrize("attack", ATTACKS.names())
@pytest.mark.parametrize("defense", DEFENSES.names())
def test_every_attack_runs_on_every_task_and_defense(task, attack, defense, tmp_path, cache):
    smoke = {**TASKS.get(task).smoke_args, "curvature_iters": 0, "bootstrap": 0}
    spec = make_spec(task=task, defense=defense, attack=attack, task_args=smoke,
                     attack_args={"budget": 6, "eval_every": 3})
    result = run(spec, Session(tmp_path, cache))
    assert result.status == "success", result.error
    assert result.summary["outcome"] in ("harmed", "broken", "resisted")
    assert 0 < result.summary["steps_run"] <= 6

"""Every registered plugin passes the exported conformance checks (bench.testing), one parametrized test each."""

from __future__ import annotations

import copy

import pytest

from bench import testing
from bench.core.spec import make_spec
from bench.registry import ATTACKS, DEFENSES, TASKS
from bench.run.runner import run
from bench.run.stages import Session


@pytest.mark.parametrize("name", DEFENSES.names())
def test_defense_conforms(name, tmp_path):
    testing.check_defense(name, tmp_path)


@pytest.mark.parametrize("name", TASKS.names())
def test_task_conforms(name, cache):
    # Which baselines run on a built-in task is what test_every_defense_on_every_task checks (with their smoke
    # configs): training every baseline's default config on every task here would double its cost.
    passed = testing.check_task(name, cache, baselines=False)
    assert any("defender view keeps its contract" in line for line in passed)


@pytest.mark.parametrize("name", TASKS.names())
def test_builtin_task_fills_the_whole_defender_view(name, cache):
    """Third-party tasks may leave the view's optional parts unset; the harness's own tasks provide all of them."""
    view = testing.smoke_task(name, cache).defender_view()
    for field in ("aligned", "aligned_loss", "stream", "feature_modules", "features", "predictions", "attacker"):
        assert getattr(view, field) not in (None, ()), f"task {name!r}: DefenderView.{field} is not provided"


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_conforms(name, cache):
    testing.check_attack(name, cache)


DEFENSE_TASKS, DEFENSE_MISFITS = testing.applicable_pairs(DEFENSES)
ATTACK_TASKS, ATTACK_MISFITS = testing.applicable_pairs(ATTACKS)

SLOW_TWINS = {"sd-concept": "sd-style"}
"""Tasks whose plugin cross-product runs in the slow lane (``pytest -m slow``) because a twin runs the same code in
CI: sd-concept and sd-style are one pipeline, instance and set of losses, differing only in their data and judge
target (each task's own conformance, ``test_task_conforms``, still runs in CI)."""


def _lane(pairs):
    """The pairs as test parameters, those on a slow twin task marked ``slow``."""
    return [pytest.param(*pair, marks=pytest.mark.slow) if pair[-1] in SLOW_TWINS else pair for pair in pairs]


@pytest.mark.parametrize("defense, task", _lane(DEFENSE_TASKS))
def test_every_defense_on_every_task(defense, task, cache, tmp_path):
    """Every defense on every task it applies to (bench.core.applicability)."""
    testing.check_defense_on_task(defense, task, cache, tmp_path)


@pytest.mark.parametrize("kind, name, task", [("defense", *pair) for pair in DEFENSE_MISFITS]
                         + [("attack", *pair) for pair in ATTACK_MISFITS] or [pytest.param("", "", "", marks=pytest.mark.skip("every plugin applies to every task"))])
def test_a_plugin_on_a_task_it_does_not_apply_to_is_a_clear_error(kind, name, task):
    from bench.core.applicability import NotApplicableError

    args = {"defense": name, "attack": "full-ft"} if kind == "defense" else {"defense": "none", "attack": name}
    with pytest.raises(NotApplicableError, match=f"{kind} {name!r} does not apply to task {task!r}"):
        make_spec(task=task, **args)


def test_leak_check_catches_evaluation_data(cache):
    """The leak test can fail: a defense that trains on an evaluation batch is caught."""
    from bench.contracts import Defense, DefenseResult

    instance = testing.smoke_task("vision-digits", cache)
    planted = instance.splits["eval_harmful"].batches(4)[0]

    class Leaky(Defense):
        Config = DEFENSES.get("none").Config

        def apply(self, model, view, cfg, *, generator):
            view.harmful_loss(model, view.harmful[0])
            view.harmful_loss(model, planted)
            return DefenseResult(model=model)

    view, seen = testing.recording_view(instance.defender_view())
    Leaky().apply(instance.model, view, None, generator=None)
    with pytest.raises(AssertionError, match="outside the defender split"):
        testing.check_uses_only_defender_data(view, seen, "leaky")


ATTACKED_DEFENSES = ("none", "specdef")
"""Every attack is run on every task against these (the cube grows as attacks x tasks x defenses; every other
defense is covered by test_every_defense_on_every_task and its own attack runs)."""


@pytest.fixture(scope="module")
def stages(tmp_path_factory, cache) -> Session:
    """The attack cross-product's stages, loaded once: each task's released stage and each defended stage stays in
    this session's memory, as in one sweep worker, instead of being read from disk again for every run."""
    return Session(tmp_path_factory.mktemp("unused"), cache, progress=False)


@pytest.mark.parametrize("attack, task", _lane(ATTACK_TASKS))
@pytest.mark.parametrize("defense", ATTACKED_DEFENSES)
def test_every_attack_runs_on_every_task_and_defense(task, attack, defense, stages, tmp_path):
    # Three steps with probes at 0 and 3: several optimizer steps and a probe after training, at the least cost
    # (the probe is most of a tiny diffusion run's time; each attack's own tests check its behaviour).
    smoke = {**TASKS.get(task).smoke_args, "curvature_iters": 0, "bootstrap": 0}
    spec = make_spec(task=task, defense=defense, attack=attack, task_args=smoke,
                     attack_args={"budget": 3, "eval_every": 3})
    session = copy.copy(stages)  # the same stages in memory (its dicts are shared), but this test's own results
    session.results_dir = tmp_path  # folder: a run of another test is never reused for it (bench.run.shared_runs)
    result = run(spec, session)
    assert result.status == "success", result.error
    assert result.summary.outcome in ("harmed", "broken", "resisted") and result.summary.reused_from is None
    assert 0 < result.summary.steps_run <= 3


def _broken_attack(mistake: str):
    from attacks._training import FineTuneConfig
    from bench.contracts import Attack, AttackReport

    class Broken(Attack):
        Config = FineTuneConfig

        def run(self, model, task, cfg, *, generator, monitor):
            if mistake != "no-begin":
                monitor.begin(model)
            steps = cfg.budget // 2 if mistake == "quits-early" else cfg.budget  # quits half-way, asked or not
            for step in range(1, steps + 1):
                stop = monitor.after_step(model, step=step, loss=float("nan") if mistake == "nan" else 1.0,
                                          examples=step)
                if stop and mistake != "ignores-stop":
                    break
            return AttackReport()

    return Broken


@pytest.mark.parametrize("mistake, fragment", [("no-begin", "monitor.begin must come once, first"),
                                               ("ignores-stop", "a stop when the monitor says so"),
                                               ("nan", "reported loss nan"),
                                               ("quits-early", "stopped early")])
def test_check_attack_catches_a_broken_attack(mistake, fragment, cache, isolated_registries):
    ATTACKS.register("broken")(_broken_attack(mistake))
    with pytest.raises(AssertionError, match=fragment):
        testing.check_attack("broken", cache)

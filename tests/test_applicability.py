"""Defenses and attacks that belong to one modality: a clear error on other tasks, skipped (and listed) by sweeps."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import pytest

from bench.cli import main
from bench.contracts import Defense, DefenseResult
from bench.core.applicability import NotApplicableError, applies
from bench.core.spec import make_spec
from bench.plan.sweep import load_sweep, plan
from bench.registry import DEFENSES, TASKS


@pytest.fixture
def generation_only(isolated_registries):
    @DEFENSES.register("gen-only")
    class GenerationOnly(Defense):
        """A defense for diffusion models only."""

        @dataclass(frozen=True, kw_only=True)
        class Config:
            """No settings."""

        settings = frozenset({"generation"})

        def apply(self, model, view, cfg, *, generator):
            return DefenseResult(model=model)

    return GenerationOnly


def test_every_builtin_task_declares_its_setting():
    assert {name: TASKS.get(name).setting for name in TASKS.names()} == {
        "llm-harmful-qa": "chat", "llm-relearn": "knowledge", "vision-digits": "classification",
        "sd-style": "generation", "sd-concept": "generation"}


def test_a_defense_on_a_task_outside_its_settings_is_a_clear_error(generation_only):
    with pytest.raises(NotApplicableError) as err:
        make_spec(task="vision-digits", defense="gen-only", attack="full-ft")
    assert str(err.value) == ("defense 'gen-only' does not apply to task 'vision-digits' (a classification task): "
                              "it applies to generation tasks (sd-concept, sd-style)")
    make_spec(task="sd-style", defense="gen-only", attack="full-ft")  # its own setting: fine


def test_a_composite_applies_where_every_part_applies(generation_only):
    assert applies(DEFENSES.resolve("gen-only+specdef").cls, TASKS.get("sd-concept"))
    assert not applies(DEFENSES.resolve("specdef+gen-only").cls, TASKS.get("llm-relearn"))
    with pytest.raises(NotApplicableError, match="defense 'specdef\\+gen-only' does not apply"):
        make_spec(task="llm-relearn", defense="specdef+gen-only", attack="full-ft")


def test_a_sweep_skips_and_lists_the_combinations_that_do_not_apply(generation_only, tmp_path, capsys):
    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent("""
        tasks: [vision-digits, sd-style]
        defenses: [gen-only]
        attacks: [full-ft]
    """))
    result = plan(load_sweep(path))
    planned = {(p.request.task, p.request.defense) for p in result.suites}
    assert planned == {("vision-digits", "none"), ("sd-style", "none"), ("sd-style", "gen-only")}
    assert [where for where, _ in result.not_applicable] == ["vision-digits (tiny) × gen-only × full-ft"]
    assert main(["sweep", str(path), "--dry-run", "--results", str(tmp_path / "r")]) == 0
    assert "not applicable, skipped: vision-digits (tiny) × gen-only × full-ft: defense 'gen-only'" in capsys.readouterr().out

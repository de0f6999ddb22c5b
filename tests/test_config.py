"""Config dataclasses: typed coercion, unknown keys, layering defaults < YAML < CLI, specs and run ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from bench.config import build_config, config_to_dict, field_docs
from bench.core.spec import RunSpec, make_spec
from bench.errors import ConfigError, DataError
from bench.plan.experiment import build_request


@dataclass(frozen=True, kw_only=True)
class Example:
    rate: float = 1e-3
    """Learning rate."""
    steps: int = 10
    """Number of steps."""
    mode: Literal["a", "b"] = "a"
    names: tuple[str, ...] = ("x",)
    flag: bool = False
    limit: int | None = None


def test_strings_are_coerced_by_field_type():
    cfg = build_config(Example, {"rate": "1e6", "steps": "20", "mode": "b", "names": "p,q", "flag": "true", "limit": "none"},
                       where="example")
    assert cfg == Example(rate=1e6, steps=20, mode="b", names=("p", "q"), flag=True, limit=None)
    assert build_config(Example, {"limit": "5"}, where="example").limit == 5


@pytest.mark.parametrize("key, value, fragment", [
    ("steps", "ten", "'steps'"),
    ("steps", "1.5", "'steps'"),
    ("rate", "fast", "'rate'"),
    ("rate", "nan", "'rate'"),
    ("mode", "c", "one of 'a', 'b'"),
    ("flag", "maybe", "'flag'"),
    ("steps", True, "boolean"),
])
def test_bad_values_name_the_key(key, value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_config(Example, {key: value}, where="example")


def test_unknown_key_suggests():
    with pytest.raises(ConfigError, match="unknown config key 'rte'.*Did you mean 'rate'"):
        build_config(Example, {"rte": 1}, where="example")


def test_roundtrip_and_docs():
    cfg = Example(names=("a", "b"))
    assert build_config(Example, config_to_dict(cfg), where="example") == cfg
    assert field_docs(Example)["rate"] == "Learning rate."


def test_layering_defaults_yaml_cli(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("task: vision-digits\ndefense: {name: specdef, args: {alpha: 1e5, k: 10}}\nseeds: [1, 2]\n")
    request = build_request(config=path)
    assert request.defense == "specdef"
    assert request.defense_args == {"alpha": "1e5", "k": 10}  # YAML 1.1 reads 1e5 as a string; the field type coerces it
    spec = make_spec(task=request.task, defense=request.defense, attack="full-ft", defense_args=request.defense_args)
    assert spec.defense.kwargs["alpha"] == 1e5 and spec.defense.kwargs["k"] == 10
    assert request.seeds == (1, 2)
    # CLI beats YAML, dotted overrides beat both
    request = build_request(config=path, defense=["specdef", "alpha=1e6"], overrides=["defense.k=3"], seeds="0")
    spec = make_spec(task=request.task, defense=request.defense, attack="full-ft", defense_args=request.defense_args)
    assert spec.defense.kwargs["alpha"] == 1e6 and spec.defense.kwargs["k"] == 3
    assert request.seeds == (0,)
    # argparse gives a dotted override typed after `--defense NAME` to the defense's list: it still lands right
    request = build_request(task=["vision-digits", "task.tau=0.5"], defense=["specdef", "k=4", "task.budget=40"])
    assert request.task_args == {"budget": "40", "tau": "0.5"} and request.defense_args == {"k": "4"}  # typed later
    # naming another defense on the CLI drops the file's args for the old one
    request = build_request(config=path, defense=["none"])
    assert request.defense == "none" and request.defense_args == {}


def test_experiment_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        build_request(config=tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: vision-digits\ndefence: specdef\n")
    with pytest.raises(ConfigError, match="unknown key 'defence'.*Did you mean 'defense'"):
        build_request(config=bad)
    with pytest.raises(ConfigError, match="no defense given"):
        build_request(task=["vision-digits"])
    with pytest.raises(ConfigError, match="key=value"):
        build_request(task=["vision-digits"], defense=["specdef", "alpha"])
    with pytest.raises(ConfigError, match="must look like"):
        build_request(task=["vision-digits"], defense=["specdef"], overrides=["alpha=3"])


def test_an_experiment_file_reports_every_problem_at_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: {name: vision-digits, arg: {}}\ndefence: specdef\nseeds: [0, -1]\nbaseline: maybe\n"
                   "search: lr_search\nmodel: 3\n")
    with pytest.raises(ConfigError) as err:
        build_request(config=bad)
    lines = str(err.value).splitlines()
    expected = ["experiment file: unknown key 'defence'. Did you mean 'defense'?",
                "experiment file: task: unknown keys ['arg']",
                "experiment file: seeds must be non-negative integers, got [0, -1]",
                "experiment file: baseline must be true or false, got str 'maybe'",
                "experiment file: search must be one of 'grid', 'lr-search' or null, got str 'lr_search'",
                "experiment file: model must be a string or null, got int 3"]
    for fragment in expected:
        assert sum(fragment in line for line in lines) == 1, (fragment, lines)
    assert len(lines) == len(expected)


@dataclass(frozen=True, kw_only=True)
class Inner:
    key: str
    weight: float = 1.0


@dataclass(frozen=True, kw_only=True)
class Outer:
    name: str
    inner: tuple[Inner, ...] = ()
    table: dict[str, int] | None = None
    flag: bool = False


def test_yaml_dataclass_names_nested_entries_and_checks_types():
    from bench.core.yaml_dataclass import build

    outer = build(Outer, {"name": "x", "inner": [{"key": "a", "weight": 2}], "table": {"b": 3}}, "f.yaml")
    assert outer == Outer(name="x", inner=(Inner(key="a", weight=2.0),), table={"b": 3})
    assert isinstance(outer.inner[0].weight, float)  # an int is a valid float, stored as one
    with pytest.raises(ConfigError) as err:
        build(Outer, {"nmae": "x", "inner": [{"key": "a", "wieght": 1}, {"weight": "heavy"}], "table": {"b": "3"},
                      "flag": "yes"}, "f.yaml")
    assert str(err.value).splitlines() == [
        "f.yaml: unknown key 'nmae'. Did you mean 'name'? Valid keys: name, inner, table, flag",
        "f.yaml: missing key 'name'",
        "f.yaml: inner[0] (a): unknown key 'wieght'. Did you mean 'weight'? Valid keys: key, weight",
        "f.yaml: inner[1]: missing key 'key'",
        "f.yaml: inner[1].weight must be a number, got str 'heavy'",
        "f.yaml: table.b must be an integer, got str '3'",
        "f.yaml: flag must be true or false, got str 'yes'",
    ]


def test_spec_resolution_and_identity():
    spec = make_spec(task="vision-digits", defense="specdef.a1e4-k25", attack="full-ft", attack_args={"lr": "1e-5"})
    assert spec.attack.kwargs["budget"] == 500  # filled from the task's default
    assert spec.defense.kwargs["alpha"] == 1e4
    assert spec.canonical_name == "vision-digits/tiny:defense=specdef.a1e4-k25,attack=full-ft(lr=1e-05),seed=0"
    same = make_spec(task="vision-digits", defense="specdef", attack="full-ft", attack_args={"lr": 1e-5, "budget": 500})
    assert same.run_id == spec.run_id  # the preset is a label; identical configs are the same run
    other = make_spec(task="vision-digits", defense="specdef", attack="full-ft", attack_args={"lr": 1e-5}, seed=1)
    assert other.run_id != spec.run_id
    assert RunSpec.from_json(spec.to_json()) == spec


def test_spec_errors():
    with pytest.raises(ConfigError, match="unknown config key 'alpah'.*'alpha'"):
        make_spec(task="vision-digits", defense="specdef", attack="full-ft", defense_args={"alpah": 1})
    with pytest.raises(ConfigError, match="alpha must be positive"):
        make_spec(task="vision-digits", defense="specdef", attack="full-ft", defense_args={"alpha": -1})
    with pytest.raises(ConfigError, match="no tier 'huge'"):
        make_spec(task="vision-digits", defense="none", attack="full-ft", tier="huge")
    with pytest.raises(ConfigError, match="needs --model"):
        make_spec(task="vision-digits", defense="none", attack="full-ft", tier="real")
    with pytest.raises(ConfigError, match="optimizer"):
        make_spec(task="vision-digits", defense="none", attack="full-ft", attack_args={"optimizer": "adagrad"})
    with pytest.raises(ConfigError, match="max_per_class must be >= 0, got -1"):
        make_spec(task="vision-digits", defense="none", attack="full-ft", task_args={"max_per_class": -1})


def test_attack_family_names_the_recipe_without_lr():
    adam = make_spec(task="vision-digits", defense="none", attack="full-ft", attack_args={"lr": 1e-3})
    adam_low = make_spec(task="vision-digits", defense="none", attack="full-ft", attack_args={"lr": 1e-9, "budget": 20})
    sgd = make_spec(task="vision-digits", defense="none", attack="full-ft", attack_args={"optimizer": "sgd"})
    assert adam.attack_family == adam_low.attack_family == "full-ft(optimizer=adam)"
    assert sgd.attack_family == "full-ft(optimizer=sgd)"
    collapse = make_spec(task="vision-digits", defense="none", attack="adaptive-collapse")
    assert collapse.attack_family == "adaptive-collapse(optimizer=adam)"


@pytest.mark.parametrize("tau", [0.0, -0.1, 1.5])
def test_every_tasks_harm_threshold_is_range_checked(tau):
    from bench.registry import TASKS

    for name in TASKS.names():  # harm is a fraction in [0, 1] for every task: tau outside (0, 1] is meaningless
        with pytest.raises(ConfigError, match=r"tau must be in \(0, 1\]"):
            TASKS.get(name).Config(tau=tau)

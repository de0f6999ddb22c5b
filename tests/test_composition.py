"""Composite defenses ``a+b``: equal to applying the parts by hand, deterministic, one spec with every part's config
(JSON round trip, run ids, labels, stage keys), per-part values from the CLI, YAML and sweep files, plugin files,
clear errors, and a composite defended stage saved to and read back from the stage cache."""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest
import torch

from bench import testing
from bench.cache import Cache
from bench.cli import main
from bench.core.composition import ComposedDefense, part_seeds, plugin_classes
from bench.core.spec import RunSpec, make_spec
from bench.errors import ConfigError, UnknownNameError
from bench.plan.experiment import build_request
from bench.plan.sweep import plan_file
from bench.registry import DEFENSES, load_plugin
from bench.run.results import read_metrics
from bench.run.stage_cache import StageStore
from bench.run.stages import Session

QUICK = ["task.budget=20", "task.curvature_iters=0", "task.bootstrap=0"]
TASK_ARGS = {"curvature_iters": 0, "bootstrap": 0, "budget": 20}

PLUGIN = '''
    """A user's defense: seeded weight noise, with a report and a loss curve."""
    from dataclasses import dataclass
    import torch
    from bench.contracts import Defense, DefenseResult
    from bench.registry import DEFENSES

    APPLIED = []

    @dataclass(frozen=True, kw_only=True)
    class NoiseConfig:
        scale: float = 1e-3
        """Standard deviation of the weight noise."""

    @DEFENSES.register("noise-user")
    class Noise(Defense):
        """Seeded weight noise."""
        Config = NoiseConfig
        preserves_function = False
        preservation_tol = 0.5
        drift_hint = "lower the scale"

        def apply(self, model, view, cfg, *, generator):
            APPLIED.append(cfg.scale)
            names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=generator) * cfg.scale)
            return DefenseResult(model=model, layers=names, info={"scale": cfg.scale},
                                 curve=[{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}])
'''


@pytest.fixture
def plugin(tmp_path, isolated_registries):
    """The path of a plugin file defining ``noise-user``, loaded; returns (path, its module's APPLIED list)."""
    import sys

    path = tmp_path / "noise_plugin.py"
    path.write_text(textwrap.dedent(PLUGIN))
    load_plugin(path)
    module = sys.modules[DEFENSES.get("noise-user").__module__]
    return path, module.APPLIED


def _apply(name, args, seed, model):
    spec = make_spec(task="vision-digits", defense=name, attack="full-ft", defense_args=args)
    cls = DEFENSES.get(spec.defense.name)
    return cls().apply(model, testing.tiny_view(), spec.configs()[1], generator=torch.Generator().manual_seed(seed))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_composite_equals_its_parts_applied_by_hand_in_order(plugin):
    released = testing.tiny_mlp()
    args = {"noise-user.scale": "0.01", "specdef": {"alpha": 100.0, "n_layers": 1}}
    composed = _apply("noise-user+specdef", args, seed=7, model=_copy(released))

    seeds = part_seeds(torch.Generator().manual_seed(7), 2)  # the parts' generators, drawn from the run's
    by_hand = _copy(released)
    noise, specdef = DEFENSES.get("noise-user"), DEFENSES.get("specdef")
    first = noise().apply(by_hand, testing.tiny_view(), noise.Config(scale=0.01),
                          generator=torch.Generator().manual_seed(seeds[0]))
    second = specdef().apply(first.model, testing.tiny_view(), specdef.Config(alpha=100.0, n_layers=1),
                             generator=torch.Generator().manual_seed(seeds[1]))
    mine, theirs = _state(composed.model), _state(second.model)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert len(second.layers) == 1 and len(mine) > len(released.state_dict())  # specdef added its compensation map

    # the report: every layer once, each part's info, layers and seconds under its name, prefixed curve terms
    assert list(composed.layers) == list(first.layers)  # specdef's one layer is among the noised ones
    assert set(composed.info) == {"noise-user", "specdef"}
    assert composed.info["noise-user"]["info"] == {"scale": 0.01}
    assert composed.info["specdef"]["layers"] == list(second.layers)
    assert all(composed.info[p]["seconds"] >= 0 for p in composed.info)
    assert "per_layer" in composed.info["specdef"]["info"]
    assert [dict(p) for p in composed.curve] == [{"step": 0, "noise-user/loss": 1.0}, {"step": 1, "noise-user/loss": 0.5}]


def _copy(model):
    import copy

    return copy.deepcopy(model)


def test_a_composite_is_deterministic_under_the_seed(plugin):
    released = testing.tiny_mlp()
    args = {"specdef.n_layers": "1"}
    a, b, c = (_apply("noise-user+specdef", args, seed, _copy(released)).model for seed in (3, 3, 4))
    x = torch.randn(8, testing.TINY_MLP_SIZES[0], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(a(x), b(x)) and not torch.equal(a(x), c(x))


def test_composite_class_attributes_combine_the_parts(plugin):
    cls = DEFENSES.get("noise-user+specdef")
    assert issubclass(cls, ComposedDefense) and cls is DEFENSES.get("noise-user+specdef")  # one class per combination
    assert plugin_classes(cls) == (DEFENSES.get("noise-user"), DEFENSES.get("specdef"))
    assert not cls.preserves_function and cls.changes_weights
    assert cls.preservation_tol == pytest.approx(0.5 + DEFENSES.get("specdef").preservation_tol)
    assert cls.drift_hint.startswith("noise-user: lower the scale; specdef: ")
    both = DEFENSES.get("none+specdef")
    assert both.preserves_function and both.changes_weights and both.preservation_tol == DEFENSES.get("specdef").preservation_tol
    assert not any("+" in name for name in DEFENSES.names())  # composites are not registered: `bench ls` omits them


def test_the_spec_holds_every_part_and_round_trips():
    spec = make_spec(task="vision-digits", defense="none+specdef.a1e4-k25", attack="full-ft",
                     defense_args={"specdef.alpha": "1e6"})
    parts = spec.to_json()["defense"]["args"]["parts"]
    assert [(p["name"], p["preset"]) for p in parts] == [("none", None), ("specdef", "a1e4-k25")]
    assert parts[1]["args"]["alpha"] == 1e6 and parts[1]["args"]["k"] == 25  # the full resolved config
    assert spec.defense.label == "none+specdef.a1e4-k25"
    assert spec.defense_label == "none+specdef.a1e4-k25(alpha=1e+06)"
    assert "defense=none+specdef.a1e4-k25(alpha=1e+06)" in spec.canonical_name
    again = RunSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again == spec and again.run_id == spec.run_id and again.configs()[1] == spec.configs()[1]

    # presets are labels: the same values spelled out are the same run; another part config is another run
    spelled = make_spec(task="vision-digits", defense="none+specdef", attack="full-ft",
                        defense_args={"specdef": {"alpha": 1e6, "k": 25}})
    assert spelled.run_id == spec.run_id and spelled.defense.hash() == spec.defense.hash()
    assert spelled.stage_key("defended") == spec.stage_key("defended")
    other = make_spec(task="vision-digits", defense="none+specdef", attack="full-ft", defense_args={"specdef.alpha": 1e5})
    alone = make_spec(task="vision-digits", defense="specdef", attack="full-ft", defense_args={"alpha": 1e6})
    assert len({spec.run_id, other.run_id, alone.run_id}) == 3
    assert len({spec.stage_key("defended"), other.stage_key("defended"), alone.stage_key("defended")}) == 3


def test_per_part_values_from_the_command_line_and_yaml(tmp_path):
    request = build_request(task=["vision-digits"], defense=["none+specdef", "specdef.alpha=1e6"],
                            overrides=["defense.specdef.k=5"])
    spec = make_spec(task=request.task, defense=request.defense, attack="full-ft", defense_args=request.defense_args)
    assert spec.configs()[1].parts[1].config.alpha == 1e6 and spec.configs()[1].parts[1].config.k == 5

    config = tmp_path / "exp.yaml"
    config.write_text("task: vision-digits\ndefense: {name: none+specdef, args: {specdef: {alpha: 1.0e+3, k: 3}}}\n")
    request = build_request(config=config, overrides=["defense.specdef.alpha=10"])  # the command line wins
    spec = make_spec(task=request.task, defense=request.defense, attack="full-ft", defense_args=request.defense_args)
    assert (spec.configs()[1].parts[1].config.alpha, spec.configs()[1].parts[1].config.k) == (10.0, 3)


@pytest.mark.parametrize("defense, args, error, fragment", [
    ("none+specdeff", {}, UnknownNameError, "Did you mean 'specdef'"),
    ("none+specdef.a1e4-k52", {}, UnknownNameError, "Did you mean 'specdef.a1e4-k25'"),
    ("none+specdef", {"alpha": 1}, ConfigError, "must name its part: specdef.alpha="),
    ("none+specdef", {"specdf.alpha": 1}, ConfigError, "Did you mean 'specdef'"),
    ("none+specdef", {"specdef.alpah": 1}, ConfigError, "unknown config key 'alpah' for defense 'specdef'"),
    ("none+specdef", {"specdef.alpha": "big"}, ConfigError, "bad value for 'alpha'"),
    ("specdef+specdef", {}, ConfigError, "more than once"),
    ("none++specdef", {}, ConfigError, "empty part"),
])
def test_bad_parts_and_keys_are_clear_errors(defense, args, error, fragment):
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        make_spec(task="vision-digits", defense=defense, attack="full-ft", defense_args=args)


def test_cli_errors_and_sweep_files(tmp_path, capsys):
    assert main(["run", "--defense", "none+specdf", "--task", "vision-digits"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'specdef'" in err and "Traceback" not in err
    grid = tmp_path / "grid.yaml"
    grid.write_text(textwrap.dedent("""
        tasks: [{name: vision-digits, args: {budget: 20}}]
        defenses: [none+specdef, {name: none+specdef.a1e4-k25, args: {specdef: {alpha: 1.0e+6}}}]
        attacks: [{name: full-ft, args: {optimizer: adam, lr: 1.0e-2}}]
    """))
    runs = [spec for planned in plan_file(grid).suites for spec in planned.runs]
    assert sorted(spec.defense_label for spec in runs) == ["none", "none+specdef", "none+specdef.a1e4-k25(alpha=1e+06)"]
    assert main(["validate", str(grid)]) == 0
    grid.write_text(grid.read_text().replace("{specdef: {alpha", "{specdef: {alfa"))
    assert main(["validate", str(grid)]) == 2
    assert "unknown config key 'alfa'" in capsys.readouterr().out


def test_a_plugin_file_composes_end_to_end(tmp_path, capsys, plugin):
    path, applied = plugin
    results = tmp_path / "results"
    assert main(["run", "--plugin", str(path), "--defense", "noise-user+specdef", "noise-user.scale=0",
                 "specdef.alpha=100", "--task", "vision-digits", "--attack", "full-ft", "optimizer=adam", "lr=1e-2",
                 "--no-baseline", "--results", str(results), "--quiet", "--jobs", "1", *QUICK]) == 0
    assert applied == [0.0]
    capsys.readouterr()
    (run_dir,) = [p.parent for p in results.glob("*/run.json")]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "success"
    assert [p["name"] for p in info["spec"]["defense"]["args"]["parts"]] == ["noise-user", "specdef"]
    assert set(info["defense_report"]["info"]) == {"noise-user", "specdef"}
    rows = read_metrics(results).to_pandas()
    assert set(rows["defense"]) == {"noise-user+specdef"}
    assert set(rows["defense_label"]) == {"noise-user(scale=0)+specdef(alpha=100)"}
    config = json.loads(rows["defense_config"].iloc[0])
    assert config["parts"][0]["args"] == {"scale": 0.0} and config["parts"][1]["args"]["alpha"] == 100.0
    assert set(rows.loc[rows["phase"] == "defense", "metric"]) == {"noise-user/loss"}
    assert main(["show", str(run_dir)]) == 0
    assert "defense=noise-user(scale=0)+specdef(alpha=100)" in capsys.readouterr().out


@pytest.fixture
def fresh_cache(tmp_path, cache):
    """A cache with no stages, holding a copy of the session cache's tiny vision-digits model (so nothing retrains)."""
    spec = make_spec(task="vision-digits", defense="none", attack="full-ft", task_args=TASK_ARGS)
    Session(tmp_path / "warm", cache, stage_cache=False, progress=False).released(spec)
    root = tmp_path / "cache"
    # (the session cache may be shared with other pytest-xdist workers: skip their unfinished ".<entry>.<random>"
    # temporary entries, which can vanish mid-copy)
    shutil.copytree(cache.root / "vision-digits", root / "vision-digits", ignore=shutil.ignore_patterns(".*.*"))
    return Cache(root)


def test_a_composite_defended_stage_is_saved_and_read_back(tmp_path, fresh_cache, plugin):
    _, applied = plugin
    spec = make_spec(task="vision-digits", defense="noise-user+specdef", attack="full-ft", task_args=TASK_ARGS,
                     defense_args={"noise-user.scale": 1e-3, "specdef.alpha": 100.0, "specdef.n_layers": 2})
    first = Session(tmp_path / "a", fresh_cache, progress=False).defended(spec)
    (entry,) = [e for e in StageStore(fresh_cache).entries() if e.kind == "defended"]
    assert entry.defense == spec.defense_label and len(applied) == 1
    again = Session(tmp_path / "b", fresh_cache, progress=False)
    second = again.defended(spec)
    assert len(applied) == 1  # read from disk, not applied again
    x = again.released(spec).task.splits["eval_benign"].x
    with torch.no_grad():
        assert torch.equal(first.model(x), second.model(x))
    assert second.report.info == json.loads(json.dumps(first.report.info))
    assert list(second.report.layers) == list(first.report.layers)

    # another part config is another entry
    other = make_spec(task="vision-digits", defense="noise-user+specdef", attack="full-ft", task_args=TASK_ARGS,
                      defense_args={"noise-user.scale": 2e-3, "specdef.alpha": 100.0, "specdef.n_layers": 2})
    Session(tmp_path / "c", fresh_cache, progress=False).defended(other)
    assert len(applied) == 2 and len([e for e in StageStore(fresh_cache).entries() if e.kind == "defended"]) == 2

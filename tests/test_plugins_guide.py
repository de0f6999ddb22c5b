"""The plugin authors' guide (docs/plugins.md) and its examples: the three example plugins pass `bench check` and run
end to end; `bench check` reports every failed check with its reason; a task learns which baselines run on it; the
guide's claims about the examples match what the code does; `bench ls -v` shows the class's docstring."""

from __future__ import annotations

import ast
import re
import sys
import textwrap
from pathlib import Path

import pytest

from bench.cli import main
from bench.registry import REGISTRIES
from bench.run.results import read_metrics

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
GUIDE = ROOT / "docs" / "plugins.md"
EXAMPLE_FILES = [EXAMPLES / "my_task.py", EXAMPLES / "my_defense.py", EXAMPLES / "my_attack.py"]
STABLE_API = {"bench.contracts", "bench.registry", "bench.config", "bench.errors", "bench.modelio", "bench.cache",
              "bench.testing"}


@pytest.fixture
def plugin_files():
    """Registries and imported plugin files restored afterwards: each test loads the example files afresh."""
    states = {name: reg.snapshot() for name, reg in REGISTRIES.items()}
    modules = set(sys.modules)
    yield
    for name in set(sys.modules) - modules:
        if name.startswith("bench_user_plugin_"):
            del sys.modules[name]
    for name, reg in REGISTRIES.items():
        reg.restore(states[name])


def run_cli(*argv) -> int:
    return main([str(a) for a in argv])


def plugin_args(*files: Path) -> list[str]:
    return [arg for f in files for arg in ("--plugin", str(f))]


def test_the_examples_pass_bench_check(plugin_files, capsys):
    assert run_cli("check", *plugin_args(*EXAMPLE_FILES)) == 0
    out = capsys.readouterr().out
    assert "checking defense harm-ascent, attack sign-sgd, task my-blobs" in out
    for line in ("ok    defense harm-ascent: contract on a tiny MLP", "ok    defense harm-ascent: on vision-digits",
                 "ok    attack sign-sgd: monitor protocol on vision-digits", "ok    task my-blobs: contract on the tiny",
                 "ok    task my-blobs: full-ft attacks it", "ok    task my-blobs: built-in baselines"):
        assert line in out
    # each check says what it verified, not only "ok"
    assert "bit-identical under a seed" in out and "steps 1..3 with finite losses, stops when told" in out
    # the file's defense and attack also run on the file's task
    assert "ok    defense harm-ascent: on my-blobs's defender view" in out
    assert "ok    attack sign-sgd: monitor protocol on my-blobs" in out
    assert "8 check(s) passed, 0 failed" in out and "FAIL" not in out
    # the guide's sample output of `bench check --plugin docs/examples/my_task.py` is what the command prints today
    # (timings aside; its header and count lines are those of a check of that file alone)
    sample = GUIDE.read_text().split("$ bench check --plugin docs/examples/my_task.py\n")[1].split("```")[0]
    shown = [line for line in sample.splitlines()
             if line.strip() != "..." and not line.startswith(("checking ", "3 check(s) passed"))]
    assert len(shown) >= 15
    timeless = lambda text: re.sub(r"\(\d+\.\d s\)", "(_ s)", text)  # noqa: E731
    printed = set(timeless(out).splitlines())
    for line in shown:
        assert timeless(line) in printed, f"the guide shows a line bench check no longer prints: {line!r}"


def test_the_examples_run_end_to_end(plugin_files, tmp_path, capsys):
    """The guide's three plugins together in one `bench run`: the example defense on the example task, attacked by
    the example attack, next to the undefended baseline."""
    results = tmp_path / "results"
    code = run_cli("run", *plugin_args(*EXAMPLE_FILES), "--task", "my-blobs", "--defense", "harm-ascent",
                   "--attack", "sign-sgd", "lr=1e-2", "--jobs", "1", "--quiet", "--results", results,
                   "task.curvature_iters=0", "task.bootstrap=50")
    out = capsys.readouterr().out
    assert code == 0, out
    runs = read_metrics(results).to_pandas().drop_duplicates("run_id")
    assert set(runs["defense"]) == {"none", "harm-ascent"} and set(runs["attack"]) == {"sign-sgd"}
    assert set(runs["status"]) == {"success"}
    # the example attack harms the undefended example task within its budget (a task an attack cannot move would
    # make every defense look perfect)
    assert re.search(r"^none\s+\d+\s+sign-sgd", out, re.MULTILINE), out


@pytest.fixture
def broken_plugins(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text(textwrap.dedent('''
        """Plugins with mistakes bench check must find."""
        from dataclasses import dataclass
        import torch
        from bench.contracts import Attack, AttackConfig, AttackReport, Defense, DefenseResult
        from bench.registry import ATTACKS, DEFENSES

        @dataclass(frozen=True, kw_only=True)
        class Cfg:
            pass

        @DEFENSES.register("unseeded-noise")
        class UnseededNoise(Defense):
            """Claims to keep the function, adds noise drawn without the generator."""
            Config = Cfg
            def apply(self, model, view, cfg, *, generator):
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(torch.randn(p.shape))
                return DefenseResult(model=model)

        @DEFENSES.register("crashing")
        class Crashing(Defense):
            """Raises inside its own code."""
            Config = Cfg
            def apply(self, model, view, cfg, *, generator):
                return view.no_such_field

        @dataclass(frozen=True, kw_only=True)
        class AttackCfg(AttackConfig):
            pass

        @ATTACKS.register("quitter")
        class Quitter(Attack):
            """Never tells the monitor anything."""
            Config = AttackCfg
            def run(self, model, task, cfg, *, generator, monitor):
                return AttackReport()
    '''))
    return path


def test_bench_check_lists_every_failed_check_with_its_reason(plugin_files, broken_plugins, capsys):
    code = run_cli("check", "--plugin", broken_plugins)
    captured = capsys.readouterr()
    assert code == 1
    out = captured.out
    assert "Traceback" not in out + captured.err
    assert "FAIL  defense unseeded-noise: contract on a tiny MLP" in out and "not deterministic under a seed" in out
    assert "FAIL  attack quitter: monitor protocol on vision-digits" in out and "monitor.begin must come once" in out
    # an exception in the plugin's own code names its line in the plugin file
    assert "FAIL  defense crashing: contract on a tiny MLP" in out
    assert re.search(r"AttributeError: .*no_such_field.* \(at .*broken\.py:\d+, in apply\)", out), out
    # every check ran: the other checks of the same plugins are reported too (passed ones with what they verified)
    assert out.count("FAIL  ") >= 5  # 3 plugins, each failing on the MLP or the monitor and on vision-digits
    assert "check(s) passed" in out and "\n  FAIL defense crashing: contract on a tiny MLP" in out


def test_bench_check_on_a_plugin_that_does_not_register_is_a_failed_check_not_a_traceback(plugin_files, tmp_path,
                                                                                          capsys):
    path = tmp_path / "mutable.py"
    path.write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from bench.contracts import Defense, DefenseResult
        from bench.registry import DEFENSES

        @dataclass
        class Cfg:
            scale: float = 1.0

        @DEFENSES.register("mutable-config")
        class Mutable(Defense):
            Config = Cfg
            def apply(self, model, view, cfg, *, generator):
                return DefenseResult(model=model)
    '''))
    code = run_cli("check", "--plugin", path)
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.out + captured.err
    assert f"FAIL  plugin {path}: imports and registers its plugins" in captured.out
    assert "must be frozen" in captured.out
    assert run_cli("check") == 2 and "needs --plugin" in capsys.readouterr().err
    assert run_cli("check", "--plugin", tmp_path / "typo.py") == 2
    assert "plugin file not found" in capsys.readouterr().err


def test_check_task_reports_the_baselines_the_guide_says(plugin_files, cache):
    """check_task on the example task names the baselines that run and why each other cannot; the guide's table of
    what each built-in defense needs agrees with what happens on a task that provides only the required parts."""
    from bench import testing
    from bench.check.task_support import baseline_fits, builtin_defenses
    from bench.registry import load_plugin

    load_plugin(EXAMPLES / "my_task.py")
    fits = {fit.defense: fit for fit in baseline_fits("my-blobs", cache)}
    assert set(fits) == set(builtin_defenses())
    assert {name for name, fit in fits.items() if fit.runs} == {"none", "specdef", "specdef-nocomp"}
    assert {name for name, fit in fits.items() if not fit.applicable} == {"imma", "npo", "rmu"}
    assert "aligned_loss" in fits["booster"].reason and "DefenderView.attacker" in fits["ga-retain"].reason

    guide = GUIDE.read_text()
    table = guide.split("**What each built-in defense needs from a task**")[1].split("\n\n")[1]
    rows = [row.split("|")[1:-1] for row in table.splitlines()[2:]]
    assert rows, "the guide's table of what each defense needs is missing"
    covered = set()
    for names, settings, needs in rows:
        for name in re.findall(r"`([a-z][a-z0-9-]*)`", names):
            if name not in fits:
                continue  # a preset (tar.sophon) runs the same code
            covered.add(name)
            fit = fits[name]
            if "classification" not in settings and settings.strip() != "all":
                assert not fit.applicable, f"the guide says {name} applies to {settings.strip()} tasks"
                continue
            needed = re.findall(r"`([a-z_]+)`", needs)
            if not needed:  # "nothing", or the model's own layers
                assert fit.runs, f"the guide says {name} needs nothing of the task's view; it failed: {fit.reason}"
            else:
                assert not fit.runs and any(n in fit.reason for n in needed), (
                    f"the guide says {name} needs {needed}; on a task without them: {fit.reason or 'it runs'}")
    assert covered == set(fits), f"the guide's table misses {sorted(set(fits) - covered)}"
    running = sorted(name for name, fit in fits.items() if fit.runs)
    applicable = [fit for fit in fits.values() if fit.applicable]
    assert (len(running), len(applicable)) == (3, 9)
    assert "three of the nine baselines that apply to it run" in " ".join(guide.split())
    assert "(" + ", ".join(f"`{name}`" for name in running) + ")" in guide

    passed = testing.check_task("my-blobs", cache)
    assert any(line.startswith("baselines: 3 of the 9 built-in defenses that apply to it run on it") for line in passed)
    assert any("booster: cannot run:" in line and "aligned_loss" in line for line in passed)


def test_the_examples_import_only_the_stable_plugin_api():
    documented = set(re.findall(r"^\| `(bench\.[a-z_.]+)` \|", GUIDE.read_text(), re.MULTILINE))
    assert documented == STABLE_API
    for path in EXAMPLE_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in (
                    "bench", "defenses", "attacks", "tasks", "leaderboard"):
                assert node.module in STABLE_API, f"{path.name} imports {node.module}, outside the plugin API"


def test_ls_verbose_shows_the_class_docstring_not_the_module_docstring(plugin_files, tmp_path, capsys):
    path = tmp_path / "documented.py"
    path.write_text(textwrap.dedent('''
        """Module docstring: helpers and notes for maintainers."""
        from dataclasses import dataclass
        from bench.contracts import Defense, DefenseResult
        from bench.registry import DEFENSES

        @dataclass(frozen=True, kw_only=True)
        class Cfg:
            pass

        @DEFENSES.register("documented")
        class Documented(Defense):
            """Documented: a defense that does nothing,
            described over two lines.

            Second paragraph: details that -v leaves to the source.
            """
            Config = Cfg
            def apply(self, model, view, cfg, *, generator):
                return DefenseResult(model=model)
    '''))
    assert run_cli("ls", "defenses", "documented", "-v", "--plugin", path) == 0
    out = capsys.readouterr().out
    assert "described over two lines." in out
    assert "Module docstring" not in out and "Second paragraph" not in out


def test_bench_check_runs_each_plugin_on_the_tasks_it_applies_to(plugin_files, tmp_path, cache):
    """Planned without running: a modality-specific defense is checked on the first task of its setting, the
    example defense on vision-digits and on the example task registered beside it; --task narrows to fitting tasks."""
    from bench.check.plugin_check import load_plugins, plan_checks
    from bench.errors import ConfigError

    path = tmp_path / "chat_only.py"
    path.write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from bench.contracts import Defense, DefenseResult
        from bench.registry import DEFENSES

        @dataclass(frozen=True, kw_only=True)
        class Cfg:
            pass

        @DEFENSES.register("chat-only")
        class ChatOnly(Defense):
            """Applies to chat tasks only."""
            Config = Cfg
            settings = frozenset({"chat"})
            def apply(self, model, view, cfg, *, generator):
                return DefenseResult(model=model)
    '''))
    plugins, failures = load_plugins([str(path), str(EXAMPLES / "my_task.py"), str(EXAMPLES / "my_defense.py")])
    assert not failures
    labels = {(p.name, label) for p, label, _ in plan_checks(plugins, cache, tmp_path)}
    assert ("chat-only", "on llm-harmful-qa's defender view") in labels
    assert not any(name == "chat-only" and "vision-digits" in label for name, label in labels)
    assert {("harm-ascent", "on vision-digits's defender view"), ("harm-ascent", "on my-blobs's defender view")} <= labels
    with pytest.raises(ConfigError, match="chat-only.*applies to none of the tasks given"):
        plan_checks(plugins, cache, tmp_path, tasks=["vision-digits"])


def test_the_example_task_caches_its_released_model(plugin_files, tmp_path):
    """The guide's worked use of `Cache.get_or_build`: the released model is trained once per key (every config value
    it depends on), read back bit for bit on the next build, and a changed release config trains another one."""
    import torch

    from bench.cache import Cache
    from bench.config import build_config
    from bench.registry import TASKS, load_plugin

    load_plugin(EXAMPLES / "my_task.py")
    cls, cache = TASKS.get("my-blobs"), Cache(tmp_path / "cache")

    def build(**args):
        cfg = build_config(cls.Config, {"release_steps": 20, **args}, where="test")
        return cls().build(cfg, tier="tiny", model=None, cache=cache, device=torch.device("cpu"))

    first, again = build(), build()
    entries = sorted(p.parent.relative_to(cache.root).as_posix() for p in cache.root.rglob(".complete"))
    assert entries == ["my-blobs/tiny/v1/dim16-hidden32-per64-steps20"]
    for (name, a), (_, b) in zip(first.model.state_dict().items(), again.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert not first.model.training
    other = build(release_steps=21)  # another recipe: another entry, another model
    assert len(list(cache.root.rglob(".complete"))) == 2
    assert not torch.equal(other.model.state_dict()["net.0.weight"], first.model.state_dict()["net.0.weight"])
    # the released model is one artefact: the global RNG's state before the build does not change it
    torch.manual_seed(123)
    fresh = cls().build(build_config(cls.Config, {"release_steps": 20}, where="test"), tier="tiny", model=None,
                        cache=Cache(tmp_path / "other-cache"), device=torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(fresh.model.state_dict().values(), first.model.state_dict().values()))


def test_bench_check_fails_a_task_on_which_the_applicable_baselines_crash(plugin_files, tmp_path, capsys):
    """A baseline that applies to a task but fails on it with the task's own error is a failed check naming the error
    and the task's line (0 of 9 baselines running is not 'ok'); baselines of other settings stay information."""
    source = (EXAMPLES / "my_task.py").read_text()
    good = 'return model(self.splits["eval_benign"][0])'
    assert source.count(good) == 1 and source.count('"my-blobs"') >= 2
    path = tmp_path / "broken_blobs.py"
    path.write_text(source.replace('"my-blobs"', '"broken-blobs"').replace(
        good, 'return model(*self.splits["eval_benign"])  # a bug: forward gets the labels too'))
    code = run_cli("check", "--plugin", path)
    out = capsys.readouterr().out
    assert code == 1, out
    assert "ok    task broken-blobs: contract on the tiny tier" in out  # the contract check never calls it
    assert "FAIL  task broken-blobs: built-in baselines (default configs)" in out
    assert "9 built-in defense(s) that apply to this task fail on it with an error" in out
    assert re.search(r"none: FAILS: TypeError: .* \(at .*broken_blobs\.py:\d+, in reference_outputs\)", out), out
    assert re.search(r"imma: cannot run: not applicable", out), out
    assert "2 check(s) passed, 1 failed" in out


def test_a_failure_reason_names_the_plugins_line_not_the_harness(tmp_path):
    """An error raised inside the harness on the plugin's behalf (here bench.config.check) is reported at the plugin's
    own line, the one its author can fix."""
    import importlib.util

    from bench.check.reasons import reason

    path = tmp_path / "validating.py"
    path.write_text("from bench.config import check\n\n\ndef validate():\n    check(False, 'lr must be positive')\n")
    spec = importlib.util.spec_from_file_location("validating_plugin", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(Exception) as caught:
        module.validate()
    assert reason(caught.value) == f"ConfigError: lr must be positive (at {path}:5, in validate)"

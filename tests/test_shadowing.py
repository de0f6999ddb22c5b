"""No silent shadowing: a taken name (built-in or another plugin) cannot be registered again, whatever the order;
``override=True`` is the only way, and it is recorded in the run's provenance and shown by ``bench ls``."""

from __future__ import annotations

import json
import textwrap

import pytest

from bench.cli import main
from bench.errors import PluginError
from bench.registry import DEFENSES, Registry, load_plugin


def _plugin(tmp_path, name: str, override: bool = False, file: str = "shadow.py"):
    path = tmp_path / file
    path.write_text(textwrap.dedent(f'''
        from dataclasses import dataclass
        from bench.contracts import Defense, DefenseResult
        from bench.registry import DEFENSES

        @dataclass(frozen=True, kw_only=True)
        class Cfg:
            pass

        @DEFENSES.register({name!r}{", override=True" if override else ""})
        class Impostor(Defense):
            """Does nothing, under another plugin's name."""
            Config = Cfg
            def apply(self, model, view, cfg, *, generator):
                return DefenseResult(model=model)
    '''))
    return path


def test_a_plugin_file_loaded_before_discovery_cannot_take_a_builtin_name(tmp_path, isolated_registries):
    DEFENSES.restore(({}, False))  # as in a fresh process: the built-ins not looked at yet
    with pytest.raises(PluginError) as err:
        load_plugin(_plugin(tmp_path, "specdef"))
    message = str(err.value)
    assert "'specdef' is already registered by built-in defenses.specdef:SpecDef" in message
    assert "Impostor at" in message and "shadow.py" in message and "override=True" in message
    assert DEFENSES.origin("specdef") == "built-in defenses.specdef:SpecDef"


@pytest.mark.parametrize("command", [["ls", "defenses"],
                                     ["run", "--defense", "specdef", "--task", "vision-digits", "--attack", "full-ft"]])
def test_every_command_refuses_a_plugin_file_that_registers_specdef(tmp_path, capsys, isolated_registries, command):
    code = main([*command, "--plugin", str(_plugin(tmp_path, "specdef")), "--results", str(tmp_path / "r")]
                if command[0] == "run" else [*command, "--plugin", str(_plugin(tmp_path, "specdef"))])
    err = capsys.readouterr().err
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "built-in defenses.specdef:SpecDef" in line and "shadow.py" in line
    assert not (tmp_path / "r").exists()  # nothing ran


def test_a_lazy_target_cannot_take_a_builtin_name_but_may_override_it(isolated_registries):
    with pytest.raises(PluginError, match=r"'specdef' is already registered by built-in defenses.specdef:SpecDef; "
                                          r"my_module:Thing cannot register"):
        DEFENSES.register("specdef", target="my_module:Thing")
    DEFENSES.register("specdef", target="my_module:Thing", override=True)
    assert DEFENSES.origin("specdef") == "my_module:Thing; OVERRIDES built-in defenses.specdef:SpecDef"


def test_two_plugin_files_cannot_share_a_name(tmp_path, isolated_registries):
    load_plugin(_plugin(tmp_path, "twin-def", file="first.py"))
    with pytest.raises(PluginError, match=r"'twin-def' is already registered by Impostor at .*first\.py:\d+; "
                                          r"Impostor at .*second\.py:\d+ cannot"):
        load_plugin(_plugin(tmp_path, "twin-def", file="second.py"))


def test_an_entry_point_cannot_take_a_builtin_name_in_any_command(tmp_path, monkeypatch):
    dist = tmp_path / "shadowpkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shadowpkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[bench.defenses]\nspecdef = shadowpkg:SpecDef\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fresh = Registry("defense", "bench.contracts:Defense", "bench.defenses",
                     lambda: [("specdef", "defenses.specdef:SpecDef", "SpecDef")])
    for _ in range(2):  # not only the first look: every command that uses the registry
        with pytest.raises(PluginError, match=r"built-in defenses.specdef:SpecDef; entry point shadowpkg==0.1, "
                                              r"shadowpkg:SpecDef cannot register"):
            fresh.names()


def test_override_replaces_a_builtin_and_every_run_records_it(tmp_path, capsys, isolated_registries):
    plugin = _plugin(tmp_path, "specdef", override=True, file="override.py")
    assert main(["ls", "defenses", "specdef", "--plugin", str(plugin)]) == 0
    assert "OVERRIDES built-in defenses.specdef:SpecDef" in capsys.readouterr().out
    from defenses.specdef import SpecDef

    DEFENSES.register("specdef")(SpecDef)  # the built-in's module imported later (another built-in needs it)
    assert DEFENSES.get("specdef").__name__ == "Impostor"  # the override stays
    results = tmp_path / "results"
    assert main(["run", "--plugin", str(plugin), "--defense", "specdef", "--task", "vision-digits", "--attack",
                 "full-ft", "--no-baseline", "--results", str(results), "--quiet", "--jobs", "1", "task.budget=10",
                 "task.curvature_iters=0", "task.bootstrap=0"]) == 0
    (run_json,) = results.glob("*/run.json")
    info = json.loads(run_json.read_text())
    (line,) = info["provenance"]["overrides"]
    assert line.startswith("defense 'specdef' (") and "override.py" in line
    assert line.endswith("overrides built-in defenses.specdef:SpecDef")
    (specdef,) = [p for p in info["fingerprint"]["plugins"] if p["kind"] == "defense"]
    assert specdef["builtin"] is False and specdef["overrides"] == "built-in defenses.specdef:SpecDef"

"""Registry behaviour: registration, lazy targets, presets, entry points, plugin files and clear errors."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import pytest

from bench.contracts import Defense, DefenseResult
from bench.errors import PluginError, UnknownNameError
from bench.registry import DEFENSES, TASKS, Registry, load_plugin


@dataclass(frozen=True, kw_only=True)
class _Cfg:
    strength: float = 1.0


def _defense_class():
    class Dummy(Defense):
        """A dummy defense."""

        Config = _Cfg
        presets = {"strong": {"strength": 10.0}}

        def apply(self, model, view, cfg, *, generator):
            return DefenseResult(model=model)

    return Dummy


def test_decorator_registers_and_resolves(isolated_registries):
    cls = DEFENSES.register("dummy-def")(_defense_class())
    assert DEFENSES.get("dummy-def") is cls
    assert "dummy-def" in DEFENSES.names("dummy*")
    assert DEFENSES.summary("dummy-def") == "A dummy defense."
    assert "test_registry.py" in DEFENSES.origin("dummy-def")


def test_presets_resolve_with_their_args(isolated_registries):
    DEFENSES.register("dummy-def")(_defense_class())
    resolved = DEFENSES.resolve("dummy-def.strong")
    assert resolved.preset == "strong" and resolved.preset_args == {"strength": 10.0}
    assert resolved.label == "dummy-def.strong"
    with pytest.raises(UnknownNameError, match="dummy-def.strong"):
        DEFENSES.resolve("dummy-def.strnog")


def test_duplicate_name_is_an_error(isolated_registries):
    DEFENSES.register("dummy-def")(_defense_class())
    with pytest.raises(PluginError, match="already registered"):
        DEFENSES.register("dummy-def")(_defense_class())


def test_unknown_name_suggests_and_lists():
    with pytest.raises(UnknownNameError) as err:
        DEFENSES.get("specdf")
    message = str(err.value)
    assert "Did you mean 'specdef'" in message
    assert "none" in message and "specdef-nocomp" in message


def test_names_must_be_kebab_case(isolated_registries):
    with pytest.raises(PluginError, match="lower-kebab-case"):
        DEFENSES.register("My_Defense")


def test_contract_is_validated(isolated_registries):
    class NotADefense:
        Config = _Cfg

    with pytest.raises(PluginError, match="must subclass"):
        DEFENSES.register("bad-one")(NotADefense)

    @dataclass(kw_only=True)
    class Mutable:
        x: int = 1

    cls = _defense_class()
    cls.Config = Mutable
    with pytest.raises(PluginError, match="frozen"):
        DEFENSES.register("bad-two")(cls)

    @dataclass(frozen=True, kw_only=True)
    class NoDefault:
        x: int

    cls = _defense_class()
    cls.Config = NoDefault
    with pytest.raises(PluginError, match="needs a default"):
        DEFENSES.register("bad-three")(cls)


def test_builtins_are_lazy():
    # Listing must not need the plugin modules: placeholders carry their summary.
    fresh = Registry("defense", "bench.contracts:Defense", "bench.defenses",
                     lambda: [("lazy-one", "no_such_module_xyz:Thing", "a lazy plugin")])
    assert fresh.names() == ["lazy-one"]
    assert fresh.summary("lazy-one") == "a lazy plugin"
    with pytest.raises(PluginError, match="failed to load.*no_such_module_xyz"):
        fresh.get("lazy-one")


def _fake_distribution(root, group: str, entries: dict[str, str]):
    dist = root / "fakeplugin-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplugin\nVersion: 1.2.3\n")
    lines = [f"[{group}]"] + [f"{k} = {v}" for k, v in entries.items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")


def test_entry_points_are_discovered_and_broken_ones_fail_only_when_asked(tmp_path, monkeypatch, isolated_registries):
    package = tmp_path / "fakeplugin_mod.py"
    package.write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from bench.contracts import Defense, DefenseResult

        @dataclass(frozen=True, kw_only=True)
        class Cfg:
            level: int = 3

        class GoodDefense(Defense):
            """Good third-party defense."""
            Config = Cfg
            def apply(self, model, view, cfg, *, generator):
                return DefenseResult(model=model)
    '''))
    _fake_distribution(tmp_path, "bench.defenses", {"good-ext": "fakeplugin_mod:GoodDefense",
                                                    "broken-ext": "fakeplugin_missing_module:Nope"})
    monkeypatch.syspath_prepend(str(tmp_path))
    fresh = Registry("defense", "bench.contracts:Defense", "bench.defenses", lambda: [])
    names = fresh.names()
    assert "good-ext" in names and "broken-ext" in names  # listing works despite the broken plugin
    assert fresh.get("good-ext").__name__ == "GoodDefense"
    assert "fakeplugin==1.2.3" in fresh.origin("good-ext")
    with pytest.raises(PluginError, match="broken-ext.*fakeplugin==1.2.3"):
        fresh.get("broken-ext")


def test_plugin_file_registers(tmp_path, isolated_registries):
    path = tmp_path / "my_defense.py"
    path.write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from bench.contracts import Defense, DefenseResult
        from bench.registry import DEFENSES

        @dataclass(frozen=True, kw_only=True)
        class Cfg:
            scale: float = 1.0

        @DEFENSES.register("file-defense")
        class FileDefense(Defense):
            """Defense from a file."""
            Config = Cfg
            def apply(self, model, view, cfg, *, generator):
                return DefenseResult(model=model)
    '''))
    load_plugin(path)
    assert DEFENSES.get("file-defense").__name__ == "FileDefense"


def test_a_plugin_file_gets_the_same_module_name_in_every_process(tmp_path):
    """The module name is part of the plugin's identity in stage-cache keys, which a sweep's workers compute too."""
    import os
    import subprocess
    import sys

    (tmp_path / "same.py").write_text("x = 1\n")
    show = ("import sys; from bench.registry import load_plugin; load_plugin(sys.argv[1]); "
            "print([m for m in sys.modules if m.startswith('bench_user_plugin')])")
    names = {subprocess.run([sys.executable, "-c", show, str(tmp_path / "same.py")], check=True, text=True,
                            capture_output=True, env=dict(os.environ, PYTHONHASHSEED=seed)).stdout
             for seed in ("1", "2")}  # (str hashes differ between these processes)
    assert len(names) == 1 and "bench_user_plugin_same_" in names.pop()


def test_plugin_file_errors_are_clear(tmp_path):
    with pytest.raises(PluginError, match="not found"):
        load_plugin(tmp_path / "missing.py")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(PluginError, match="boom at import"):
        load_plugin(broken)


def test_task_registry_has_vision():
    assert "vision-digits" in TASKS.names()

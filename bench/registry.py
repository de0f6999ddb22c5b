"""Plugin registries: one generic :class:`Registry` and its three instances DEFENSES, ATTACKS, TASKS.

Plugins register by decorator, by lazy ``"module:Attr"`` target (the harness's own plugins, see
:mod:`bench.builtins`), by entry point (groups ``bench.defenses`` / ``bench.attacks`` / ``bench.tasks``) or by
loading a Python file (``--plugin path.py``). Lazy targets and entry points stay placeholders until a plugin is
asked for, so listing plugins never imports torch and a broken third-party package cannot break ``bench ls``;
asking for the broken plugin raises a :class:`PluginError`. A registry may also resolve composite names
(``a+b``, defenses only: :mod:`bench.composition`), which are built on demand and never listed.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

from bench.errors import PluginError, UnknownNameError

T = TypeVar("T")

NAME_PATTERN = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


@dataclass
class _Entry:
    name: str
    target: Any = None  # the loaded class, or None while this is a placeholder
    lazy: str | None = None  # "module:Attr" for builtins and entry points
    dist: str | None = None  # "package==version" for entry points
    summary: str = ""
    load_error: str | None = None


@dataclass(frozen=True)
class Resolved(Generic[T]):
    """A registry lookup: the plugin class, and the preset's config overrides when a ``name.preset`` was given."""

    name: str
    cls: type
    preset: str | None
    preset_args: dict[str, Any]
    parts: tuple["Resolved", ...] = ()
    """A composite's parts, in order (:mod:`bench.composition`); () for a registered name."""

    @property
    def label(self) -> str:
        if self.parts:
            return "+".join(part.label for part in self.parts)
        return f"{self.name}.{self.preset}" if self.preset else self.name


class Registry(Generic[T]):
    """Named plugins of one kind (defense, attack or task) that share a base class and an entry-point group."""

    def __init__(
        self,
        kind: str,
        base: str,
        group: str,
        builtins: Callable[[], list[tuple[str, str, str]]],
        config_base: str | None = None,
        composer: str | None = None,
    ):
        self.kind = kind
        self._composer_target = composer
        """``"module:function"`` resolving composite names such as ``a+b`` (None: this kind does not compose)."""
        self._config_base_target = config_base
        self.group = group
        self._base_target = base
        self._builtins = builtins
        self._entries: dict[str, _Entry] = {}
        self._discovered = False

    # -- registration -------------------------------------------------------------------------------
    def register(self, name: str, *, summary: str | None = None, target: str | None = None, dist: str | None = None):
        """Register a plugin class under ``name``.

        ``@REG.register("name")`` decorates a class; ``REG.register("name", target="module:Attr")`` adds a lazy
        placeholder that is imported the first time the name is asked for. A name may be registered once; the
        only exception is a placeholder being filled by the class its target points at.
        """
        if not NAME_PATTERN.match(name):
            raise PluginError(f"{self.kind} name {name!r} must be lower-kebab-case (letters, digits, '-')")
        if target is not None:
            self._add_placeholder(name, target, summary or "", dist)
            return None

        def decorator(cls):
            self._add_class(name, cls, summary)
            return cls

        return decorator

    def _add_placeholder(self, name: str, target: str, summary: str, dist: str | None) -> None:
        existing = self._entries.get(name)
        if existing is not None and not (existing.target is None and existing.lazy == target):
            raise PluginError(f"{self.kind} {name!r} is already registered ({self._describe(existing)})")
        self._entries[name] = _Entry(name=name, lazy=target, summary=summary, dist=dist)

    def _add_class(self, name: str, cls: type, summary: str | None) -> None:
        existing = self._entries.get(name)
        target = f"{cls.__module__}:{cls.__qualname__}"
        if existing is not None:
            filling_placeholder = existing.target is None and existing.lazy == target
            same_class = existing.target is cls
            if not (filling_placeholder or same_class):
                raise PluginError(
                    f"{self.kind} {name!r} is already registered ({self._describe(existing)}); "
                    f"cannot register {target} under the same name"
                )
        self._validate(name, cls)
        entry = existing or _Entry(name=name)
        entry.target = cls
        entry.summary = summary or entry.summary or _first_line(cls.__doc__) or _first_line(sys.modules[cls.__module__].__doc__)
        self._entries[name] = entry

    def _validate(self, name: str, cls: type) -> None:
        base = _import_target(self._base_target)
        if not (inspect.isclass(cls) and issubclass(cls, base)):
            raise PluginError(f"{self.kind} {name!r}: {cls!r} must subclass {base.__module__}.{base.__qualname__}")
        config = getattr(cls, "Config", None)
        if not (inspect.isclass(config) and dataclasses.is_dataclass(config)):
            raise PluginError(f"{self.kind} {name!r}: {cls.__qualname__}.Config must be a dataclass")
        if not config.__dataclass_params__.frozen:
            raise PluginError(f"{self.kind} {name!r}: {cls.__qualname__}.Config must be frozen (@dataclass(frozen=True))")
        if self._config_base_target is not None:
            config_base = _import_target(self._config_base_target)
            if not issubclass(config, config_base):
                raise PluginError(
                    f"{self.kind} {name!r}: {cls.__qualname__}.Config must subclass "
                    f"{config_base.__module__}.{config_base.__qualname__}"
                )
        missing = [f.name for f in dataclasses.fields(config) if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise PluginError(f"{self.kind} {name!r}: every config field needs a default; {missing} have none")
        for preset, args in getattr(cls, "presets", {}).items():
            unknown = set(args) - {f.name for f in dataclasses.fields(config)}
            if unknown:
                raise PluginError(f"{self.kind} {name!r}: preset {preset!r} sets unknown config keys {sorted(unknown)}")

    # -- discovery ----------------------------------------------------------------------------------
    def discover(self) -> None:
        """Add the builtin placeholders and every installed entry point of this registry's group (once)."""
        if self._discovered:
            return
        self._discovered = True
        for name, target, summary in self._builtins():
            if name not in self._entries:
                self._add_placeholder(name, target, summary, None)
        for ep in importlib.metadata.entry_points(group=self.group):
            dist = f"{ep.dist.name}=={ep.dist.version}" if ep.dist is not None else None
            if ep.name in self._entries:
                continue  # an explicit registration wins over a stale entry point of the same name
            try:
                self._add_placeholder(ep.name, ep.value, "", dist)
            except PluginError as err:  # a malformed third-party name must not break discovery
                self._entries[ep.name] = _Entry(name=ep.name, lazy=ep.value, dist=dist, load_error=str(err))

    # -- lookup -------------------------------------------------------------------------------------
    def names(self, pattern: str = "*") -> list[str]:
        self.discover()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: str) -> bool:
        self.discover()
        return name.split(".", 1)[0] in self._entries

    def get(self, name: str) -> type:
        """The plugin class registered under ``name`` (loading it if it is a placeholder)."""
        return self.resolve(name).cls

    def resolve(self, name: str) -> Resolved:
        """Look up ``name`` or ``name.preset`` and return the class with the preset's config overrides (or, where
        this registry composes, the composite of ``a+b.preset+c``)."""
        self.discover()
        if self._composer_target is not None and "+" in name:
            return _import_target(self._composer_target)(self, name)
        base, _, preset = name.partition(".")
        entry = self._entries.get(base)
        if entry is None:
            raise UnknownNameError(self._unknown_message(name, self.names()))
        cls = self._load(entry)
        if not preset:
            return Resolved(name=base, cls=cls, preset=None, preset_args={})
        presets = getattr(cls, "presets", {})
        if preset not in presets and self.kind == "defense":  # presets written by `bench tune --write-preset`
            from bench.tuning_presets import tuned_preset_args

            presets = {**tuned_preset_args(base), **presets}
        if preset not in presets:
            choices = [f"{base}.{p}" for p in presets]
            raise UnknownNameError(self._unknown_message(name, choices, what=f"preset of {self.kind} {base!r}"))
        return Resolved(name=base, cls=cls, preset=preset, preset_args=dict(presets[preset]))

    def _load(self, entry: _Entry) -> type:
        if entry.target is not None:
            return entry.target
        if entry.load_error is not None:
            raise PluginError(f"{self.kind} {entry.name!r} ({self._describe(entry)}) cannot be loaded: {entry.load_error}")
        try:
            obj = _import_target(entry.lazy)
        except Exception as err:  # any import-time failure of a plugin is reported as the plugin's failure
            entry.load_error = f"{type(err).__name__}: {err}"
            raise PluginError(
                f"{self.kind} {entry.name!r} ({self._describe(entry)}) failed to load: {entry.load_error}"
            ) from err
        if entry.target is None:  # the module did not register itself by decorator: register what the target names
            try:
                self._add_class(entry.name, obj, None)
            except PluginError as err:
                entry.load_error = str(err)
                raise
        return entry.target

    def summary(self, name: str) -> str:
        self.discover()
        return self._entries[name].summary

    def origin(self, name: str) -> str:
        """Where a plugin comes from: ``file:line`` once loaded, else its distribution or lazy target."""
        self.discover()
        entry = self._entries[name]
        if entry.target is not None:
            try:
                file = inspect.getsourcefile(entry.target)
                line = inspect.getsourcelines(entry.target)[1]
                where = f"{_short_path(file)}:{line}"
            except (OSError, TypeError):
                where = f"{entry.target.__module__}:{entry.target.__qualname__}"
            return f"{where} ({entry.dist})" if entry.dist else where
        return self._describe(entry)

    def load_error(self, name: str) -> str | None:
        self.discover()
        return self._entries[name].load_error

    def _describe(self, entry: _Entry) -> str:
        if entry.dist:
            return f"{entry.dist}, {entry.lazy}"
        if entry.lazy:
            return entry.lazy
        return f"{entry.target.__module__}:{entry.target.__qualname__}"

    def _unknown_message(self, name: str, choices: list[str], what: str | None = None) -> str:
        what = what or self.kind
        close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        available = ", ".join(choices) if choices else "(none)"
        return f"unknown {what} {name!r}.{hint} Available: {available}"

    # -- testing ------------------------------------------------------------------------------------
    def snapshot(self) -> tuple[dict[str, _Entry], bool]:
        return {k: dataclasses.replace(v) for k, v in self._entries.items()}, self._discovered

    def restore(self, state: tuple[dict[str, _Entry], bool]) -> None:
        self._entries, self._discovered = state


def _first_line(doc: str | None) -> str:
    return doc.strip().splitlines()[0].strip() if doc and doc.strip() else ""


def _short_path(path: str | None) -> str:
    if path is None:
        return "?"
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def _import_target(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


def load_plugin(path: str | Path) -> None:
    """Import a plugin from a ``.py`` file path or a dotted module name; its decorators register its plugins."""
    path_str = str(path)
    if path_str.endswith(".py") or Path(path_str).exists():
        file = Path(path_str)
        if not file.is_file():
            raise PluginError(f"plugin file not found: {file}")
        # The same name in every process (not hash(), which Python salts per process): it is part of the plugin's
        # identity in stage-cache keys, which a sweep's workers must compute as the sweep's own process does.
        path_id = hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:8]
        module_name = f"bench_user_plugin_{re.sub(r'[^0-9a-zA-Z_]', '_', file.stem)}_{path_id}"
        if module_name in sys.modules:
            return
        spec = importlib.util.spec_from_file_location(module_name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except PluginError:
            del sys.modules[module_name]
            raise
        except Exception as err:
            del sys.modules[module_name]
            raise PluginError(f"plugin file {file} failed to import: {type(err).__name__}: {err}") from err
        return
    try:
        importlib.import_module(path_str)
    except ImportError as err:
        raise PluginError(f"plugin module {path_str!r} cannot be imported: {err}") from err


def _builtins_of(kind: str) -> Callable[[], list[tuple[str, str, str]]]:
    def builtins() -> list[tuple[str, str, str]]:
        from bench.builtins import BUILTINS

        return [(name, target, summary) for k, name, target, summary in BUILTINS if k == kind]

    return builtins


DEFENSES: Registry = Registry("defense", "bench.contracts:Defense", "bench.defenses", _builtins_of("defense"),
                              composer="bench.composition:resolve_composite")
ATTACKS: Registry = Registry(
    "attack", "bench.contracts:Attack", "bench.attacks", _builtins_of("attack"), config_base="bench.contracts:AttackConfig"
)
TASKS: Registry = Registry(
    "task", "bench.contracts:Task", "bench.tasks", _builtins_of("task"), config_base="bench.contracts:TaskConfig"
)
REGISTRIES: dict[str, Registry] = {"defenses": DEFENSES, "attacks": ATTACKS, "tasks": TASKS}

"""Plugin registries: one generic :class:`Registry` and its three instances DEFENSES, ATTACKS, TASKS.

Plugins register by decorator, by lazy ``"module:Attr"`` target (the harness's own plugins, see
:mod:`bench.core.builtins`), by entry point (groups ``bench.defenses`` / ``bench.attacks`` / ``bench.tasks``) or by
loading a Python file (``--plugin path.py``). Lazy targets and entry points stay placeholders until a plugin is
asked for, so listing plugins never imports torch and a broken third-party package cannot break ``bench ls``;
asking for the broken plugin raises a :class:`PluginError`. A registry may also resolve composite names
(``a+b``, defenses only: :mod:`bench.core.composition`), which are built on demand and never listed.

No silent shadowing: a name is registered once, whoever registers it and in whatever order. The built-in names
are reserved before any registration (every ``register`` call first runs :meth:`Registry.discover`), so a plugin
file loaded before the built-ins are looked at cannot take a built-in's name, and an entry point whose name is
taken is an error too. Each such error names both origins. ``register(name, override=True)`` is the only way to
replace a plugin; the replacement is recorded (:meth:`Registry.plugin_info`, in every run's provenance) and shown
by :meth:`Registry.origin` (so ``bench ls`` marks it).
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from bench.errors import PluginError, UnknownNameError

if TYPE_CHECKING:
    from bench.contracts import Attack, Defense, Task

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
    builtin: bool = False  # one of the harness's own plugins (bench.core.builtins), not replaced
    overrides: str | None = None  # the origin of the plugin this one replaced with override=True
    replaced_target: str | None = None  # that plugin's "module:Attr"


@dataclass(frozen=True)
class Resolved(Generic[T]):
    """A registry lookup: the plugin class, and the preset's config overrides when a ``name.preset`` was given."""

    name: str
    cls: type[T]
    preset: str | None
    preset_args: dict[str, Any]
    parts: tuple[Resolved, ...] = ()
    """A composite's parts, in order (:mod:`bench.core.composition`); () for a registered name."""

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
    def register(self, name: str, *, summary: str | None = None, target: str | None = None, dist: str | None = None,
                 override: bool = False):
        """Register a plugin class under ``name``.

        ``@REG.register("name")`` decorates a class; ``REG.register("name", target="module:Attr")`` adds a lazy
        placeholder that is imported the first time the name is asked for. A name may be registered once (built-in
        names are taken from the start); the only exception is a placeholder being filled by the class its target
        points at. ``override=True`` replaces an existing plugin deliberately: every run records it.
        """
        if not NAME_PATTERN.match(name):
            raise PluginError(f"{self.kind} name {name!r} must be lower-kebab-case (letters, digits, '-')")
        self.discover()  # the built-in names and entry points are taken before anything else registers
        if target is not None:
            self._add_placeholder(name, target, summary or "", dist, override=override)
            return None

        def decorator(cls):
            self._add_class(name, cls, summary, override=override)
            return cls

        return decorator

    def _replaced(self, name: str, new: str, override: bool) -> str | None:
        """The origin of the entry ``name`` that registering ``new`` replaces (None: nothing is replaced); an error
        naming both origins unless ``override``."""
        existing = self._entries[name]
        old = self._describe(existing)
        if not override:
            raise PluginError(
                f"{self.kind} {name!r} is already registered by {old}; {new} cannot register the same name "
                f"(choose another name, or register(..., override=True) to replace it: every run records that)")
        return old

    def _add_placeholder(self, name: str, target: str, summary: str, dist: str | None, *, override: bool = False,
                         builtin: bool = False) -> None:
        existing = self._entries.get(name)
        if existing is not None and existing.target is None and existing.lazy == target:
            return  # the same placeholder again
        overrides = None
        if existing is not None:
            overrides = self._replaced(name, f"{'entry point ' + dist + ', ' if dist else ''}{target}", override)
        self._entries[name] = _Entry(name=name, lazy=target, summary=summary, dist=dist, builtin=builtin,
                                     overrides=overrides, replaced_target=_target_of(existing) if existing else None)

    def _add_class(self, name: str, cls: type, summary: str | None, *, override: bool = False) -> None:
        existing = self._entries.get(name)
        target = f"{cls.__module__}:{cls.__qualname__}"
        overrides = None
        if existing is not None:
            filling_placeholder = existing.target is None and existing.lazy == target
            same_class = existing.target is cls
            if existing.replaced_target == target:
                return  # the replaced plugin's module is imported after all (another built-in needs it): keep the override
            if not (filling_placeholder or same_class):
                overrides = self._replaced(name, f"{cls.__qualname__} at {_source_of(cls)}", override)
                existing = _Entry(name=name, overrides=overrides, replaced_target=_target_of(existing))
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
        if not config.__dataclass_params__.frozen:  # type: ignore[attr-defined]  # set on every dataclass
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
        self._discovered = True  # (first: registering the built-ins must not discover again)
        try:
            for name, target, summary in self._builtins():
                if name in self._entries:  # only a test's restored registry, or a second discovery, gets here
                    continue
                self._add_placeholder(name, target, summary, None, builtin=True)
            for ep in importlib.metadata.entry_points(group=self.group):
                dist = f"{ep.dist.name}=={ep.dist.version}" if ep.dist is not None else None
                existing = self._entries.get(ep.name)
                if existing is not None and (existing.lazy == ep.value or _target_of(existing) == ep.value):
                    existing.dist = existing.dist or dist  # the package registered itself, by decorator or twice
                    continue
                if not NAME_PATTERN.match(ep.name):  # a malformed third-party name must not break discovery
                    self._entries[ep.name] = _Entry(name=ep.name, lazy=ep.value, dist=dist, load_error=(
                        f"{self.kind} name {ep.name!r} must be lower-kebab-case (letters, digits, '-')"))
                    continue
                self._add_placeholder(ep.name, ep.value, "", dist)  # a taken name: an error naming both
        except PluginError:
            self._discovered = False  # every later command reports the conflict again
            raise

    # -- lookup -------------------------------------------------------------------------------------
    def names(self, pattern: str = "*") -> list[str]:
        self.discover()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: str) -> bool:
        self.discover()
        return name.split(".", 1)[0] in self._entries

    def get(self, name: str) -> type[T]:
        """The plugin class registered under ``name`` (loading it if it is a placeholder)."""
        return self.resolve(name).cls

    def resolve(self, name: str) -> Resolved[T]:
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
            from bench.core.tuning_presets import tuned_preset_args

            presets = {**tuned_preset_args(base), **presets}
        if preset not in presets:
            choices = [f"{base}.{p}" for p in presets]
            raise UnknownNameError(self._unknown_message(name, choices, what=f"preset of {self.kind} {base!r}"))
        return Resolved(name=base, cls=cls, preset=preset, preset_args=dict(presets[preset]))

    def _load(self, entry: _Entry) -> type[T]:
        if entry.target is not None:
            return entry.target
        if entry.load_error is not None:
            raise PluginError(f"{self.kind} {entry.name!r} ({self._describe(entry)}) cannot be loaded: {entry.load_error}")
        assert entry.lazy is not None  # an entry holds a class or the target that loads one
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
        return cast("type[T]", entry.target)

    def summary(self, name: str) -> str:
        self.discover()
        return self._entries[name].summary

    def origin(self, name: str) -> str:
        """Where a plugin comes from: ``file:line`` once loaded, else its distribution or lazy target; marked
        ``OVERRIDES <the replaced plugin's origin>`` when it was registered with ``override=True``."""
        self.discover()
        entry = self._entries[name]
        where = self._where(entry)
        return f"{where}; OVERRIDES {entry.overrides}" if entry.overrides else where

    def _where(self, entry: _Entry) -> str:
        if entry.target is not None:
            file, line = _source_location(entry.target)
            where = f"{_short_path(file)}:{line}" if line else str(file)
            return f"{where} ({entry.dist})" if entry.dist else where
        return self._describe(entry)

    def plugin_info(self, name: str) -> dict[str, Any]:
        """What a run records about the plugin registered as ``name``: where it comes from, whether it is one of
        the harness's built-ins, and what it replaced with ``override=True`` (None: nothing)."""
        self.discover()
        entry = self._entries[name]
        return {"origin": self._where(entry), "builtin": entry.builtin, "dist": entry.dist,
                "overrides": entry.overrides}

    def load_error(self, name: str) -> str | None:
        self.discover()
        return self._entries[name].load_error

    def _describe(self, entry: _Entry) -> str:
        if entry.builtin:
            return f"built-in {entry.lazy}"
        if entry.dist:
            return f"entry point {entry.dist}, {entry.lazy}"
        if entry.target is not None:
            return f"{entry.target.__qualname__} at {_source_of(entry.target)}"
        return entry.lazy or entry.name

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


def _target_of(entry: _Entry) -> str | None:
    """The ``module:Attr`` an entry stands for: its class's, or its lazy target's while it is a placeholder."""
    return f"{entry.target.__module__}:{entry.target.__qualname__}" if entry.target is not None else entry.lazy


def _source_of(cls: type) -> str:
    """``file:line`` of a class (a plugin file's path as the user wrote it is what they recognise)."""
    try:
        return f"{_short_path(inspect.getsourcefile(cls))}:{inspect.getsourcelines(cls)[1]}"
    except (OSError, TypeError):
        return "no source file"


def _first_line(doc: str | None) -> str:
    return doc.strip().splitlines()[0].strip() if doc and doc.strip() else ""


@functools.cache
def _source_location(target: type) -> tuple[str | None, int]:
    """A plugin class's source file and first line, or ``(module:Qualname, 0)`` without a source (memoised per
    class: ``inspect`` reads and parses the whole file, and provenance asks once per run; an edited plugin file that
    is loaded again is a new class)."""
    try:
        return inspect.getsourcefile(target), inspect.getsourcelines(target)[1]
    except (OSError, TypeError):
        return f"{target.__module__}:{target.__qualname__}", 0


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
        if spec is None or spec.loader is None:
            raise PluginError(f"plugin file {file} cannot be imported as a Python module")
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
        from bench.core.builtins import BUILTINS

        return [(name, target, summary) for k, name, target, summary in BUILTINS if k == kind]

    return builtins


DEFENSES: Registry[Defense] = Registry("defense", "bench.contracts:Defense", "bench.defenses", _builtins_of("defense"),
                              composer="bench.core.composition:resolve_composite")
ATTACKS: Registry[Attack] = Registry(
    "attack", "bench.contracts:Attack", "bench.attacks", _builtins_of("attack"), config_base="bench.contracts:AttackConfig"
)
TASKS: Registry[Task] = Registry(
    "task", "bench.contracts:Task", "bench.tasks", _builtins_of("task"), config_base="bench.contracts:TaskConfig"
)
REGISTRIES: dict[str, Registry[Any]] = {"defenses": DEFENSES, "attacks": ATTACKS, "tasks": TASKS}

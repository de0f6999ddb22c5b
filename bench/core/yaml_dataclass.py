"""One way to read a YAML file into a frozen dataclass, reporting every error at once.

The experiment, sweep, leaderboard-schema and claims files all go through :func:`read_mapping` (the file's top-level
mapping: a missing file, invalid YAML or a non-mapping is one line) and :func:`build` (the dataclass), which checks
the mapping against the dataclass's fields and type hints and collects, in one :class:`~bench.errors.ConfigError` with
one line per problem:

* unknown keys, with a did-you-mean suggestion and the valid keys;
* missing required keys (fields without a default);
* values of the wrong type: ``str``, ``int``, ``float`` (an int is accepted), ``bool``, ``None``, ``Literal``
  choices, unions (``X | None``), ``tuple[X, ...]`` (a list), ``dict[str, X]`` / ``Mapping`` and nested dataclasses
  (a mapping, checked the same way, its problems named by their path, e.g. ``items[2].kind``).

A field whose YAML form is not its Python type (e.g. a plugin given as ``name`` or ``{name:, args:}``) takes a parser
from ``parsers``: it receives the raw value and raises ConfigError (one or more lines) on bad input. The dataclass's
own ``__post_init__`` checks run last, only when every field was valid. Plugin configs, whose values may also arrive
as command-line strings, are built by :func:`bench.config.build_config` instead (it coerces strings by type).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from bench.errors import ConfigError, DataError

Parser = Callable[[Any], Any]
_MAPPINGS = (dict, Mapping, typing.Mapping)


def read_mapping(path: str | Path, what: str, keys: Sequence[str] = ()) -> dict[str, Any]:
    """The top-level mapping of the YAML file at ``path`` (``what`` names the kind of file in errors; ``keys``, when
    given, are listed in the error for a non-mapping). An empty file is an empty mapping."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path} is not valid YAML: {' '.join(str(err).split())}") from None
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror}") from None
    if not isinstance(data, dict):
        listed = f" ({', '.join(keys)})" if keys else ""
        raise ConfigError(f"{what} {path} must hold a mapping of keys{listed}, got {type(data).__name__}")
    return data


def unknown_keys(data: Mapping[Any, Any], keys: Sequence[str]) -> list[str]:
    """One line per key of ``data`` not in ``keys``, with a did-you-mean suggestion and the valid keys."""
    problems = []
    for key in data:
        if key not in keys:
            close = difflib.get_close_matches(str(key), list(keys), n=1, cutoff=0.7)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            problems.append(f"unknown key {key!r}.{hint} Valid keys: {', '.join(keys)}")
    return problems


def build(cls: type, data: Any, where: str, *, parsers: Mapping[str, Parser] = {}) -> Any:
    """An instance of dataclass ``cls`` from ``data``; a ConfigError lists every problem, one per line.

    ``where`` names the file (e.g. ``sweep file grid.yaml``); each problem names the key's path in it
    (``tasks.default.columns[1] (worst_median): unknown key 'fomat'. Did you mean 'format'? ...``)."""
    problems: list[str] = []
    value = collect(cls, data, where, problems, parsers=parsers)
    if problems:
        raise ConfigError("\n".join(problems))
    return value


def collect(cls: type, data: Any, where: str, problems: list[str], *, parsers: Mapping[str, Parser] = {},
            skip: Sequence[str] = (), path: str = "", keep_valid: bool = False) -> Any:
    """Like :func:`build`, but appends the problems to ``problems`` and returns None when there were any.

    ``parsers``: key → a function of the raw value (for a field whose YAML form is not its type); ``skip``: fields
    the file never sets (e.g. where an entry was read from), neither accepted nor required; ``path``: where ``data``
    is in the file (``tasks[2]``); ``keep_valid``: build the instance from the valid keys anyway (the bad ones left
    at their defaults) so that a caller can go on checking what depends on them; None only when that fails."""
    return _collect(cls, data, _At(where, path), problems, parsers, skip, keep_valid)


class _At:
    """A place in a file: the file (``where``) and the key path in it (``tasks.default.columns[1] (worst_median)``)."""

    def __init__(self, where: str, path: str) -> None:
        self.where, self.path = where, path

    def key(self, key: Any) -> _At:
        return _At(self.where, f"{self.path}.{key}" if self.path else str(key))

    def item(self, index: int, value: Any) -> _At:
        label = next((value[k] for k in _LABEL_KEYS if isinstance(value, Mapping) and isinstance(value.get(k), str)),
                     None)  # an entry is easier to find by its key or name than by its index
        return _At(self.where, f"{self.path}[{index}]" + (f" ({label})" if label else ""))

    def says(self, message: str) -> str:
        """A problem of the mapping at this place."""
        return f"{self.where}: {self.path}: {message}" if self.path else f"{self.where}: {message}"

    def must(self, message: str) -> str:
        """A problem of the value at this place (``path must be ...``)."""
        return f"{self.where}: {self.path} {message}"


_LABEL_KEYS = ("key", "name")


def _collect(cls: type, data: Any, at: _At, problems: list[str], parsers: Mapping[str, Parser] = {},
             skip: Sequence[str] = (), keep_valid: bool = False) -> Any:
    if not isinstance(data, Mapping):
        problems.append(at.says(f"expected a mapping with keys {', '.join(_keys(cls, skip))}, "
                                f"got {type(data).__name__}"))
        return None
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in skip}
    hints = typing.get_type_hints(cls)
    found = [at.says(line) for line in unknown_keys(data, list(fields))]
    found += [at.says(f"missing key {name!r}") for name, f in fields.items() if name not in data and _required(f)]
    values = {}
    for key, value in data.items():
        if key not in fields:
            continue
        before = len(found)
        if key in parsers:
            try:
                values[key] = parsers[key](value)
            except ConfigError as err:
                found += [at.says(line) for line in str(err).splitlines()]
        else:
            values[key] = _typed(value, hints[key], at.key(key), found)
        if len(found) > before:
            values.pop(key, None)
    problems += found
    if found and not (keep_valid and all(name in values for name, f in fields.items() if _required(f))):
        return None
    try:
        return cls(**values)
    except ConfigError as err:
        problems += [at.says(line) for line in str(err).splitlines()]
    except (TypeError, ValueError) as err:
        problems.append(at.says(str(err)))
    return None


def _keys(cls: type, skip: Sequence[str]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init and f.name not in skip]


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _typed(value: Any, type_: Any, at: _At, problems: list[str]) -> Any:
    """``value`` checked against ``type_`` (and converted: lists to tuples, mappings to dataclasses); a mismatch
    appends one line to ``problems`` and returns None."""
    error = _mismatch(value, type_)
    if error is None:
        return _convert(value, type_, at, problems)
    hint = " (quote it, e.g. '2408.00761')" if error.startswith("a string") and isinstance(value, (int, float)) else ""
    problems.append(at.must(f"must be {error}, got {_shown(value)}{hint}"))
    return None
def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _mismatch(value: Any, type_: Any) -> str | None:
    """None when ``value`` has the shape of ``type_``; else what was expected (the elements of a list or mapping
    and the fields of a dataclass are checked by :func:`_convert`, with their own paths)."""
    origin, args = typing.get_origin(type_), typing.get_args(type_)
    if type_ is Any:
        return None
    if origin in (typing.Union, types.UnionType):
        failures = [_mismatch(value, option) for option in args]
        return None if None in failures else " or ".join(f for f in failures if f)
    if type_ is type(None):
        return None if value is None else "null"
    if origin is Literal:
        return None if value in args else "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple or type_ is tuple:
        return None if isinstance(value, (list, tuple)) else "a list"
    if origin in _MAPPINGS or type_ in _MAPPINGS:
        return None if isinstance(value, Mapping) else "a mapping"
    if dataclasses.is_dataclass(type_):
        return None if isinstance(value, Mapping) else "a mapping"
    if type_ is bool:
        return None if isinstance(value, bool) else "true or false"
    if type_ is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if type_ is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if type_ is str:
        return None if isinstance(value, str) else "a string"
    return None if isinstance(type_, type) and isinstance(value, type_) else getattr(type_, "__name__", str(type_))


def _convert(value: Any, type_: Any, at: _At, problems: list[str]) -> Any:
    origin, args = typing.get_origin(type_), typing.get_args(type_)
    if origin in (typing.Union, types.UnionType):
        option = next(o for o in args if _mismatch(value, o) is None)
        return _convert(value, option, at, problems)
    if origin is tuple and args:
        item_type = args[0] if len(args) == 2 and args[1] is Ellipsis else Any
        return tuple(_typed(item, item_type, at.item(i, item), problems) for i, item in enumerate(value))
    if origin in _MAPPINGS and len(args) == 2:
        return {key: _typed(item, args[1], at.key(key), problems) for key, item in value.items()}
    if dataclasses.is_dataclass(type_):
        return _collect(type_, value, at, problems)  # type: ignore[arg-type]
    if type_ is float and isinstance(value, int):
        return float(value)
    return value

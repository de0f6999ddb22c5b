"""Typed, frozen plugin configs: building them from YAML/CLI values with type checks, and serialising them.

Every plugin pairs its class with a frozen dataclass ``Config``. Values arrive as Python objects (YAML) or strings
(CLI ``key=value``); :func:`build_config` coerces them to the declared field types and rejects unknown keys and
ill-typed values with a :class:`~bench.errors.ConfigError` that names every bad key, one line each. Field
documentation is written once, as an attribute docstring under the field, and read back by :func:`field_docs` for help
output.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import inspect
import json
import math
import textwrap
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any, Literal

from bench.errors import ConfigError

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", "~"}


def build_config(cls: type, args: Mapping[str, Any], *, where: str) -> Any:
    """Instantiate config dataclass ``cls`` from ``args``, coercing each value to its field's type.

    ``where`` names the config in error messages (e.g. ``"defense 'specdef'"``).
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    problems, values = [], {}
    for key, value in args.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            problems.append(f"unknown config key {key!r} for {where}.{hint} Valid keys: {', '.join(fields)}")
            continue
        try:
            values[key] = coerce(value, hints[key], key=key, where=where)
        except ConfigError as err:
            problems.append(str(err))
    if problems:  # every bad key at once, one per line, rather than one per attempt
        raise ConfigError("\n".join(problems))
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid config for {where}: {err}") from err


def coerce(value: Any, type_: Any, *, key: str, where: str) -> Any:
    """Convert ``value`` (a YAML value or a CLI string) to ``type_`` or raise a ConfigError naming ``key``."""
    try:
        return _coerce(value, type_)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"bad value for {key!r} in {where}: {value!r} is not a valid {_type_name(type_)} ({err})"
        ) from None


def _coerce(value: Any, type_: Any) -> Any:
    origin = typing.get_origin(type_)
    args = typing.get_args(type_)
    if type_ is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE)):
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option)
            except (TypeError, ValueError) as err:
                errors.append(str(err))
        raise ValueError("; ".join(errors))
    if origin is Literal:
        for option in args:
            if value == option or (isinstance(value, str) and str(option) == value.strip()):
                return option
        raise ValueError(f"expected one of {', '.join(repr(a) for a in args)}")
    if origin is tuple:
        items = _as_sequence(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in items)
        if len(items) != len(args):
            raise ValueError(f"expected {len(args)} items")
        return tuple(_coerce(v, a) for v, a in zip(items, args))
    if type_ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError("expected true or false")
    if type_ is int:
        if isinstance(value, bool):
            raise ValueError("expected an integer, got a boolean")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            text = value.strip()
            number = float(text) if any(c in text for c in ".eE") else int(text)
            if isinstance(number, float) and not number.is_integer():
                raise ValueError("expected an integer")
            return int(number)
        raise ValueError("expected an integer")
    if type_ is float:
        if isinstance(value, bool):
            raise ValueError("expected a number, got a boolean")
        number = float(value.strip()) if isinstance(value, str) else float(value)
        if not math.isfinite(number):
            raise ValueError("expected a finite number")
        return number
    if type_ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError("expected a string")
    raise TypeError(f"unsupported config field type {type_!r}")


def _as_sequence(value: Any) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        text = value.strip().strip("[]()")
        return [part.strip().strip("'\"") for part in text.split(",") if part.strip()]
    raise ValueError("expected a list")


def _type_name(type_: Any) -> str:
    origin = typing.get_origin(type_)
    if origin is Literal:
        return "choice of " + "/".join(str(a) for a in typing.get_args(type_))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(type_))
    if origin is tuple:
        return "list"
    if type_ is type(None):
        return "none"
    return getattr(type_, "__name__", str(type_))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config's fields as a JSON-compatible dict (tuples become lists)."""
    return {f.name: _jsonable(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.init}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def stable_hash(obj: Any, length: int = 12) -> str:
    """A short content hash of a JSON-compatible object, stable across runs and machines."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass: the string literal written right under each field."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, following in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def describe_config(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, doc) for every field, for ``bench ls -v`` and ``bench validate``."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)"
        )
        rows.append((f.name, _type_name(hints[f.name]), default, docs.get(f.name, "")))
    return rows


def check_choice(value: Any, choices: tuple, key: str) -> None:
    """Validation helper for ``__post_init__``: raise a ConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}, got {value!r}")


def check(condition: bool, message: str) -> None:
    """Validation helper for ``__post_init__``: raise a ConfigError with ``message`` unless ``condition``."""
    if not condition:
        raise ConfigError(message)


def require_bool(value: Any, key: str) -> bool:
    """A YAML boolean, strictly: ``bool("false")`` is True, so a quoted or misspelt value is a ConfigError."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value

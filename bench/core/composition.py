"""Composite defenses: ``a+b+c`` applies registered defenses in order, recorded as one defense with every part's config.

Any registered defense (built-in, entry point or ``--plugin`` file), or one of its presets, can be a part:
``ga-retain+specdef`` runs SpecDef on the model ``ga-retain`` returns (the SpecDef paper applied it on top of an
unlearned model). Composites are not registered names: :meth:`~bench.registry.Registry.resolve` builds them on
demand (so ``bench ls`` does not list them), and an unknown part gets the registry's did-you-mean error. A part may
appear once, so ``specdef.alpha`` always names one part.

Each part's config values, in increasing precedence (see :func:`part_args`)::

    parts: [{name: specdef, preset: a1e4-k25, args: {alpha: 1.0e+6}}, ...]   # the resolved form run.json stores
    specdef: {alpha: 1.0e+6}                                                  # YAML: the part's name, its values
    specdef.alpha: 1e6                                                        # CLI: --defense none+specdef specdef.alpha=1e6

(the dotted override ``defense.specdef.alpha=1e6`` is the last form). The resolved config is
``{"parts": [{"name", "preset", "args"}, ...]}`` with each part's full config, so the run id, the stage keys, the
labels (``none+specdef(alpha=1e+06)``) and the results carry every part's values; presets stay labels, as for a
single defense (:meth:`bench.core.spec.PluginSpec.identity`).

Applying: every part gets the previous part's returned model and the same :class:`~bench.contracts.DefenderView`,
with its own generator (and global torch seed) drawn in order from the run's defense generator
(:func:`part_seeds`), so a composite is deterministic under the run seed and equals applying its parts by hand with
those seeds. The composite preserves the function when every part does, within the sum of their tolerances; it
changes weights when any part does. Its report merges the parts' layers and keeps each part's info, layers and
seconds under the part's name; loss-curve terms are prefixed ``<part>/``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from bench.config import check
from bench.contracts import Defense, DefenseResult
from bench.errors import ConfigError, PluginError, UnknownNameError

if TYPE_CHECKING:
    import torch

    from bench.registry import Registry, Resolved

SEPARATOR = "+"
PARTS_KEY = "parts"
"""The key of the resolved form: a list of ``{name, preset, args}``, one per part, in order."""


def is_composite(name: str) -> bool:
    """Whether ``name`` (a defense label) names a composite, e.g. ``none+specdef.a1e4-k25``."""
    return SEPARATOR in name


@dataclass(frozen=True)
class PartConfig:
    """One part of a composite: its registered name, its preset tag (a label only) and its built config."""

    name: str
    """The part's registered name."""
    preset: str | None
    """The preset the part was named by (``specdef.a1e4-k25``), recorded for its label; None: none."""
    config: Any
    """The part's own config dataclass instance, fully resolved."""


@dataclass(frozen=True)
class CompositeConfig:
    """The configs of a composite's parts, in the order they are applied."""

    parts: tuple[PartConfig, ...]
    """One per part, in the order the parts are applied."""

    def __post_init__(self) -> None:
        check(len(self.parts) >= 2, f"a composite defense needs at least two parts, got {len(self.parts)}")


class ComposedDefense(Defense):
    """Base of the composite classes :func:`composite_class` builds: applies ``part_classes`` in order."""

    Config = CompositeConfig
    part_names: ClassVar[tuple[str, ...]] = ()
    part_classes: ClassVar[tuple[type, ...]] = ()

    def apply(self, model, view, cfg: CompositeConfig, *, generator: torch.Generator) -> DefenseResult:
        import torch

        names = tuple(part.name for part in cfg.parts)
        if names != self.part_names:
            raise ConfigError(f"composite defense {SEPARATOR.join(self.part_names)!r} got the configs of "
                              f"{SEPARATOR.join(names)!r}")
        layers: dict[str, None] = {}  # ordered set: a layer two parts touch is listed once
        info: dict[str, Any] = {}
        curve: list[dict[str, float]] = []
        for part, cls, seed in zip(cfg.parts, self.part_classes, part_seeds(generator, len(cfg.parts))):
            torch.manual_seed(seed)  # what the runner does for a single defense, so a part behaves as if alone
            start = time.perf_counter()
            result = cls().apply(model, view, part.config, generator=torch.Generator(generator.device).manual_seed(seed))
            seconds = time.perf_counter() - start
            if not isinstance(result, DefenseResult) or not isinstance(result.model, torch.nn.Module):
                raise PluginError(f"defense {part.name!r} (part of {SEPARATOR.join(names)!r}) must return a "
                                  "DefenseResult holding the defended model")
            model = result.model
            layers.update(dict.fromkeys(result.layers))
            info[part.name] = {"seconds": seconds, "layers": list(result.layers), "info": dict(result.info)}
            curve += [{"step": point["step"], **{f"{part.name}/{k}": v for k, v in point.items() if k != "step"}}
                      for point in result.curve]
        return DefenseResult(model=model, layers=tuple(layers), info=info, curve=curve)


def part_seeds(generator: torch.Generator, count: int) -> list[int]:
    """The seeds of a composite's parts, drawn in order from the run's defense generator."""
    import torch

    return [int(s) for s in torch.randint(0, 2**62, (count,), generator=generator, device=generator.device)]


@functools.cache
def composite_class(names: tuple[str, ...], classes: tuple[type[Defense], ...]) -> type:
    """The composite defense class of these part classes (one class per combination, so caches keyed by class hold)."""
    hints = [f"{name}: {cls.drift_hint}" for name, cls in zip(names, classes) if cls.drift_hint]
    label = SEPARATOR.join(names)
    return type(f"ComposedDefense[{label}]", (ComposedDefense,), {
        "__doc__": f"{' then '.join(names)}, applied in this order (a composite defense).",
        "__module__": __name__,
        "part_names": names,
        "part_classes": classes,
        "preserves_function": all(cls.preserves_function for cls in classes),
        "preservation_tol": float(sum(cls.preservation_tol for cls in classes)),
        "changes_weights": any(cls.changes_weights for cls in classes),
        "drift_hint": "; ".join(hints),
    })


def plugin_classes(cls: type) -> tuple[type, ...]:
    """The plugin classes whose code a defense class runs: a composite's parts, else the class itself."""
    if isinstance(cls, type) and issubclass(cls, ComposedDefense):
        return cls.part_classes
    return (cls,)


def resolve_composite(registry: Registry, name: str) -> Resolved:
    """Resolve ``a+b.preset+c``: each part through ``registry`` (unknown names get its did-you-mean error)."""
    from bench.registry import Resolved

    labels = name.split(SEPARATOR)
    if any(not label for label in labels):
        raise ConfigError(f"composite {registry.kind} {name!r} has an empty part: write parts as a+b+c")
    parts = []
    for label in labels:
        try:
            parts.append(registry.resolve(label))
        except UnknownNameError as err:
            raise UnknownNameError(f"in composite {registry.kind} {name!r}: {err}") from None
    names = tuple(part.name for part in parts)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"composite {registry.kind} {name!r} names {', '.join(map(repr, repeated))} more than once; "
                          "a part may appear once")
    cls = composite_class(names, tuple(part.cls for part in parts))
    return Resolved(name=SEPARATOR.join(names), cls=cls, preset=None, preset_args={}, parts=tuple(parts))


def part_args(resolved: Resolved, args: Mapping[str, Any], *, kind: str = "defense") -> list[tuple[str, dict[str, Any]]]:
    """Each part's label (``name`` or ``name.preset``) and config values, from a composite's ``args``.

    ``args`` mixes the three forms of the module docstring; later forms win: ``parts`` (the resolved form), then a
    part's name mapped to its values, then ``part.key`` values. Every problem is reported at once, one per line.
    """
    names = [part.name for part in resolved.parts]
    labels = {part.name: part.label for part in resolved.parts}
    values: dict[str, dict[str, Any]] = {n: {} for n in names}
    where = f"composite {kind} {resolved.label!r}"
    problems: list[str] = []
    if PARTS_KEY in args:
        problems += _resolved_form(args[PARTS_KEY], resolved.parts, labels, values, where)
    nested = {k: v for k, v in args.items() if k != PARTS_KEY and "." not in k}
    dotted = {k: v for k, v in args.items() if "." in k}
    for key, value in nested.items():
        if key not in values:
            problems.append(_unknown_key(key, resolved.parts, where))
        elif not isinstance(value, Mapping):
            problems.append(f"{key!r} in {where} must map {key}'s config keys to values (or write {key}.KEY=VALUE)")
        else:
            values[key].update(value)
    for key, value in dotted.items():
        part, _, field = key.partition(".")
        if part not in values:
            problems.append(_unknown_part(part, key, names, where))
        elif not field:
            problems.append(f"{key!r} in {where} names no config key of {part!r}: write {part}.KEY=VALUE")
        else:
            values[part][field] = value
    if problems:
        raise ConfigError("\n".join(problems))
    return [(labels[n], values[n]) for n in names]


def _resolved_form(entries: Any, parts: Sequence[Resolved], labels: dict[str, str], values: dict[str, dict],
                   where: str) -> list[str]:
    """Read ``parts: [{name, preset, args}, ...]`` into ``labels`` and ``values``; returns the problems found."""
    names = [part.name for part in parts]
    if not isinstance(entries, (list, tuple)) or len(entries) != len(parts):
        return [f"{PARTS_KEY!r} in {where} must list one {{name, preset, args}} per part ({', '.join(names)})"]
    problems = []
    for i, (entry, part) in enumerate(zip(entries, parts)):
        at = f"{PARTS_KEY}[{i}] of {where}"
        if not isinstance(entry, Mapping) or set(entry) - {"name", "preset", "args"}:
            problems.append(f"{at} must be {{name: ..., preset: ..., args: {{...}}}}, got {entry!r}")
            continue
        if entry.get("name") != part.name:
            problems.append(f"{at} is {entry.get('name')!r}, but part {i + 1} is {part.name!r}")
            continue
        preset = entry.get("preset")
        if preset and part.preset and preset != part.preset:
            problems.append(f"{at} has preset {preset!r}, but the name says {part.label!r}")
        elif preset:
            labels[part.name] = f"{part.name}.{preset}"
        if not isinstance(entry.get("args") or {}, Mapping):
            problems.append(f"{at}.args must be a mapping of config keys")
            continue
        values[part.name].update(entry.get("args") or {})
    return problems


def _unknown_key(key: str, parts: Sequence[Resolved], where: str) -> str:
    """A key that names no part: a config key written without its part (``alpha=`` for ``specdef.alpha=``)?"""
    owners = [part.name for part in parts if key in _fields(part.cls)]
    if owners:
        return (f"config key {key!r} of {where} must name its part: "
                f"{' or '.join(f'{owner}.{key}=' for owner in owners)}")
    return _unknown_part(key, key, [part.name for part in parts], where)


def _unknown_part(part: str, key: str, names: list[str], where: str) -> str:
    close = difflib.get_close_matches(part, names, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"{key!r} in {where} names no part: {part!r} is not one.{hint} "
            f"Write PART.KEY=VALUE with a part of {', '.join(names)}")


def _fields(cls: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(cls.Config)}

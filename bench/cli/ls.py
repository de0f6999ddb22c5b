"""``bench ls {defenses,attacks,tasks} [pattern]``: registered plugins with summary and origin (``-v``: the plugin
class's docstring, its config fields and presets)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("ls", help="list registered plugins")
    p.add_argument("kind", choices=("defenses", "attacks", "tasks"))
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern on names (default *)")
    p.add_argument("-v", "--verbose", action="store_true", help="also load each plugin and show its config fields and presets")
    return p


def main(args: argparse.Namespace) -> int:
    from bench.config import describe_config
    from bench.errors import BenchError
    from bench.registry import REGISTRIES

    registry = REGISTRIES[args.kind]
    names = registry.names(args.pattern)
    if not names:
        print(f"no {args.kind} match {args.pattern!r}")
        return 0
    width = max(len(n) for n in names)
    for name in names:
        line = f"{name.ljust(width)}  {registry.summary(name)}"
        if not args.verbose:
            print(f"{line}  [{registry.origin(name)}]")
            continue
        try:
            cls = registry.get(name)
        except BenchError as err:
            print(f"{line}\n    (cannot be loaded: {err})")
            continue
        print(f"{line}\n    origin: {registry.origin(name)}")
        about = first_paragraph(cls.__doc__)
        if about and about != registry.summary(name):
            print("    " + about.replace("\n", "\n    "))
        for field, type_name, default, help_text in describe_config(cls.Config):
            print(f"    {field} ({type_name}, default {default!r}): {help_text}")
        for preset, values in getattr(cls, "presets", {}).items():
            print(f"    preset {name}.{preset}: {values}")
        if hasattr(cls, "tiers"):
            print(f"    tiers: {', '.join(cls.tiers)}")
        if getattr(cls, "setting", None):
            print(f"    setting: {cls.setting}")
        if getattr(cls, "settings", None):  # bench.core.applicability: runs only on tasks of these settings
            print(f"    applies to: {', '.join(sorted(cls.settings))} tasks")
    return 0


def first_paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring, dedented (the class's own description, not its module's)."""
    import inspect

    text = inspect.cleandoc(doc or "")
    return text.split("\n\n", 1)[0].strip()

"""The ``bench`` command: parses arguments, calls the library, prints. One module per subcommand.

Exit codes: 0 success, 1 some runs failed, 2 bad input (unknown names, bad config, missing files), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from bench import __version__
from bench.errors import BenchError

SUBCOMMANDS = ("run", "sweep", "compare", "ls", "show", "leaderboard", "submit", "validate", "check", "cache", "tune")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                        help="import a plugin file (or module) before running; repeatable")


def build_parser() -> argparse.ArgumentParser:
    from bench.cli import cache, check, compare, leaderboard, ls, run, show, submit, sweep, tune, validate

    parser = argparse.ArgumentParser(prog="bench", description="Benchmark harness for training-resistance defenses.")
    parser.add_argument("--version", action="version", version=f"bench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for module in (run, sweep, compare, ls, show, leaderboard, submit, validate, check, cache, tune):
        sp = module.add_parser(sub)
        _common(sp)
        sp.set_defaults(handler=module.main)
    return parser


def passive_thread_waits() -> None:
    """Let torch's idle OpenMP threads sleep instead of spinning (unless the user chose a policy).

    Must run before torch is imported (OpenMP reads it when it loads). With the default spin-waiting, two threads on
    a busy 2-core machine made the greedy generation of a 135M chat model 16x more CPU-hungry and 25x slower (8
    prompts x 10 tokens: 40 CPU s, 226 s, against 2.5 CPU s, 9 s with passive waits; measured while other jobs ran).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: Sequence[str] | None = None) -> int:
    passive_thread_waits()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from bench.registry import load_plugin

        if not getattr(args, "loads_plugins", False):  # bench check imports them itself, reporting failures
            for plugin in args.plugin:
                load_plugin(plugin)
        return int(args.handler(args) or 0)
    except BenchError as err:
        print(f"bench {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bench {args.command}: interrupted", file=sys.stderr)
        return 130


def entrypoint() -> None:  # pragma: no cover - the console script
    sys.exit(main())

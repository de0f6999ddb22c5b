"""The flags ``bench run``, ``sweep``, ``compare`` and ``tune`` share are defined once (``bench/cli/flags.py``): the
source defines each there only, and the commands' parsers show the same flag with the same help."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

from bench.cli import build_parser

CLI = Path(__file__).resolve().parents[1] / "bench" / "cli"
OWN = {("tune.py", "--search"), ("tune.py", "--attack"), ("leaderboard.py", "--out"), ("check.py", "--task")}
"""Flags a command defines itself on purpose: ``bench tune``'s ``--search`` has a ``task`` choice and defaults to
``lr-search``, and its ``--attack`` repeats (one validation attack each); ``bench leaderboard --out`` is the site
folder or, with ``--format md``, a file; ``bench check --task`` takes several tasks to check plugins on."""


def _defined() -> dict[str, list[str]]:
    """Flag → the files of bench/cli whose ``add_argument`` calls define it."""
    found: dict[str, list[str]] = {}
    for path in sorted(CLI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and str(arg.value).startswith("--"):
                        found.setdefault(arg.value, []).append(path.name)
    return found


def _actions(command: str) -> dict[str, argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {option: action for action in sub.choices[command]._actions for option in action.option_strings}


def test_every_flag_two_commands_share_is_defined_once_in_flags():
    defined = _defined()
    shared = {flag: files for flag, files in defined.items()
              if len([f for f in files if (f, flag) not in OWN]) > 1 or "flags.py" in files}
    assert {"--task", "--defense", "--device", "--threads", "--results", "--executor", "--allow-stale"} <= set(shared)
    for flag, files in shared.items():
        assert [f for f in files if (f, flag) not in OWN] == ["flags.py"], (flag, files)


def test_the_commands_show_a_shared_flag_with_the_same_help():
    commands = {name: _actions(name) for name in ("run", "sweep", "compare", "tune")}
    for flag in ("--results", "--device", "--threads", "--dev", "--quiet", "--executor", "--jobs", "--isolation"):
        helps = {name: actions[flag].help for name, actions in commands.items()}
        assert len(set(helps.values())) == 1, (flag, helps)
    # what a command states itself: its defaults
    assert commands["compare"]["--tier"].default == "tiny" and commands["run"]["--tier"].default is None
    assert commands["compare"]["--no-refine"].default is True and commands["run"]["--no-refine"].default is None
    assert commands["compare"]["--seeds"].default == "0,1,2" and commands["run"]["--seeds"].default is None
    assert commands["compare"]["--task"].required and not commands["run"]["--task"].required

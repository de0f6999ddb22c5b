"""``bench check --plugin FILE``: the conformance checks on every plugin the file registers (logic in
:mod:`bench.check.plugin_check`). Exit 0 when every check passes, 1 when one fails (each failure listed with its reason)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """examples:
  bench check --plugin docs/examples/my_defense.py
  bench check --plugin my_attack.py --plugin my_task.py          # every plugin both files register
  bench check --plugin my_defense.py --task vision-digits my-blobs   # on these tasks (default: the first that applies)
  bench check --plugin my_package.plugins                         # an installed module
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("check", help="run the conformance checks on the plugins a file registers", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", nargs="+", default=[], metavar="NAME",
                   help="tasks to check defenses and attacks on (default: vision-digits, else the first they apply to, and "
                        "the tasks the checked files register)")
    p.set_defaults(loads_plugins=True)  # it imports the files itself: an import failure is a failed check
    return p


def main(args: argparse.Namespace) -> int:
    from bench.cache import Cache
    from bench.check.plugin_check import load_plugins, run_checks
    from bench.errors import ConfigError

    if not args.plugin:
        raise ConfigError("bench check needs --plugin FILE_OR_MODULE (the plugins to check)")
    missing = [p for p in args.plugin if p.endswith(".py") and not Path(p).is_file()]
    if missing:  # a typo in the path is bad input (exit 2), not a plugin failing its checks
        raise ConfigError(f"plugin file not found: {', '.join(missing)}")
    plugins, outcomes = load_plugins(args.plugin)
    for outcome in outcomes:
        _print(outcome)
    if not plugins and not outcomes:
        raise ConfigError(f"{', '.join(args.plugin)} registers no defense, attack or task")
    print(f"checking {', '.join(f'{p.kind} {p.name}' for p in plugins)}" if plugins else "nothing to check")
    outcomes += run_checks(plugins, Cache(), args.task, on_outcome=_print)
    failed = [o for o in outcomes if not o.ok]
    print(f"{len(outcomes) - len(failed)} check(s) passed, {len(failed)} failed"
          + "".join(f"\n  FAIL {o.plugin.kind} {o.plugin.name}: {o.check}" for o in failed))
    return 1 if failed else 0


def _print(outcome) -> None:
    where = f"{outcome.plugin.kind} {outcome.plugin.name}: {outcome.check}"
    if outcome.ok:
        print(f"ok    {where} ({outcome.seconds:.1f} s)")
        for line in outcome.passed:
            print(f"        {line}")
    else:
        print(f"FAIL  {where}")
        for line in outcome.failure.splitlines():
            print(f"        {line}")
    sys.stdout.flush()

"""``bench submit``: check a contributed results folder and copy it into ``leaderboard/submissions/<name>/``."""

from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  bench submit results --name my-lab-weight-noise --claims weight-noise.yaml --plugin my_defense.py
  bench submit results --name my-lab-weight-noise --claims weight-noise.yaml --plugin my_defense.py --force

Every problem is listed at once (schema version, provenance, code fingerprints, task settings, seeds, the default
attack suite, claims); nothing is copied until there is none. The sources of plugins that are not built in are
copied with the runs (into code/, hash-checked against the runs' fingerprints). Then `bench leaderboard` shows the submitted rows marked [submission: NAME], and the
printed git commands put the folder on a branch for a pull request.
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("submit", help="check a results folder and copy it into leaderboard/submissions/ for a PR",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", metavar="RESULTS", help="the results folder to submit (as `bench compare` wrote it)")
    p.add_argument("--name", required=True, help="the submission's name: lower-case letters, digits, '.', '_', '-'")
    p.add_argument("--claims", action="append", default=[], metavar="FILE",
                   help="claims file of a defense that is not built in (repeatable; format: leaderboard/claims/*.yaml)")
    p.add_argument("--into", metavar="DIR",
                   help="submissions folder (default: leaderboard/submissions of this checkout)")
    p.add_argument("--force", action="store_true", help="replace an existing submission of the same name")
    p.add_argument("--new-task", action="store_true",
                   help="allow a task that is not in the harness: its plugin (--plugin FILE) is submitted with the "
                        "runs")
    p.add_argument("--custom-task-settings", action="store_true",
                   help="allow runs whose task settings differ from the official ones (recorded in the submission's "
                        "code/manifest.json)")
    return p


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench.apps.submit import check_name, check_submission, copy_submission, pr_commands
    from bench.errors import ConfigError
    from leaderboard.sources import default_submissions_dir

    check_name(args.name)
    into = Path(args.into) if args.into else default_submissions_dir()
    if (into / args.name).exists() and not args.force:  # before the checks, which read every run
        raise ConfigError(f"{into / args.name} exists: choose another --name, or --force to replace it")
    flags = {"new_task": args.new_task, "custom_task_settings": args.custom_task_settings}
    problems = check_submission(args.folder, args.claims, **flags)
    if problems:
        for line in problems:
            print(f"error {args.folder}: {line}", file=sys.stderr)
        print(f"{len(problems)} problem(s); nothing copied", file=sys.stderr)
        return 2
    target = copy_submission(args.folder, args.name, into, claims=args.claims, force=args.force, **flags)
    print(f"ok: {args.folder} copied to {target}")
    print("to propose it for the leaderboard (`bench leaderboard` already shows it, marked [submission: "
          f"{args.name}]), open a pull request:")
    for command in pr_commands(target, args.name):
        print(f"  {command}")
    return 0

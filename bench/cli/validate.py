"""``bench validate``: check experiment files without running them, reporting every error found, one per line."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("validate", help="validate experiment files without running them")
    p.add_argument("configs", nargs="+", metavar="YAML", help="experiment files")
    return p


def main(args: argparse.Namespace) -> int:
    from bench.errors import BenchError
    from bench.experiment import validate_experiment

    failures = 0
    for path in args.configs:
        try:
            specs = validate_experiment(path)
            print(f"ok    {path}: {len(specs)} run spec(s), e.g. {specs[0].canonical_name}")
        except BenchError as err:
            failures += 1
            for line in str(err).splitlines():
                print(f"error {path}: {line}")
    return 2 if failures else 0

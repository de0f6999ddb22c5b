"""``bench validate``: check an experiment (file and/or command line) without running it, reporting every error."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("validate", help="validate experiment files without running them")
    p.add_argument("configs", nargs="+", metavar="YAML", help="experiment files")
    return p


def main(args: argparse.Namespace) -> int:
    from bench.errors import BenchError
    from bench.experiment import build_request
    from bench.suite import validate_request

    failures = 0
    for path in args.configs:
        try:
            specs = validate_request(build_request(config=path))
            print(f"ok    {path}: {len(specs)} run spec(s), e.g. {specs[0].canonical_name}")
        except BenchError as err:
            failures += 1
            print(f"error {path}: {err}")
    return 2 if failures else 0

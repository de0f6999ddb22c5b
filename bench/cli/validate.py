"""``bench validate``: check experiment and sweep files without running them, reporting every error found, one per line.

A file whose top level has a plural key (``tasks``, ``tiers``, ``defenses``, ``attacks``) is a sweep file
(:mod:`bench.plan.sweep`); any other is an experiment file (:mod:`bench.plan.experiment`).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("validate", help="validate experiment and sweep files without running them")
    p.add_argument("configs", nargs="+", metavar="YAML", help="experiment or sweep files")
    return p


def main(args: argparse.Namespace) -> int:
    from bench.errors import BenchError

    failures = 0
    for path in args.configs:
        try:
            print(f"ok    {path}: {_validate(path)}")
        except BenchError as err:
            failures += 1
            for line in str(err).splitlines():
                print(f"error {path}: {line}")
    return 2 if failures else 0


def _validate(path: str | Path) -> str:
    """Bind every config of the file (raising a BenchError with every error found); describe what it would run."""
    from bench.core.yaml_dataclass import read_mapping
    from bench.errors import ConfigError
    from bench.plan.experiment import TOP_LEVEL_KEYS, is_sweep, validate_experiment
    from bench.plan.sweep import plan_file

    if is_sweep(read_mapping(path, "config file", TOP_LEVEL_KEYS)):
        sweep_plan = plan_file(path)
        runs = {spec.run_id: spec for planned in sweep_plan.suites for spec in planned.runs}
        if not runs:
            skipped = "; ".join(why for _, why in sweep_plan.not_applicable[:3])
            raise ConfigError(f"no combination of this sweep applies ({len(sweep_plan.not_applicable)} skipped as not "
                              f"applicable: {skipped or 'none'})")
        return (f"sweep of {len(sweep_plan.suites)} suite(s), {len(runs)} run(s) known before any result, "
                f"e.g. {next(iter(runs.values())).canonical_name}")
    specs = validate_experiment(path)
    return f"{len(specs)} run spec(s), e.g. {specs[0].canonical_name}"

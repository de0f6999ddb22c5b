"""``bench tune``: select a defense's config on a validation suite, or measure its budget curve (bench.apps.tuning)."""

from __future__ import annotations

import argparse
import json
import math
import sys

from bench.cli import flags

EPILOG = """examples:
  bench tune --defense ga-retain --task vision-digits                     # the declared search space
  bench tune --defense ga-retain --task vision-digits --space alpha=0.5,2 --seeds 100 \\
      --attack full-ft optimizer=muon lr=0.1 --attack full-ft optimizer=adam lr=0.01 --write-preset
  bench tune --defense tar --task vision-digits --budgets 1,4,16 --cost-cap 4   # resistance vs defender passes
  bench tune --defense ga-retain.tuned-vision-digits --task vision-digits --budgets 1,4,16 --write-preset
      # the best budget within the cost cap as preset ga-retain.tuned-vision-digits-budget (tuned args + steps)

Candidates are trained and attacked on validation seeds (never the reported 0,1,2) and the validation attacks
(default: the task's default suite with the LR search, no refinement). Selection: among candidates usable at release
on every seed, the best utility-bounded worst case (see bench/apps/tuning.py). Records: <results>/tuning/*.parquet.
The same command resumes an interrupted tuning (completed runs are kept).
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("tune", help="tune a defense's config on a validation suite, or measure its budget curve",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    flags.plugins(p, required=True, attack=False)  # every candidate shares the --defense values
    flags.model(p, tier="tiny")
    p.add_argument("--space", nargs="+", metavar="KEY=V1,V2",
                   help="search space instead of the defense's declared one (null: the config's rule)")
    flags.seeds(p, default=None, help="validation seeds, comma-separated (default 100,101; never 0,1,2)")
    p.add_argument("--attack", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"),
                   help="a validation attack (repeatable; `default`: the task's default suite, the default)")
    p.add_argument("--families", metavar="F1,F2",
                   help="only these families of the task's default suite (e.g. muon,adam; see `bench ls`)")
    p.add_argument("--search", choices=("grid", "lr-search", "task"), default="lr-search",
                   help="LR strategy of the default suite's families (default lr-search; task: the task's choice)")
    p.add_argument("--refine", action="store_true", help="add half-decade LR refinement (off by default)")
    p.add_argument("--utility-limit", type=int, default=20, metavar="L",
                   help="the selection's utility-bounded worst case keeps attacks with at most L%% utility drop "
                        "(5, 20 or 50; default 20)")
    flags.baseline(p, default=True)
    p.add_argument("--budgets", metavar="K1,K2,...",
                   help="budget-curve mode: factors of today's training length (must include 1), e.g. 1,4,16")
    p.add_argument("--cost-cap", type=float, metavar="K",
                   help="budget mode: the best budget within K times today's training length (default and most: "
                        "the leaderboard's cap, bench.run.tuning_record.COST_CAP)")
    p.add_argument("--write-preset", nargs="?", const="", metavar="NAME",
                   help="write the selected config as preset NAME in defenses/tuned/ (default tuned-<task>; "
                        "<preset>-tuned-<task> when --defense names a preset); with --budgets: the best budget "
                        "within the cost cap, steps pinned (default budget-<task>, <preset>-budget[-<task>])")
    flags.dry_run(p, what="the candidates, the runs they need,")
    flags.results(p)
    flags.device(p)
    flags.measurement(p, drift=False, stale=False)
    flags.executor(p)
    return p


def spec_from_args(args: argparse.Namespace):
    """The :class:`bench.apps.tuning.TuneSpec` a command line asks for (bad input: a ConfigError)."""
    from bench.apps.tuning import VALIDATION_SEEDS, TuneSpec
    from bench.errors import ConfigError
    from bench.plan.experiment import parse_assignments, parse_seeds
    from bench.plan.sweep import DEFAULT_SUITE, Entry

    defense, *defense_args = args.defense
    task, *task_args = args.task
    space = None
    if args.space:
        space = {key: tuple(_value(v) for v in values.split(",") if v.strip())
                 for key, values in parse_assignments(args.space, "--space").items()}
    attacks = tuple(Entry(name=name, args=parse_assignments(rest, f"--attack {name}"), where=f"--attack {name}")
                    for name, *rest in (args.attack or [[DEFAULT_SUITE]]))
    budgets: tuple[float, ...] = ()
    if args.budgets:
        try:
            budgets = tuple(float(b) for b in args.budgets.split(",") if b.strip())
        except ValueError as err:
            raise ConfigError(f"--budgets must be comma-separated numbers, got {args.budgets!r}") from err
    return TuneSpec(defense=defense, task=task, tier=args.tier, model=args.model,
                    task_args=parse_assignments(task_args, f"--task {task}"),
                    base_args=parse_assignments(defense_args, f"--defense {defense}"), space=space,
                    seeds=parse_seeds(args.seeds) if args.seeds else VALIDATION_SEEDS, attacks=attacks,
                    families=tuple(f.strip() for f in (args.families or "").split(",") if f.strip()),
                    search=None if args.search == "task" else args.search, refine=args.refine,
                    utility_limit=args.utility_limit, baseline=args.baseline, budgets=budgets)


def _value(text: str):
    text = text.strip()
    return None if text.lower() in ("null", "none", "~") else text


def main(args: argparse.Namespace) -> int:
    from bench.apps.tuning import check_spec, run_tuning, tune_command
    from bench.run.devices import resolve_device
    from bench.run.stages import Session

    spec = spec_from_args(args)
    check_spec(spec)  # bad input stops here, before any model is built
    if spec.budgets and args.write_preset is not None:
        from bench.apps.tuned_preset import check_budget_preset

        check_budget_preset(spec, args.cost_cap)
    if args.dry_run:
        return print_dry_run(spec, args.results)
    threads = flags.set_threads(args.threads, {spec.tier})
    resolve_device(args.device, spec.tier)

    def make_session() -> Session:
        return Session(results_dir=args.results, official=not args.dev, device=args.device, progress=not args.quiet)

    def announce(index: int, planned) -> None:
        if not args.quiet:
            print(f"suite {index + 1}: {planned.where}", file=sys.stderr)

    command = tune_command(spec)
    try:
        tuning = run_tuning(spec, make_session, on_suite=announce, command=command,
                            make_executor=lambda session, tier: flags.executor_for(args, session, tier, threads))
    except KeyboardInterrupt:
        print(f"\ninterrupted: completed runs are kept in {args.results}/; run the same command again to resume.",
              file=sys.stderr)
        return 130
    print(format_table(tuning.table))
    print(f"\nrule: {tuning.table['rule'].iloc[0]}")
    if spec.budgets:
        from bench.run.tuning_record import COST_CAP, best_budget

        cap = args.cost_cap if args.cost_cap is not None else COST_CAP
        best = best_budget(tuning.table, cap)
        print(f"best budget within {cap:g}x: " + ("none usable" if best is None else
              f"{best['budget_factor']:g}x ({best['fb_passes']:.0f} forward-backward passes)"))
    if tuning.selected is None:
        print("selected: none (no candidate is usable at release on every validation seed)")
    else:
        print(f"selected: candidate {tuning.selected}: {json.dumps(tuning.selected_args)}")
    print(f"recorded: {tuning.path}\nwall {tuning.wall_seconds:.1f} s, CPU {tuning.cpu_seconds:.1f} s "
          f"(this process and its workers); reproduce: {command}")
    if args.write_preset is not None:
        from bench.apps.tuned_preset import write_selected

        written = write_selected(spec, tuning, args.write_preset, command, cost_cap=args.cost_cap)
        if written is None:
            print("no preset written: nothing was selected" + (" within the cost cap" if spec.budgets else ""),
                  file=sys.stderr)
            return 1
        budget = ("" if written.budget_factor is None else
                  f"; {written.budget_factor:g}x today's training length, {written.fb_passes:.0f} passes")
        print(f"preset written: --defense {written.label} ({written.path}{budget})")
    if tuning.failed_runs:
        print(f"{tuning.failed_runs} run(s) failed (`bench show RUN_ID --results {args.results}`)", file=sys.stderr)
    return 0


def print_dry_run(spec, results: str) -> int:
    """The candidates and how many runs the tuning takes (known before any result, and at most later), with how
    many are already done in ``results``."""
    from bench.apps.tuning import budget_candidates, candidates, plan_tuning
    from bench.exec.sweep_run import run_states

    if spec.budgets:  # the steps each factor means are read from the 1x model once it is trained
        steps = spec.base_args.get("steps")
        configs = budget_candidates(spec, int(steps) if steps is not None else 1)
        shown = [f"{k:g}x today's training length" for k in sorted(spec.budgets)]
    else:
        configs = candidates(spec)
        shown = [", ".join(f"{k}={v}" for k, v in c.items()) or "defaults" for c in configs]
    for index, text in enumerate(shown):
        print(f"candidate {index}: {text}")
    sweep_plan = plan_tuning(spec, configs)
    ids = list(dict.fromkeys(s.run_id for planned in sweep_plan.suites for s in planned.runs))
    states = run_states(results, ids)
    later = sum(planned.later for planned in sweep_plan.suites)
    done = sum(state == "done" for state in states.values())
    print(f"{len(configs)} candidates on seeds {list(spec.seeds)}: {len(ids)} runs known before any result "
          f"({done} done in {results}/), up to {later} more chosen from results (LR search)")
    return 0


def format_table(table) -> str:
    """The candidates as an aligned text table."""
    header = ["#", "config", "usable", "retained", "bounded wc", "worst case", "vs none", "fb passes", "train s", ""]
    rows = [header]
    for _, r in table.iterrows():
        config = ", ".join(f"{k}={v}" for k, v in json.loads(r["args"]).items()) or "defaults"
        if not math.isnan(r["budget_factor"]):
            config = f"{r['budget_factor']:g}x: {config}"
        rows.append([str(r["candidate"]), config, "yes" if r["usable_at_release"] else "NO",
                     _num(r["retained_release"]), _score(r["bounded_score"]), _score(r["worst_score"]),
                     "—" if math.isnan(r["ratio"]) else f"{r['ratio']:.2g}×", _num(r["fb_passes"], "{:.0f}"),
                     _num(r["training_seconds"], "{:.1f}"), "<- selected" if r["selected"] else (r["error"] or "")])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _num(value, fmt: str = "{:.3f}") -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def _score(key: float) -> str:
    from bench.run.tuning_record import _steps

    return "—" if isinstance(key, float) and math.isnan(key) else _steps(key)

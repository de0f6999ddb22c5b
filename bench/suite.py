"""Running a defense against an attack suite: LR sweeps with refinement, a baseline, several seeds, resume.

``run_suite`` expands a request into :class:`~bench.spec.RunSpec` objects and runs them through one
:class:`~bench.runner.Session` (so the released and defended stages are built once). Without an explicit attack it
uses the task's default suite: for each family, one run per learning-rate decade, then half-decade refinement
points around the family's best. Runs already completed in the results directory are skipped (resume), failed runs
are recorded and the suite goes on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from bench.contracts import AttackSweep
from bench.metrics import worst_case
from bench.registry import TASKS
from bench.results import completed_run_ids, read_run_json
from bench.runner import RunResult, Session, run
from bench.spec import RunSpec, make_spec, resolve_plugin


def decades(high_exponent: int, low_exponent: int) -> tuple[float, ...]:
    """Learning rates 10^high, 10^(high-1), ..., 10^low."""
    return tuple(float(f"1e{e}") for e in range(high_exponent, low_exponent - 1, -1))


def refinement(lr: float) -> tuple[float, float]:
    """The two half-decade neighbours of ``lr`` (rounded to 3 significant digits for stable run ids)."""
    return tuple(float(f"{lr * 10 ** s:.3g}") for s in (0.5, -0.5))  # type: ignore[return-value]


@dataclass
class RunRecord:
    """One run of a suite: its spec, and its status and summary (from this call or from disk when resumed)."""

    spec: RunSpec
    status: str
    summary: dict[str, Any]
    error: str | None = None
    resumed: bool = False
    family: str = ""

    @classmethod
    def from_result(cls, result: RunResult, family: str) -> "RunRecord":
        return cls(result.spec, result.status, result.summary, result.error, False, family)


@dataclass
class SuiteReport:
    records: list[RunRecord] = field(default_factory=list)

    @property
    def failed(self) -> list[RunRecord]:
        return [r for r in self.records if r.status != "success"]

    @property
    def run_ids(self) -> list[str]:
        return [r.spec.run_id for r in self.records]


@dataclass(frozen=True)
class SuiteRequest:
    """What to run: one defense (plus the ``none`` baseline) on one task, over seeds, against an attack or the suite."""

    task: str
    defense: str
    tier: str = "tiny"
    model: str | None = None
    seeds: Sequence[int] = (0,)
    attack: str | None = None
    task_args: Mapping[str, Any] = field(default_factory=dict)
    defense_args: Mapping[str, Any] = field(default_factory=dict)
    attack_args: Mapping[str, Any] = field(default_factory=dict)
    baseline: bool = True
    refine: bool = True


def attack_sweeps(request: SuiteRequest) -> list[AttackSweep]:
    """The sweeps a request runs: the single given attack (no LR sweep), or the task's default suite."""
    if request.attack is not None:
        return [AttackSweep(request.attack, dict(request.attack_args), lrs=(), refine=False, family=request.attack)]
    _, task_cfg = resolve_plugin(TASKS, request.task, request.task_args)
    sweeps = TASKS.get(request.task.partition(".")[0])().default_attacks(task_cfg, request.tier)
    # Attack args given on the command line without --attack apply to every family of the default suite.
    return [AttackSweep(s.attack, {**s.args, **request.attack_args}, s.lrs, s.refine, s.family) for s in sweeps]


def validate_request(request: SuiteRequest) -> list[RunSpec]:
    """Build the first spec of every sweep, defense and seed, so configuration errors surface before any run."""
    specs = []
    for defense, defense_args in _defenses(request):
        for sweep in attack_sweeps(request):
            args = dict(sweep.args)
            if sweep.lrs:
                args["lr"] = sweep.lrs[0]
            for seed in request.seeds:
                specs.append(_spec(request, defense, defense_args, sweep.attack, args, seed))
    return specs


def _defenses(request: SuiteRequest) -> list[tuple[str, Mapping[str, Any]]]:
    pairs: list[tuple[str, Mapping[str, Any]]] = []
    if request.baseline and request.defense != "none":
        pairs.append(("none", {}))
    pairs.append((request.defense, request.defense_args))
    return pairs


def _spec(request: SuiteRequest, defense: str, defense_args, attack: str, attack_args, seed: int) -> RunSpec:
    return make_spec(task=request.task, defense=defense, attack=attack, tier=request.tier, model=request.model,
                     seed=seed, task_args=request.task_args, defense_args=defense_args, attack_args=attack_args)


def run_suite(
    request: SuiteRequest,
    session: Session,
    *,
    resume: bool = True,
    on_run: Callable[[RunRecord], None] | None = None,
    progress: bool = True,
) -> SuiteReport:
    """Run every (defense, seed, sweep point) of ``request``; see the module docstring."""
    from tqdm.auto import tqdm

    validate_request(request)
    sweeps = attack_sweeps(request)
    defenses = _defenses(request)
    done = completed_run_ids(session.results_dir) if resume else set()
    estimate = len(defenses) * len(request.seeds) * sum(max(len(s.lrs), 1) + (2 if s.refine and s.lrs else 0) for s in sweeps)
    report = SuiteReport()
    bar = tqdm(total=estimate, desc=f"{request.task} runs", unit="run", disable=not progress)

    def execute(spec: RunSpec, family: str) -> RunRecord:
        if spec.run_id in done:
            info = read_run_json(session.results_dir / spec.run_id)
            record = RunRecord(spec, "success", info.get("summary", {}), None, True, family)
        else:
            record = RunRecord.from_result(run(spec, session), family)
        report.records.append(record)
        bar.update(1)
        bar.set_postfix_str(f"{spec.defense_label} {spec.attack_label}"[:60])
        if on_run is not None:
            on_run(record)
        return record

    try:
        for defense, defense_args in defenses:
            for seed in request.seeds:
                for sweep in sweeps:
                    family = sweep.family or sweep.attack
                    if not sweep.lrs:
                        execute(_spec(request, defense, defense_args, sweep.attack, sweep.args, seed), family)
                        continue
                    grid = [execute(_spec(request, defense, defense_args, sweep.attack, {**sweep.args, "lr": lr}, seed), family)
                            for lr in sweep.lrs]
                    if not (sweep.refine and request.refine):
                        continue
                    best_lr = _best_lr(grid)
                    if best_lr is None:
                        continue
                    tried = {r.spec.attack.kwargs["lr"] for r in grid}
                    for lr in refinement(best_lr):
                        if lr not in tried:
                            execute(_spec(request, defense, defense_args, sweep.attack, {**sweep.args, "lr": lr}, seed), family)
    finally:
        bar.close()
    return report


def _best_lr(records: list[RunRecord]) -> float | None:
    """The learning rate of the attacker's best successful run (fewest steps to harm, then highest harm AUC)."""
    ok = [r for r in records if r.status == "success" and "steps_to_harm" in r.summary]
    if not ok:
        return None
    best = worst_case(
        [r.summary["steps_to_harm"] for r in ok],
        [r.summary["censored"] for r in ok],
        [r.summary.get("harm_auc", 0.0) if math.isfinite(r.summary.get("harm_auc", 0.0)) else 0.0 for r in ok],
    )
    return float(ok[best.index].spec.attack.kwargs["lr"])

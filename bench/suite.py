"""Running a defense against an attack suite: LR sweeps with refinement, a baseline, several seeds, resume.

``run_suite`` expands a request into :class:`~bench.spec.RunSpec` objects and runs them through one
:class:`~bench.runner.Session` (so the released and defended stages are built once). Without an explicit attack it
uses the task's default suite: for each family, one run per learning-rate decade, then half-decade refinement
points around the family's best. Runs already completed in the results directory are skipped (resume) and the
stages only they would need are never built; failed runs are recorded and the suite goes on.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from bench.contracts import AttackSweep
from bench.errors import BenchError
from bench.metrics import worst_case
from bench.registry import TASKS
from bench.results import check_writable, completed_run_ids, read_run_json
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
    search: str | None = None
    """Override every family's LR strategy ("grid" or "lr-search"); None keeps the task's choice."""


def attack_sweeps(request: SuiteRequest) -> list[AttackSweep]:
    """The sweeps a request runs: the single given attack (no LR sweep), or the task's default suite."""
    if request.attack is not None:
        return [AttackSweep(request.attack, dict(request.attack_args), lrs=(), refine=False, family=request.attack)]
    _, task_cfg = resolve_plugin(TASKS, request.task, request.task_args)
    sweeps = TASKS.get(request.task.partition(".")[0])().default_attacks(task_cfg, request.tier)
    # Attack args given on the command line without --attack apply to every family of the default suite.
    search = {"search": request.search} if request.search else {}
    return [dataclasses.replace(s, args={**s.args, **request.attack_args}, **search) for s in sweeps]


def validate_request(request: SuiteRequest) -> list[RunSpec]:
    """Build the first spec of every sweep, defense and seed, so configuration errors surface before any run."""
    specs = []
    for defense, defense_args in _defenses(request):
        for sweep in attack_sweeps(request):
            args = dict(sweep.args)
            if sweep.lrs:
                args["lr"] = sweep.lrs[0]
            for seed in request.seeds:
                specs.append(_spec(request, defense, defense_args, sweep.attack, args, seed=seed))
    return specs


def _defenses(request: SuiteRequest) -> list[tuple[str, Mapping[str, Any]]]:
    pairs: list[tuple[str, Mapping[str, Any]]] = []
    if request.baseline and request.defense != "none":
        pairs.append(("none", {}))
    pairs.append((request.defense, request.defense_args))
    return pairs


def _spec(request: SuiteRequest, defense: str, defense_args, attack: str, attack_args, *, seed: int,
          purpose: str = "attack") -> RunSpec:
    return make_spec(task=request.task, defense=defense, attack=attack, tier=request.tier, model=request.model,
                     seed=seed, purpose=purpose, task_args=request.task_args, defense_args=defense_args,
                     attack_args=attack_args)


def run_suite(
    request: SuiteRequest,
    session: Session,
    *,
    resume: bool = True,
    on_run: Callable[[RunRecord], None] | None = None,
) -> SuiteReport:
    """Run every (defense, seed, sweep point) of ``request``; see the module docstring.

    Stages are built only for runs that still have work: a resumed suite whose runs are all done builds nothing.
    """
    from tqdm.auto import tqdm

    first_specs = validate_request(request)
    check_writable(session.results_dir)
    done = completed_run_ids(session.results_dir) if resume else set()
    # The first run of every sweep is known now; later ones (LR search, refinement) only once they are reached,
    # so their stages are prepared then (memoised by the session: at most once each).
    _prepare([spec for spec in first_specs if spec.run_id not in done], session)
    sweeps = attack_sweeps(request)
    defenses = _defenses(request)
    per_sweep = [max(len(s.lrs), 1) + (min(s.keep, len(s.lrs)) if s.search == "lr-search" else 0)
                 + (2 if s.refine and s.lrs else 0) for s in sweeps]
    estimate = len(defenses) * len(request.seeds) * sum(per_sweep)
    report = SuiteReport()
    bar = tqdm(total=estimate, desc=f"{request.task} runs", unit="run", disable=not session.progress)

    def execute(spec: RunSpec, family: str) -> RunRecord:
        if spec.run_id in done:
            info = read_run_json(session.results_dir / spec.run_id)
            record = RunRecord(spec, "success", info.get("summary", {}), None, True, family)
        else:
            _prepare([spec], session)
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
                    make = functools.partial(_spec, request, defense, defense_args, sweep.attack, seed=seed)
                    family = sweep.family or sweep.attack
                    _run_sweep(sweep, make, functools.partial(execute, family=family), refine=request.refine)
    finally:
        bar.close()
    return report


def _prepare(specs: list[RunSpec], session: Session) -> None:
    """Build the released and defended stages of ``specs`` before their runs, so bad input (a missing model or
    dataset, a defense config that matches no layer) stops the suite with its clear error instead of filling the
    results with failed runs. Any other exception is left for the runs to record as failures.
    """
    for spec in specs:
        try:
            session.defended(spec)
        except BenchError:
            raise
        except Exception:  # noqa: BLE001 - recorded by each run that needs this stage
            pass


def _run_sweep(sweep: AttackSweep, make: Callable[..., RunSpec], execute: Callable[[RunSpec], RunRecord], *,
               refine: bool) -> None:
    """One family: a single run, or an LR grid / LR search followed by half-decade refinement around the best."""
    if not sweep.lrs:
        execute(make(dict(sweep.args)))
        return
    if sweep.search == "lr-search":
        probes = [execute(make({**sweep.args, "lr": lr, "budget": sweep.probe_steps}, purpose="lr-probe"))
                  for lr in sweep.lrs]
        full = [execute(make({**sweep.args, "lr": lr})) for lr in best_probe_lrs(probes, sweep.keep)]
    else:
        full = [execute(make({**sweep.args, "lr": lr})) for lr in sweep.lrs]
    best_lr = _best_lr(full) if sweep.refine and refine else None
    if best_lr is None:
        return
    tried = {r.spec.attack.kwargs["lr"] for r in full}
    for lr in refinement(best_lr):
        if lr not in tried:
            execute(make({**sweep.args, "lr": lr}))


def probe_score(summary: dict[str, Any]) -> tuple[int, float]:
    """How promising a short LR-search probe run is, as ``(rank, progress)``; tuples compare higher-is-better.

    ``rank``: 2 harmed, 1 ended usable, 0 ended ``broken`` (below every run that did not: a learning rate that breaks
    the model in a few steps is not the attacker's best), -1 diverged or unscorable (never given a full run).
    ``progress``: the relative decrease of the task's harm proxy from the first probe to the last (``proxy_start``,
    ``proxy_end``) when the run recorded one, else of the attack's training loss (``loss_start``, ``loss_end``).
    """
    if summary.get("outcome") == "harmed":
        return 2, math.inf
    if summary.get("diverged"):
        return -1, -math.inf
    keys = ("proxy_start", "proxy_end") if "proxy_start" in summary else ("loss_start", "loss_end")
    start, end = (summary.get(k, math.nan) for k in keys)
    start, end = (math.nan if v is None else float(v) for v in (start, end))
    if not (math.isfinite(start) and math.isfinite(end)) or start == 0:
        return -1, -math.inf
    return (0 if summary.get("outcome") == "broken" else 1), (start - end) / abs(start)


def best_probe_lrs(probes: list[RunRecord], keep: int) -> list[float]:
    """The ``keep`` learning rates whose probe runs scored best (failed, diverged and unscorable probes skipped)."""
    ok = [r for r in probes if r.status == "success" and probe_score(r.summary)[0] >= 0]
    ranked = sorted(ok, key=lambda r: (probe_score(r.summary), _finite_or_zero(r.summary.get("harm_auc", 0.0))),
                    reverse=True)
    return [float(r.spec.attack.kwargs["lr"]) for r in ranked[:keep]]


def _finite_or_zero(value: Any) -> float:
    return float(value) if value is not None and math.isfinite(float(value)) else 0.0


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

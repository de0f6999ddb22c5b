"""The pure planner: a suite request becomes waves of :class:`~bench.core.spec.RunSpec` objects.

Each attack family of each (defense, seed) is a small program written as a generator (:func:`family_waves`): it
yields a wave of specs and receives their finished records — an LR grid is one wave; an LR search is probes, then
full runs at the best probes; half-decade refinement around the best full run is one more wave. The
:class:`Planner` advances every family of one or more requests, either in lockstep (a wave holds the runs of all
families that can run now) or streaming (each family moves on as soon as its own wave has finished), and an executor
may run what is ready in parallel. Nothing here runs a model or reads files: the same finished records always give
the same next wave.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.contracts import AttackFamily
from bench.core.lr_grid import refinement
from bench.core.metrics import worst_case
from bench.core.spec import DEFAULT_SUITE_LABEL, RunSpec, make_spec, resolve_plugin
from bench.errors import ConfigError
from bench.registry import TASKS
from bench.run.summary import RunSummary, WaveKind

Waves = Generator[list[RunSpec], list["RunRecord"], None]


@dataclass
class RunRecord:
    """One finished run: its spec, status and summary (from this call or read back from disk when resumed)."""

    spec: RunSpec
    status: str
    summary: RunSummary
    error: str | None = None
    resumed: bool = False
    family: str = ""


def attack_families(request) -> list[AttackFamily]:
    """The attack families a request runs: the single given attack (no LR search), or the task's default suite."""
    if request.attack is not None:
        return [AttackFamily(request.attack, dict(request.attack_args), lrs=(), refine=False, family=request.attack)]
    _, task_cfg = resolve_plugin(TASKS, request.task, request.task_args)
    suite = TASKS.get(request.task.partition(".")[0])().default_attacks(task_cfg, request.tier)
    # Attack args given on the command line without --attack apply to every family of the default suite.
    search = {"search": request.search} if request.search else {}
    wanted = getattr(request, "families", ())
    if wanted:  # a declared subset of the suite (e.g. a tuning's validation attacks)
        known = [s.family or s.attack for s in suite]
        unknown = [f for f in wanted if f not in known]
        if unknown:
            raise ConfigError(f"attack families {unknown} are not in the default suite of task {request.task!r}; "
                              f"its families: {', '.join(known)}")
        suite = [s for s in suite if (s.family or s.attack) in wanted]
    return [dataclasses.replace(s, args={**s.args, **request.attack_args}, **search) for s in suite]


def defenses_of(request) -> list[tuple[str, Mapping[str, Any]]]:
    """The defense configs a request runs: ``none`` first as the baseline (unless turned off), then the defense."""
    pairs: list[tuple[str, Mapping[str, Any]]] = []
    if request.baseline and request.defense != "none":
        pairs.append(("none", {}))
    pairs.append((request.defense, request.defense_args))
    return pairs


def spec_of(request, defense: str, defense_args, attack: str, attack_args, *, seed: int,
            purpose: str = "attack") -> RunSpec:
    return make_spec(task=request.task, defense=defense, attack=attack, tier=request.tier, model=request.model,
                     seed=seed, purpose=purpose, suite=suite_label(request), task_args=request.task_args,
                     defense_args=defense_args, attack_args=attack_args)


def suite_label(request) -> str:
    """The attack suite a request runs, as recorded with each of its runs (:attr:`bench.core.spec.RunSpec.suite`):
    ``default`` for the task's default suite as it is; ``default(k=v,…)`` when attack args, an LR strategy
    (``search``) or ``refine=False`` change it; the attack and its args for a single ``--attack``. The leaderboard
    never pools worst cases over runs of different suites."""
    if request.attack is None:
        changes = {**dict(request.attack_args), **({"search": request.search} if request.search else {}),
                   **({} if request.refine else {"refine": False})}
        name = DEFAULT_SUITE_LABEL
    else:
        changes, name = dict(request.attack_args), request.attack
    if not changes:
        return name
    values = {k: _typed(v) for k, v in sorted(changes.items())}
    return f"{name}({','.join(f'{k}={json.dumps(v, sort_keys=True)}' for k, v in values.items())})"


def _typed(value: Any) -> Any:
    """A command-line value as the number or boolean it spells, so that ``lr=1e-3`` and ``lr=0.001`` name one
    suite (the configs themselves are typed by :func:`bench.config.build_config`)."""
    if not isinstance(value, str):
        return value
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            continue
    return value


def family_waves(family: AttackFamily, make: Callable[..., RunSpec], *, refine: bool) -> Waves:
    """One family: a single run, or an LR grid / LR search followed by half-decade refinement around the best.

    Each spec carries its wave (numbered from 0 within the family, :attr:`bench.core.spec.RunSpec.wave`) and the wave's
    kind, which its run records (:attr:`bench.run.summary.RunSummary.wave`) for the attacker's order of trials."""
    if not family.lrs:
        yield _in_wave([make(dict(family.args))], 0, "full")
        return
    wave = 0
    if family.search == "lr-search":
        probes = yield _in_wave([make({**family.args, "lr": lr, "budget": family.probe_steps}, purpose="lr-probe")
                                 for lr in family.lrs], wave, "probe")
        wave += 1
        full = yield _in_wave([make({**family.args, "lr": lr}) for lr in best_probe_lrs(probes, family.keep)],
                              wave, "full")
    else:
        full = yield _in_wave([make({**family.args, "lr": lr}) for lr in family.lrs], wave, "full")
    best_lr = best_lr_of(full) if family.refine and refine else None
    if best_lr is None:
        return
    tried = {r.spec.attack.kwargs["lr"] for r in full}
    extra = [make({**family.args, "lr": lr}) for lr in refinement(best_lr) if lr not in tried]
    if extra:
        yield _in_wave(extra, wave + 1, "refinement")


def _in_wave(specs: list[RunSpec], wave: int, kind: WaveKind) -> list[RunSpec]:
    return [dataclasses.replace(spec, wave=wave, wave_kind=kind) for spec in specs]


class Planner:
    """Every family of one or more requests (see the module docstring), advanced in one of two ways:

    * in lockstep (:meth:`wave`, :meth:`finish`): every family's current wave at once, for executors that take a
      fixed list of runs;
    * streaming (:meth:`start`, :meth:`feed`): a family moves on as soon as its own wave has finished, so its next
      runs can start while other families' runs are still going (no wave barrier; see
      :func:`bench.exec.suite_run.run_suites`).

    Either way each family receives exactly its own wave's records, in its own order, so both give the same runs. A
    run shared by several families (e.g. the ``none`` baseline of several requests on one task) runs once.
    """

    def __init__(self, request, *more_requests):
        self.request = request
        self.requests = (request, *more_requests)
        self.families = attack_families(request)
        self._programs: list[tuple[str, Waves]] = []
        self._owner: list[int] = []  # program -> the index of the request it belongs to
        for index, req in enumerate(self.requests):
            families = self.families if index == 0 else attack_families(req)
            for defense, defense_args in defenses_of(req):
                for seed in req.seeds:
                    for family in families:
                        make = functools.partial(spec_of, req, defense, defense_args, family.attack, seed=seed)
                        self._programs.append((family.family or family.attack,
                                               family_waves(family, make, refine=req.refine)))
                        self._owner.append(index)
        self._pending: list[list[RunSpec]] = [self._advance(program, None) for _, program in self._programs]
        self._members: list[dict[str, None]] = [{} for _ in self.requests]  # request -> its run ids, in order
        self._records: dict[str, RunRecord] = {}
        self._waiting: dict[str, list[int]] = {}  # run id -> the programs whose current wave waits for it
        self._issued: set[str] = set()

    @staticmethod
    def _advance(program: Waves, records: list[RunRecord] | None) -> list[RunSpec]:
        """The program's next non-empty wave ([] once it is finished)."""
        try:
            wave = next(program) if records is None else program.send(records)
            while not wave:  # e.g. an LR search whose probes all failed has no full runs to do
                wave = program.send([])
            return wave
        except StopIteration:
            return []

    def _join(self, program: int, spec: RunSpec) -> None:
        self._members[self._owner[program]].setdefault(spec.run_id)

    # -- lockstep ----------------------------------------------------------------------------------------------
    def wave(self) -> list[tuple[str, RunSpec]]:
        """The runs that can run now, as (family, spec), each run id once (identical runs collapse)."""
        seen, out = set(), []
        for i, ((family, _), specs) in enumerate(zip(self._programs, self._pending)):
            for spec in specs:
                self._join(i, spec)
                if spec.run_id not in seen:
                    seen.add(spec.run_id)
                    out.append((family, spec))
        return out

    def finish(self, records: Mapping[str, RunRecord]) -> None:
        """Feed the finished records of the current wave (by run id); every family moves to its next wave."""
        self._records.update(records)
        for i, (_, program) in enumerate(self._programs):
            if self._pending[i]:
                self._pending[i] = self._advance(program, [records[s.run_id] for s in self._pending[i]])

    @property
    def done(self) -> bool:
        return not any(self._pending)

    # -- streaming ---------------------------------------------------------------------------------------------
    def start(self) -> list[tuple[str, RunSpec]]:
        """The runs every family starts with, as (family, spec), each run id once; then :meth:`feed` each record."""
        return self._issue(range(len(self._programs)))

    def feed(self, record: RunRecord) -> list[tuple[str, RunSpec]]:
        """One finished run; returns the runs that became ready (of the families whose wave it completed)."""
        self._records[record.spec.run_id] = record
        complete = [i for i in dict.fromkeys(self._waiting.pop(record.spec.run_id, ()))  # (a wave may list a run twice)
                    if all(s.run_id in self._records for s in self._pending[i])]
        for i in complete:
            self._advance_recorded(i)
        return self._issue(complete)

    def _advance_recorded(self, i: int) -> None:
        """Move family ``i`` to its next wave, handing it its current wave's recorded results."""
        self._pending[i] = self._advance(self._programs[i][1], [self._records[s.run_id] for s in self._pending[i]])

    def _issue(self, programs) -> list[tuple[str, RunSpec]]:
        out, todo = [], list(programs)
        while todo:
            i = todo.pop(0)
            for spec in self._pending[i]:
                self._join(i, spec)
            missing = [s for s in self._pending[i] if s.run_id not in self._records]
            if self._pending[i] and not missing:  # its whole wave already ran (for another family): move on
                self._advance_recorded(i)
                todo.append(i)
                continue
            for spec in missing:
                self._waiting.setdefault(spec.run_id, []).append(i)
                if spec.run_id not in self._issued:
                    self._issued.add(spec.run_id)
                    out.append((self._programs[i][0], spec))
        return out

    def discard(self, run_id: str) -> None:
        """Forget ``run_id`` (its caller dropped it unrun): a family that reaches it later gets it again."""
        self._issued.discard(run_id)
        self._waiting.pop(run_id, None)
        self._records.pop(run_id, None)

    def record_of(self, run_id: str) -> RunRecord | None:
        """The finished record of ``run_id`` fed so far, if any."""
        return self._records.get(run_id)

    def owners(self, run_id: str) -> list[int]:
        """The indexes of the requests whose families have ``run_id`` in a wave so far."""
        return [index for index, members in enumerate(self._members) if run_id in members]

    def records_of(self, index: int) -> list[RunRecord]:
        """The finished runs of request ``index``, in the order its families reached them."""
        return [self._records[run_id] for run_id in self._members[index] if run_id in self._records]

    def estimate(self) -> int:
        """Runs the requests will take (LR search: probes + kept runs; refinement counted as two points), a defense
        config shared by several requests (the ``none`` baseline) counted once."""
        counted: set[tuple] = set()
        total = 0
        for req in self.requests:
            per_family = [max(len(s.lrs), 1) + (min(s.keep, len(s.lrs)) if s.search == "lr-search" else 0)
                         + (2 if s.refine and s.lrs and req.refine else 0) for s in attack_families(req)]
            for defense, defense_args in defenses_of(req):
                for seed in req.seeds:
                    key = (req.task, repr(sorted(req.task_args.items())), req.tier, req.model, defense,
                           repr(sorted(defense_args.items())), seed, req.attack, repr(sorted(req.attack_args.items())),
                           req.search, req.refine)
                    if key not in counted:
                        counted.add(key)
                        total += sum(per_family)
        return total


def probe_score(summary: RunSummary) -> tuple[int, float]:
    """How promising a short LR-search probe run is, as ``(rank, progress)``; tuples compare higher-is-better.

    ``rank``: 2 harmed, 1 ended usable, 0 ended ``broken`` (below every run that did not: a learning rate that breaks
    the model in a few steps is not the attacker's best), -1 diverged or unscorable (never given a full run).
    ``progress``: the relative decrease of the task's harm proxy from the first probe to the last (``proxy_start``,
    ``proxy_end``) when the run recorded one, else of the attack's training loss (``loss_start``, ``loss_end``).
    """
    if summary.outcome == "harmed":
        return 2, math.inf
    if summary.diverged:
        return -1, -math.inf
    pair = ((summary.proxy_start, summary.proxy_end) if summary.proxy_start is not None
            else (summary.loss_start, summary.loss_end))
    start, end = (math.nan if v is None else float(v) for v in pair)
    if not (math.isfinite(start) and math.isfinite(end)) or start == 0:
        return -1, -math.inf
    return (0 if summary.outcome == "broken" else 1), (start - end) / abs(start)


def best_probe_lrs(probes: Sequence[RunRecord], keep: int) -> list[float]:
    """The ``keep`` learning rates whose probe runs scored best (failed, diverged and unscorable probes skipped)."""
    ok = [r for r in probes if r.status == "success" and probe_score(r.summary)[0] >= 0]
    ranked = sorted(ok, key=lambda r: (probe_score(r.summary), _finite_or_zero(r.summary.harm_auc)),
                    reverse=True)
    return [float(r.spec.attack.kwargs["lr"]) for r in ranked[:keep]]


def _finite_or_zero(value: Any) -> float:
    return float(value) if value is not None and math.isfinite(float(value)) else 0.0


def best_lr_of(records: Sequence[RunRecord]) -> float | None:
    """The learning rate of the attacker's best successful run (fewest steps to harm, then highest harm AUC)."""
    ok = [r for r in records if r.status == "success" and r.summary.steps_to_harm is not None]
    if not ok:
        return None
    best = worst_case(
        [int(r.summary.steps_to_harm) for r in ok if r.summary.steps_to_harm is not None],
        [bool(r.summary.censored) for r in ok],
        [_finite_or_zero(r.summary.harm_auc) for r in ok],
    )
    return float(ok[best.index].spec.attack.kwargs["lr"])

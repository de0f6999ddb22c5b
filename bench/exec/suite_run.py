"""Running a defense against an attack suite: the planner's waves through an executor, a baseline, seeds, resume.

``run_suite`` turns a :class:`SuiteRequest` into :class:`~bench.core.spec.RunSpec` objects with the pure
:class:`~bench.plan.planner.Planner` (LR grids, LR search, half-decade refinement) and hands them to an
:class:`~bench.exec.executors.Executor` (in this process by default; local worker processes, Ray or Slurm at scale):
streamed, each family's next runs as soon as its own have finished, or wave by wave for executors that take a fixed
list. ``run_suites`` does the same for several requests on one task as one pool (a sweep's suites). Runs already
completed in the results directory are skipped (resume) and cost nothing: stages are built only for
runs that still have work. A completed run whose code fingerprint (:mod:`bench.run.fingerprint`) differs from the
current code's runs again (the report's ``rerun`` says why), or with ``allow_stale`` is kept and marked stale in
its ``run.json`` (``kept_stale``). An executor with worker processes of its own may build a wave's defended stages there
first, in parallel (``prepare``); this process then reads them from the on-disk stage cache. Failed runs are recorded
and the suite goes on; bad input found while building a request's stages stops that request alone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.core.lr_grid import decades, refinement  # noqa: F401 - re-exported: the suite's public vocabulary
from bench.core.spec import RunSpec
from bench.errors import BenchError, DataError
from bench.exec.executors import Executor, InProcessExecutor
from bench.plan.planner import (  # noqa: F401 - re-exported: the suite's public vocabulary
    Planner,
    RunRecord,
    attack_families,
    best_probe_lrs,
    defenses_of,
    probe_score,
    spec_of,
)
from bench.plan.request import SuiteRequest, validate_request
from bench.run.fingerprint import changes, code_fingerprint, mark_stale, retire
from bench.run.pruning import Bounds, pruned
from bench.run.results import check_writable, completed_run_ids, read_run_json
from bench.run.runner import record_failure
from bench.run.stages import Session
from bench.run.summary import RunSummary


@dataclass
class SuiteReport:
    records: list[RunRecord] = field(default_factory=list)
    rerun: dict[str, list[str]] = field(default_factory=dict)
    """Completed runs run again because their code changed, with the reasons (:func:`bench.run.fingerprint.changes`)."""
    kept_stale: dict[str, list[str]] = field(default_factory=dict)
    """Completed runs kept (``allow_stale``) although their code changed, with the reasons; marked stale."""

    @property
    def failed(self) -> list[RunRecord]:
        return [r for r in self.records if r.status != "success"]

    @property
    def run_ids(self) -> list[str]:
        return [r.spec.run_id for r in self.records]


def run_suite(
    request: SuiteRequest,
    session: Session,
    *,
    executor: Executor | None = None,
    resume: bool = True,
    allow_stale: bool = False,
    on_run: Callable[[RunRecord], None] | None = None,
) -> SuiteReport:
    """Run every (defense, seed, sweep point) of ``request``; see the module docstring. Bad input found while
    building its stages raises (a :class:`~bench.errors.BenchError`)."""
    (outcome,) = run_suites([request], session, executor=executor, resume=resume, allow_stale=allow_stale,
                            on_run=on_run)
    if isinstance(outcome, BenchError):
        raise outcome
    return outcome


def run_suites(
    requests: Sequence[SuiteRequest],
    session: Session,
    *,
    executor: Executor | None = None,
    resume: bool = True,
    allow_stale: bool = False,
    on_run: Callable[[RunRecord], None] | None = None,
) -> list[SuiteReport | BenchError]:
    """Run several requests on one session's task together, as one pool of runs; one outcome per request: its
    report, or the bad-input error that stopped it before its runs (the others go on).

    With an executor that streams (``executor.streams``: in-process, local workers and Ray), each attack family's next
    runs (full runs at the LR search's best rates, refinement) start as soon as that family's own runs have
    finished, while the other families' runs go on: no core waits at a wave barrier. Other executors (Slurm) get
    the runs wave by wave. A run shared by several requests (the ``none`` baseline) runs once. A request stopped by
    bad input found while building a later run's stage runs nothing more, but its runs already handed to the
    executor finish (they are recorded like any other run).

    Unless a request is ``exhaustive``, its runs are pruned at the bound (:mod:`bench.run.pruning`): a run that starts
    once every worst case it could lower has a harmed run stops where it no longer can. A resumed pruned run is kept
    while the runs that set its bound stand (completed by the current code); ``exhaustive`` runs it again in full.
    """
    from tqdm.auto import tqdm

    stopped: dict[int, BenchError] = {}
    for index, request in enumerate(requests):
        try:
            validate_request(request)
        except BenchError as err:
            stopped[index] = err
    check_writable(session.results_dir)
    executor = executor or InProcessExecutor(session)
    live = [i for i in range(len(requests)) if i not in stopped]
    if not live:
        return [stopped[i] for i in range(len(requests))]
    planner = Planner(*(requests[i] for i in live))
    done = completed_run_ids(session.results_dir) if resume else set()
    bar = tqdm(total=planner.estimate(), desc=f"{requests[live[0]].task} runs", unit="run",
               disable=not session.progress)
    pool = _Pool(planner, session, done, bar=bar, on_run=on_run, allow_stale=allow_stale,
                 exhaustive=[requests[i].exhaustive for i in live])
    try:
        if getattr(executor, "streams", False):
            pool.stream(executor)
        else:
            pool.lockstep(executor)
    finally:
        bar.close()
    for position, index in enumerate(live):
        if position in pool.stopped:
            stopped.setdefault(index, pool.stopped[position])
    return [stopped.get(i) or SuiteReport(planner.records_of(live.index(i)), rerun=pool.rerun, kept_stale=pool.kept_stale)
            for i in range(len(requests))]


class _Pool:
    """The runs of one :class:`Planner`: resumed ones read back, the rest prepared and handed to an executor."""

    def __init__(self, planner: Planner, session: Session, done: set[str], *, bar,
                 on_run: Callable[[RunRecord], None] | None, allow_stale: bool = False,
                 exhaustive: Sequence[bool] = ()):
        self.planner, self.session, self.done, self.bar, self.on_run = planner, session, done, bar, on_run
        self.allow_stale = allow_stale
        self.bounds = Bounds()
        self.exhaustive = list(exhaustive)
        """Per request of the planner: whether it turned pruning off (a run any exhaustive request owns is never
        capped)."""
        self.pruned_rerun: list[str] = []
        """Resumed pruned runs run again (in full with ``exhaustive``, else because a run that bounded them changed)."""
        self.rerun: dict[str, list[str]] = {}
        self.kept_stale: dict[str, list[str]] = {}
        self.family_of: dict[str, str] = {}
        self.stopped: dict[int, BenchError] = {}
        """Requests (by their index in the planner) stopped by bad input found while building their stages."""
        self.ready_stages: set[str] = set()
        """Defended stages the executor's workers built or found on disk: this process need not load them."""
        self.failed_stages: dict[str, str] = {}
        """Defended stages whose build failed in a worker, with the error each run on them is recorded with."""
        self.computes_in_workers = False
        """The executor's workers build every stage (local workers, Ray, Slurm): this process builds none."""

    def finished(self, record: RunRecord) -> None:
        self.bounds.feed(record, self.family_of.get(record.spec.run_id, ""))
        self.bar.update(1)
        self.bar.set_postfix_str(f"{record.spec.defense_label} {record.spec.attack_label}"[:60])
        if self.on_run is not None:
            self.on_run(record)

    def resumed(self, spec: RunSpec) -> RunRecord:
        info = read_run_json(self.session.results_dir / spec.run_id)
        return RunRecord(spec, "success", RunSummary.from_json(info.get("summary")), None, True,
                         self.family_of[spec.run_id])

    def reusable(self, spec: RunSpec) -> bool:
        """Whether ``spec``'s completed run is read back instead of run: completed, and made by the current code
        (or kept anyway with ``allow_stale``, and marked stale; a stale mark is cleared when the code matches again)."""
        if spec.run_id not in self.done:
            return False
        directory = self.session.results_dir / spec.run_id
        try:
            recorded = read_run_json(directory).get("fingerprint")
        except DataError:  # another driver sharing the folder retired it meanwhile, to run it again
            self.done.discard(spec.run_id)
            return False
        reasons = changes(recorded, code_fingerprint(spec))
        if reasons and not self.allow_stale:
            self.rerun[spec.run_id] = reasons
            self.done.discard(spec.run_id)
            retire(directory)
            return False
        if reasons:
            self.kept_stale[spec.run_id] = reasons
        mark_stale(directory, reasons)
        if not self.keeps_pruned(spec, directory):
            self.pruned_rerun.append(spec.run_id)
            self.done.discard(spec.run_id)
            retire(directory)
            return False
        return True

    def keeps_pruned(self, spec: RunSpec, directory) -> bool:
        """Whether a completed run is a result to keep as far as pruning goes: it was not pruned; or it was, this
        sweep prunes, and every run that set its bound is completed by the current code (deterministic: the same
        results, so its bound still holds)."""
        info = read_run_json(directory)
        if not pruned(RunSummary.from_json(info.get("summary"))):
            return True
        if self.is_exhaustive(spec):
            return False
        for run_id in (info.get("spec") or {}).get("bound_by", ()):
            if run_id not in self.done:
                return False
            try:
                other = read_run_json(self.session.results_dir / run_id)
                if changes(other.get("fingerprint"), code_fingerprint(RunSpec.from_json(other["spec"]))):
                    return False
            except (BenchError, KeyError):
                return False
        return True

    def start(self, spec: RunSpec) -> RunSpec:
        """``spec`` as it starts now: capped at the bound its worst cases have reached (:mod:`bench.run.pruning`)."""
        if self.is_exhaustive(spec):
            return spec
        return self.bounds.capped(spec, self.family_of.get(spec.run_id, ""))

    def rank(self, spec: RunSpec) -> tuple[bool, float]:
        """Which waiting run starts first (lowest; :meth:`bench.run.pruning.Bounds.rank`): likely fast ones."""
        return self.bounds.rank(spec, self.family_of.get(spec.run_id, ""))

    def is_exhaustive(self, spec: RunSpec) -> bool:
        return any(self.exhaustive[i] for i in self.planner.owners(spec.run_id) if i < len(self.exhaustive))

    def todo(self, ready: list[tuple[str, RunSpec]]) -> list[RunSpec]:
        """The specs of ``ready`` that must run: completed ones are read back and fed (which may make more ready)."""
        out: list[RunSpec] = []
        while ready:
            family, spec = ready.pop(0)
            self.family_of[spec.run_id] = family
            if self.reusable(spec):
                record = self.resumed(spec)
                self.finished(record)
                ready.extend(self.planner.feed(record))
            else:
                out.append(spec)
        return out

    def prepared(self, specs: list[RunSpec], executor=None) -> list[RunSpec]:
        """Build the stages of ``specs`` (with ``executor``: in its workers when it has any, the only place an
        executor with workers builds them); drop the runs of requests stopped by bad input found there, and record
        as failed, without running them, the runs whose defended stage failed to build in a worker."""
        if specs and executor is not None and hasattr(executor, "prestart"):
            executor.prestart(specs)
        if specs and executor is not None and hasattr(executor, "prepare"):
            for key, failure in executor.prepare(specs).items():
                if failure is None:
                    self.ready_stages.add(key)
                elif failure.bad_input:
                    for spec in specs:
                        if spec.stage_key("defended") == key:
                            for owner in self.planner.owners(spec.run_id):
                                self.stopped.setdefault(owner, failure.as_error())
                else:
                    self.failed_stages[key] = failure.error
        for spec in specs:
            owners = [i for i in self.planner.owners(spec.run_id) if i not in self.stopped]
            key = spec.stage_key("defended")
            if not owners or key in self.ready_stages or key in self.failed_stages or self.computes_in_workers:
                continue
            err = _prepare(spec, self.session)
            if err is not None:
                for owner in owners:
                    self.stopped[owner] = err
        runnable = [s for s in specs if any(i not in self.stopped for i in self.planner.owners(s.run_id))]
        kept = {s.run_id for s in runnable}
        for spec in specs:
            if spec.run_id not in kept:
                self.planner.discard(spec.run_id)  # (another request that reaches it later gets it again)
        return runnable

    def unbuildable(self, spec: RunSpec) -> RunRecord | None:
        """The failed record of a run whose defended stage failed to build in a worker (tried once: every run on it
        fails with that error, recorded in its run.json), or None when its stage did not fail."""
        error = self.failed_stages.get(spec.stage_key("defended"))
        if error is None:
            return None
        started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        result = record_failure(spec, self.session, error, started_at=started_at, wall=0.0,
                                details={"stage": "defended", "prepare_error": error})
        return RunRecord(spec, "failed", result.summary, result.error, False, self.family_of.get(spec.run_id, ""))

    def submittable(self, specs: list[RunSpec]) -> list[RunSpec]:
        """``specs`` less the runs whose stage failed to build; those are recorded as failed and fed to the planner
        (streaming), with whatever runs that makes ready."""
        out: list[RunSpec] = []
        queue = list(specs)
        while queue:
            spec = queue.pop(0)
            record = self.unbuildable(spec)
            if record is None:
                out.append(spec)
                continue
            self.finished(record)
            queue.extend(self.prepared(self.todo(self.planner.feed(record))))
        return out

    def stream(self, executor) -> None:
        def more(record: RunRecord) -> list[RunSpec]:
            record.family = self.family_of[record.spec.run_id]
            self.bounds.feed(record, record.family)  # (before the runs it makes ready start)
            return self.capped(self.submittable(self.prepared(self.todo(self.planner.feed(record)))), executor)

        self.computes_in_workers = bool(getattr(executor, "computes_in_workers", False))
        first = self.capped(self.submittable(self.prepared(self.todo(self.planner.start()), executor)), executor)
        starts = {"start": self.start, "rank": self.rank} if getattr(executor, "starts", False) else {}
        for record in executor.submit(first, more=more, **starts):
            self.finished(record)

    def capped(self, specs: list[RunSpec], executor) -> list[RunSpec]:
        """``specs`` capped now, for an executor that cannot cap each run as it starts (``starts``)."""
        return specs if getattr(executor, "starts", False) else [self.start(s) for s in specs]

    def lockstep(self, executor) -> None:
        planner = self.planner
        while not planner.done:
            records: dict[str, RunRecord] = {}
            todo: list[RunSpec] = []
            for family, spec in planner.wave():
                self.family_of[spec.run_id] = family
                if (ran := planner.record_of(spec.run_id)) is not None:  # this pool ran it already, for another family
                    records[spec.run_id] = ran
                elif self.reusable(spec):
                    records[spec.run_id] = self.resumed(spec)
                    self.finished(records[spec.run_id])
                else:
                    todo.append(spec)
            self.computes_in_workers = bool(getattr(executor, "computes_in_workers", False))
            runnable = {s.run_id for s in self.prepared(todo, executor)}
            for spec in todo:
                record = self.unbuildable(spec) if spec.run_id in runnable else None
                if record is not None:
                    runnable.discard(spec.run_id)
                    records[spec.run_id] = record
                    self.finished(record)
            stopped = [s for s in todo if s.run_id not in runnable and s.run_id not in records]
            for spec in stopped:  # its requests stopped: their families end here
                records[spec.run_id] = RunRecord(spec, "failed", RunSummary(), "stopped", False, self.family_of[spec.run_id])
            for record in executor.submit([self.start(s) for s in todo if s.run_id in runnable]):
                record.family = self.family_of[record.spec.run_id]
                records[record.spec.run_id] = record
                self.finished(record)
            planner.finish(records)
            for spec in stopped:
                planner.discard(spec.run_id)  # (never ran: a live request that reaches it later runs it)


def _prepare(spec: RunSpec, session: Session) -> BenchError | None:
    """Build the released and defended stages of ``spec`` before its run (once: the session memoises), so bad input
    (a missing model or dataset, a defense config that matches no layer, a defense that breaks the function it claims
    to keep) stops its request with its clear error instead of filling the results with failed runs. Any other
    exception is left for the run to record as a failure.
    """
    try:
        session.defended(spec)
    except BenchError as err:
        return err if err.stops_request else None  # (not bad input: each run records it as its failure)
    except Exception:  # noqa: BLE001 - recorded by each run that needs this stage
        pass
    return None

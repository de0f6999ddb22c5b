"""``bench submit``: check a contributed results folder, then copy it into ``leaderboard/submissions/<name>/``.

:func:`check_submission` reports every problem at once, one per line (like ``bench validate``):

* each run's metrics file has the results schema version this bench reads (:data:`bench.run.results.SCHEMA_VERSION`);
* each ``run.json`` records its provenance: the harness's git commit, the bench version and the library versions;
* each defense config on each task has at least :data:`MIN_SEEDS` seeds;
* its runs cover the task's default attack suite: the planner's first wave (:func:`bench.plan.sweep.first_wave`) for
  every seed — with the task's LR strategy or the exhaustive grid — recorded as done or failed (failed runs are
  results too: the leaderboard shows them);
* the runs carry their code (:mod:`bench.apps.submit_code`): every run's code fingerprint, all of them agreeing, each
  plugin's source as loaded here the one the runs recorded, the harness's own tasks on their official settings
  (``--new-task`` / ``--custom-task-settings`` to submit otherwise, recorded);
* each defense that is not built in has a claims file (``--claims``): the paper, its claim, the setting, as in
  ``leaderboard/claims/`` (validated as the ledger validates its own, :mod:`bench.core.claims_file`).

:func:`copy_submission` then copies the run directories (and claims files, to ``claims/<defense>.yaml``, and the
sources of the plugins that are not built in, to ``code/``, hash-checked) into the submissions folder, which
``bench leaderboard`` reads and marks as submitted (:mod:`leaderboard.sources`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from bench.apps.submit_code import code_of, copy_code
from bench.config import canonical_json
from bench.core.claims_file import read_claim
from bench.core.spec import RunSpec
from bench.core.yaml_dataclass import read_mapping
from bench.errors import BenchError, ConfigError, DataError
from bench.run.results import METRICS, SCHEMA_VERSION, read_run_json, run_directories

MIN_SEEDS = 3
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
PROVENANCE_FIELDS = (("git_sha", "the harness's git commit"), ("bench_version", "the bench version"),
                     ("libraries", "the library versions"))
SHOWN_IDS = 3


@dataclass
class _Group:
    """The runs of one defense config on one task (tier, model) of a folder."""

    spec: RunSpec
    seeds: set[int] = field(default_factory=set)
    where: str = ""


def check_submission(folder: str | Path, claims: Sequence[str | Path] = (), *, new_task: bool = False,
                     custom_task_settings: bool = False) -> list[str]:
    """Every problem of ``folder`` as a submission, one message each (empty: it can be submitted)."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    directories = run_directories(folder)
    if not directories:
        return [f"{folder} has no runs (no */run.json): `bench compare --results {folder}` writes them"]
    problems: list[str] = []
    bad: dict[str, list[str]] = defaultdict(list)  # message -> run ids, reported once with a count
    recorded: set[str] = set()
    groups: dict[tuple[str, str, str | None, str], _Group] = {}
    for directory in directories:
        try:
            info = read_run_json(directory)
        except DataError as err:
            problems.append(str(err))
            continue
        run_id = str(info.get("run_id", directory.name))
        recorded.add(run_id)
        version = _schema_version(directory)
        if version != str(SCHEMA_VERSION):
            bad[f"results schema version {version} (this bench reads {SCHEMA_VERSION}): rerun with this bench"
                ].append(run_id)
        recorded_provenance = info.get("provenance")
        provenance = recorded_provenance if isinstance(recorded_provenance, dict) else {}
        for key, what in PROVENANCE_FIELDS:
            if not provenance.get(key):
                bad[f"provenance lacks {what} (provenance.{key} in run.json)"].append(run_id)
        try:
            spec = RunSpec.from_json(info["spec"])
        except (BenchError, KeyError, TypeError, ValueError) as err:
            bad[f"run.json has no readable spec ({_first_line(err)}; a plugin defense needs --plugin FILE)"
                ].append(run_id)
            continue
        if spec.run_id != run_id:
            bad["run id differs from its spec's (written by another bench version, or edited)"].append(run_id)
        group_key = (canonical_json(spec.task.identity()), spec.tier, spec.model,
                     canonical_json(spec.defense.identity()))
        group = groups.setdefault(group_key, _Group(spec, where=f"{spec.task.label} ({spec.tier}) × {spec.defense_label}"))
        group.seeds.add(spec.seed)
    problems += [f"{len(ids)} run(s): {message}: {_ids(ids)}" for message, ids in bad.items()]
    for group in groups.values():
        if len(group.seeds) < MIN_SEEDS:
            problems.append(f"{group.where}: {len(group.seeds)} seed(s) {sorted(group.seeds)}; a submission needs at "
                            f"least {MIN_SEEDS} (--seeds 0,1,2)")
        problems += _suite_problems(group, recorded)
    problems += code_of(folder, new_task=new_task, custom_task_settings=custom_task_settings).problems
    problems += _claims_problems([g.spec for g in groups.values()], claims)
    return problems


def _schema_version(directory: Path) -> str:
    path = directory / METRICS
    if not path.is_file():
        return "none (no metrics.parquet)"
    try:
        metadata = pq.read_schema(path).metadata or {}
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same problem for the submitter
        return f"unreadable ({_first_line(err)})"
    return metadata.get(b"bench.schema_version", b"?").decode()


def _suite_problems(group: _Group, recorded: set[str]) -> list[str]:
    """The task's default suite for ``group``'s seeds: complete when every first-wave run of the task's LR
    strategy, or of the exhaustive grid, is recorded."""
    from bench.plan.request import SuiteRequest
    from bench.plan.sweep import first_wave

    spec = group.spec
    request = SuiteRequest(task=spec.task.label, task_args=spec.task.kwargs, defense=spec.defense.label,
                           defense_args=spec.defense.kwargs, tier=spec.tier, model=spec.model,
                           seeds=tuple(sorted(group.seeds)), baseline=False)
    missing = []
    for search in (None, "grid"):
        try:
            runs, _ = first_wave(dataclasses.replace(request, search=search))
        except BenchError as err:
            return [f"{group.where}: cannot plan its default suite: {_first_line(err)}"]
        absent = [s for s in runs if s.run_id not in recorded]
        if not absent:
            return []
        missing.append((absent, runs))
    absent, runs = missing[0]
    return [f"{group.where}: the task's default attack suite is incomplete: {len(absent)} of {len(runs)} first-wave "
            f"run(s) missing, e.g. {absent[0].canonical_name} (`bench compare` runs what is missing)"]


def builtin_defenses() -> set[str]:
    from bench.core.builtins import BUILTINS

    return {name for kind, name, _, _ in BUILTINS if kind == "defense"}


def _claims_problems(specs: Sequence[RunSpec], claims: Sequence[str | Path]) -> list[str]:
    problems: list[str] = []
    given: dict[str, Path] = {}
    for path in map(Path, claims):
        try:
            given[claims_defense(path)] = path
        except BenchError as err:
            problems.append(str(err))
    builtins = builtin_defenses()
    needed = sorted({part.name for spec in specs for part in spec.defense.parts or (spec.defense,)} - builtins)
    for name in needed:
        if name not in given:
            problems.append(f"defense {name!r} is not built in: give its claims file with --claims FILE (YAML with "
                            "at least defense, paper, claim and setting, as in leaderboard/claims/)")
        else:
            problems += [f"{given[name]}: {line}" for line in _invalid_claims(given[name], name)]
    return problems


def claims_defense(path: Path) -> str:
    """The defense a claims file is about: its ``defense`` key, else the file's name without ``.yaml``."""
    data = _read_claims(path)
    name = data.get("defense", path.stem)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: defense must be the defense's registered name, got {name!r}")
    return name


def _read_claims(path: Path) -> dict[str, Any]:
    return read_mapping(path, "claims file", ("defense", "paper", "claim", "setting"))


def _invalid_claims(path: Path, defense: str) -> list[str]:
    """Every problem of a claims file, as the ledger reports its own (:func:`bench.core.claims_file.read_claim`), and a
    file not about ``defense``."""
    try:
        claim = read_claim(path)
    except BenchError as err:
        return [line.removeprefix(f"{path}: ").removeprefix(f"{path} ") for line in str(err).splitlines()]
    return [] if claim.defense == defense else [f"defense is {claim.defense!r}, not {defense!r}"]


def copy_submission(folder: str | Path, name: str, into: str | Path, *, claims: Sequence[str | Path] = (),
                    force: bool = False, new_task: bool = False, custom_task_settings: bool = False) -> Path:
    """Copy the run directories of ``folder`` (``claims``, and the plugins' sources with ``code/manifest.json``:
    :func:`bench.apps.submit_code.copy_code`) into ``into/name``; return that folder.

    Written to a temporary folder first and renamed, so a reader never sees half a submission. An existing
    submission of that name is replaced only with ``force``.
    """
    check_name(name)
    code = code_of(folder, new_task=new_task, custom_task_settings=custom_task_settings)
    if code.problems:
        raise ConfigError(f"{folder}: {code.problems[0]}" + (f" (and {len(code.problems) - 1} more problem(s))"
                                                              if len(code.problems) > 1 else ""))
    into = Path(into)
    target = into / name
    if target.exists() and not force:
        raise ConfigError(f"{target} exists: choose another --name, or --force to replace it")
    into.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=into))
    try:
        for directory in run_directories(Path(folder)):
            shutil.copytree(directory, staging / directory.name, ignore=shutil.ignore_patterns(".claim.*"))
        for path in map(Path, claims):
            (staging / "claims").mkdir(exist_ok=True)
            shutil.copyfile(path, staging / "claims" / f"{claims_defense(path)}.yaml")
        copy_code(code, staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise ConfigError(f"--name must be lower-case letters, digits, '.', '_' or '-' (at most 64), got {name!r}")


def pr_commands(target: Path, name: str) -> list[str]:
    """The git commands that put a copied submission on a branch for a pull request."""
    target = target.resolve()
    root = next((p for p in (target, *target.parents) if (p / ".git").exists()), None)
    path = target.relative_to(root) if root else target
    return ([f"cd {root}"] if root else []) + [
        f"git checkout -b submission/{name}",
        f"git add {path}",
        f'git commit -m "Submission {name}"',
        f"git push -u origin submission/{name}",
    ]


def _ids(ids: list[str]) -> str:
    more = f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else ""
    return ", ".join(ids[:SHOWN_IDS]) + more


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__

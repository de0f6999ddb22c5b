"""Code fingerprints: which code made a result, so that a result is never reused for other code.

One definition of "the code", shared by the stage cache's keys (:mod:`bench.run.stage_cache`) and every run's
``run.json`` (``fingerprint``):

- the harness: its version and a digest of the ``bench`` package's sources (its CLI aside, which measures nothing);
- each plugin the run used (task, defense or every part of a composite, attack): a digest of its source. A plugin
  that is part of a package hashes every file of its module's directory (``defenses/`` for a built-in defense, all
  of ``tasks/llm/`` with its data); a module outside any package (a ``--plugin file.py``) hashes that file. A plugin
  without a source file has no digest (None);
- the versions of :data:`LIBRARIES`, the libraries whose numerics a measurement depends on.

Resume compares a completed run's recorded fingerprint with the current code's (:func:`changes`): a run made by
other code runs again, or, with ``--allow-stale``, is kept and marked ``stale`` in its ``run.json``
(:func:`mark_stale`), which the leaderboard reads.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.core.tuning_presets import tuned_dir

if TYPE_CHECKING:
    from bench.core.spec import RunSpec

LIBRARY_ROLES = {
    "torch": "keyed", "numpy": "keyed", "transformers": "keyed", "diffusers": "keyed", "safetensors": "keyed",
    "peft": "keyed",  # the LoRA attacks
    "datasets": "recorded", "lm_eval": "recorded", "pyarrow": "recorded", "pandas": "recorded",
}
"""The one list of libraries: every run records their versions (run.json ``provenance.libraries``,
:func:`bench.run.provenance.library_versions`); the ``keyed`` ones also key the stage cache and every run's code
fingerprint (their numerics change a measurement), the others read data and write results."""
LIBRARIES = tuple(name for name, role in LIBRARY_ROLES.items() if role == "keyed")
"""The libraries whose versions key the stage cache and every run's fingerprint."""


def digest_files(paths: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@functools.cache
def harness_version() -> str:
    """The harness version and a digest of its sources (the CLI aside, which measures nothing)."""
    import bench

    root = Path(bench.__file__).parent
    files = sorted(p for p in root.rglob("*.py") if "cli" not in p.relative_to(root).parts[:-1])
    return f"{bench.__version__}+{digest_files(files, root)[:16]}"


def plugin_files(cls: type) -> tuple[Path, list[Path]] | None:
    """The files a plugin's digest covers, with the folder they are relative to; None without a source file."""
    try:
        file = Path(inspect.getsourcefile(cls) or "")
    except (TypeError, OSError):
        return None
    if not file.is_file():
        return None
    folder = file.parent
    if "." in cls.__module__:  # part of a package: its helpers (defenses/_spectral.py) and data files count too
        # Tuned presets (defenses/tuned/) are configs, not code: a run's config hash already holds a preset's values,
        # and writing one preset must not make every defense's results and stages stale.
        presets = tuned_dir().resolve()
        return folder, sorted(p for p in folder.rglob("*") if p.is_file() and not _hidden(p.relative_to(folder))
                              and not p.resolve().is_relative_to(presets))
    return folder, [file]


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") or part == "__pycache__" for part in relative.parts)


@functools.cache
def plugin_version(cls: type) -> str | None:
    """A digest of a plugin's code (its class name and the files of :func:`plugin_files`); None when it has no
    source file."""
    found = plugin_files(cls)
    if found is None:
        return None
    root, files = found
    return source_hash(f"{cls.__module__}:{cls.__qualname__}", files, root)


def source_hash(target: str, files: list[Path], root: Path) -> str:
    """The hash of a plugin's code: its class (``module:Qualname``) and its files, named relative to ``root``."""
    return hashlib.sha256(f"{target}:{digest_files(files, root)}".encode()).hexdigest()[:16]


@functools.cache
def installed_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """The installed version of each library (its distribution: ``lm_eval`` is ``lm-eval``; None: not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def library_versions() -> dict[str, str | None]:
    """The installed version of each of :data:`LIBRARIES` (None: not installed)."""
    return installed_versions(LIBRARIES)


def spec_plugins(spec: RunSpec) -> list[tuple[str, str, type]]:
    """(kind, registered name, class) of every plugin a run of ``spec`` executes (each part of a composite)."""
    from bench.registry import ATTACKS, DEFENSES, TASKS

    defenses = [(part.name, DEFENSES.get(part.name)) for part in spec.defense.parts or (spec.defense,)]
    return ([("task", spec.task.name, TASKS.get(spec.task.name))]
            + [("defense", name, cls) for name, cls in defenses]
            + [("attack", spec.attack.name, ATTACKS.get(spec.attack.name))])


def code_fingerprint(spec: RunSpec) -> dict[str, Any]:
    """The fingerprint of the code a run of ``spec`` executes now (see the module docstring)."""
    plugins = [dict(_plugin_record(kind, name, cls)) for kind, name, cls in spec_plugins(spec)]
    return {"harness": harness_version(), "plugins": plugins, "libraries": library_versions()}


@functools.cache
def _plugin_record(kind: str, name: str, cls: type) -> tuple[tuple[str, Any], ...]:
    """A plugin's part of the fingerprint; memoised per class (its origin reads the source file: resume checks the
    fingerprint of every completed run, thousands on a leaderboard)."""
    from bench.registry import REGISTRIES

    info = REGISTRIES[f"{kind}s"].plugin_info(name)
    return (("kind", kind), ("name", name), ("hash", plugin_version(cls)), ("builtin", info["builtin"]),
            ("origin", info["origin"]), ("overrides", info["overrides"]))


def overrides(fingerprint: Mapping[str, Any]) -> list[str]:
    """One line per plugin of a fingerprint that replaced another with ``override=True`` (what provenance shows)."""
    return [f"{p['kind']} {p['name']!r} ({p['origin']}) overrides {p['overrides']}"
            for p in fingerprint.get("plugins", []) if p.get("overrides")]


def changes(recorded: Any, current: Mapping[str, Any]) -> list[str]:
    """Why a run recorded with fingerprint ``recorded`` is not a result of the ``current`` code (empty: it is)."""
    if not isinstance(recorded, Mapping):
        return ["no code fingerprint recorded (made by an older bench)"]
    reasons = []
    if recorded.get("harness") != current["harness"]:
        reasons.append("the harness's source changed")
    before = {(p.get("kind"), p.get("name")): p for p in recorded.get("plugins", []) if isinstance(p, Mapping)}
    for plugin in current["plugins"]:
        old = before.get((plugin["kind"], plugin["name"]))
        if old is None or old.get("hash") != plugin["hash"]:
            reasons.append(f"{plugin['kind']} {plugin['name']!r} source changed")
        elif bool(old.get("overrides")) != bool(plugin["overrides"]):
            now = "an override" if plugin["overrides"] else "the registered plugin"
            reasons.append(f"{plugin['kind']} {plugin['name']!r} is now {now}")
    recorded_libraries = recorded.get("libraries")
    libraries = recorded_libraries if isinstance(recorded_libraries, Mapping) else {}
    for name, version in current["libraries"].items():
        if libraries.get(name) != version:
            reasons.append(f"{name} {libraries.get(name)} -> {version}")
    return reasons


def summarize(reasons_by_run: Mapping[str, list[str]]) -> str:
    """``plugin 'specdef' source changed`` for runs that share their reasons; with counts when they differ."""
    counts = Counter(reason for reasons in reasons_by_run.values() for reason in dict.fromkeys(reasons))
    if len(counts) == 1 or all(n == len(reasons_by_run) for n in counts.values()):
        return "; ".join(counts)
    return "; ".join(f"{reason} ({n})" for reason, n in counts.most_common())


def mark_stale(directory: Path, reasons: Iterable[str]) -> None:
    """Record in ``directory``'s ``run.json`` whether its result is kept although the code changed: ``stale`` (the
    field the leaderboard reads) and ``stale_reasons``; no reasons clears the mark. Rewritten atomically, like every
    run.json, and only when the mark changes."""
    from bench.run.results import read_run_json, rewrite_run_json

    info = read_run_json(directory)
    reasons = list(reasons)
    if bool(info.get("stale")) == bool(reasons) and info.get("stale_reasons", []) == reasons:
        return
    info["stale"] = bool(reasons)
    if reasons:
        info["stale_reasons"] = reasons
    else:
        info.pop("stale_reasons", None)
    rewrite_run_json(directory, info)


def retire(directory: Path) -> None:
    """Remove the completion marker (``run.json``) of a run about to run again because its code changed: nothing
    that looks for a recorded success (another driver sharing the folder, the run's own claim on its directory) may
    hand the old code's result back in place of the new run."""
    from bench.run.results import RUN_JSON

    (Path(directory) / RUN_JSON).unlink(missing_ok=True)


def resume_lines(rerun: Mapping[str, list[str]], kept_stale: Mapping[str, list[str]]) -> list[str]:
    """What a resumed command prints about completed runs whose code changed since they ran."""
    lines = []
    if rerun:
        lines.append(f"{len(rerun)} run(s) re-run: {summarize(rerun)} (--allow-stale keeps such runs, marked stale)")
    if kept_stale:
        lines.append(f"{len(kept_stale)} run(s) kept although their code changed (--allow-stale; marked stale in "
                     f"run.json): {summarize(kept_stale)}")
    return lines

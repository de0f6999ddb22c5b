"""Stages on disk: the released and defended stages of runs, stored once in the content-addressed cache.

Every run needs the measured released model and the defended model; a run in another process or on another machine
reads them from here instead of applying the defense and measuring again. Layout, under the :class:`~bench.cache.Cache`
root (``$BENCH_CACHE_DIR``)::

    stages/<key>/entry.json        what the entry is (kind, task, defense, seed, created) and the sha256 of each file
    stages/<key>/stage.json        measurements: evaluation, probe, curvature, metric rows (defended: the report)
    stages/<key>/arrays/<n>.npy    per-item scores, the released model's reference outputs (no pickle)
    stages/<key>/model/            defended stage: the defended model (safetensors + manifest, :mod:`bench.modelio`)

An entry is written into a temporary directory next to it and renamed into place, so no reader sees a partial entry;
of two processes building the same entry, one wins the rename and the other uses the winner's entry. Every read
checks the files against the sizes in ``entry.json`` (a missing or truncated file), and ``bench cache verify``
re-hashes them against its sha256 (a modified one): a corrupt entry is logged as a warning, deleted and rebuilt,
never used. (A read does not re-hash: on the real tier that would read gigabytes of weights for every run.)

What invalidates an entry (it is then simply not found, and rebuilt under a new key):

- the stage's part of the spec (:meth:`~bench.core.spec.RunSpec.stage_key`: task and its config, tier, model; defended
  stage: also the defense and its config, the seed, and whether function drift is allowed);
- what the task is beyond its config and code: where the task can say so without being built
  (:meth:`~bench.contracts.Task.stage_identity`, the tiny tiers: e.g. the version of a library whose bundled data it
  reads), that identity, so a stage is looked up without building the task; else the built task's provenance: its
  data and released-model identities (on the real tier, the weights' sha256, so a changed checkpoint behind the same
  ``--model`` path is a new key);
- the device type the stage is measured on (``cpu``, ``cuda``), unless the task declares its stages portable
  (:attr:`~bench.contracts.TaskInstance.stage_portable`: the tiny tiers), so that a stage a CPU built is read by
  GPU workers too (``entry.json`` records the device it was built on);
- the code: the harness version and every source file of the ``bench`` package (but its CLI); every file in the
  directory of the task plugin's module (e.g. all of ``tasks/llm/``, data included), and of the defense plugin's
  (e.g. all of ``defenses/``; a plugin module outside any package, such as a ``--plugin`` file: that file; every
  part's, for a composite defense ``a+b``); and the
  versions of :data:`bench.run.fingerprint.LIBRARIES`: the same code fingerprint every run records
  (:mod:`bench.run.fingerprint`). A plugin without a source file is never cached on disk.

Old entries are not removed automatically: ``bench cache ls`` lists them, ``bench cache clear --stages`` removes them.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench.cache import (
    Cache,
    CacheEntry,
    Cleared,
    directory_size,
    file_lock,
    make_temp_entry,
    remove_unless_held,
    temp_entry_name,
)

# One definition of "the code" for stage keys and run fingerprints (re-exported: LIBRARIES, library_versions).
from bench.run.fingerprint import LIBRARIES, harness_version, library_versions, plugin_version  # noqa: F401

log = logging.getLogger(__name__)

STAGES = "stages"
"""Subdirectory of the cache root holding stage entries."""
ENTRY = "entry.json"
FORMAT = "bench-stage"
FORMAT_VERSION = 2
"""2: stage.json records the stage's already-harmful verdict and seconds per part."""


# -------------------------------------------------------------------------------------------------------------
# Keys
# -------------------------------------------------------------------------------------------------------------
def stage_key(spec_key: str, *, plugins: list[type], provenance: Mapping[str, Any], device: str,
              cache_root: Path, extra: Mapping[str, Any] = {}) -> str | None:
    """The entry key of a stage (see the module docstring for what it covers); None: not cacheable on disk."""
    versions = [plugin_version(cls) for cls in plugins]
    if any(v is None for v in versions):
        return None
    # The tiny tier's provenance names its released model's cache directory: the same entry under any cache root.
    identity = json.dumps(provenance, sort_keys=True, default=str).replace(str(cache_root), "$BENCH_CACHE_DIR")
    body = {"stage": spec_key, "provenance": identity, "device": device, "harness": harness_version(),
            "plugins": versions, "libraries": library_versions(), "format": FORMAT_VERSION, **extra}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:24]


# -------------------------------------------------------------------------------------------------------------
# Entries
# -------------------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(functools.partial(f.read, 1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class StageStore:
    """The ``stages/`` directory of a cache: atomic, hash-checked entries."""

    def __init__(self, cache: Cache):
        self.cache = cache
        self.root = cache.entry(STAGES)

    def path(self, key: str) -> Path:
        return self.root / key

    def building(self, name: str):
        """An exclusive lock named ``name`` (an entry key) held while a process builds that entry
        (:func:`bench.cache.file_lock`)."""
        return file_lock(self.root / ".locks", name)

    def read(self, key: str) -> Path | None:
        """The entry's directory if it is present and intact; a corrupt entry is logged, deleted, and None returned."""
        path = self.path(key)
        if not path.exists():
            return None
        problem = self.problem(path)
        if problem is None:
            return path
        self.discard(path, problem)
        return None

    def write(self, key: str, meta: Mapping[str, Any], fill: Callable[[Path], None]) -> Path:
        """Create the entry: ``fill(tmp_dir)`` writes its files, then the hashed ``entry.json``, then the rename.

        Returns the entry's directory: this writer's, or that of a concurrent writer who renamed first.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_entry(self.root, key)
        try:
            fill(tmp)
            files = sorted(p for p in tmp.rglob("*") if p.is_file())
            manifest = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "key": key, **meta,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "files": {p.relative_to(tmp).as_posix(): _sha256(p) for p in files},
                "sizes": {p.relative_to(tmp).as_posix(): p.stat().st_size for p in files},
            }
            (tmp / ENTRY).write_text(json.dumps(manifest, indent=1, sort_keys=True))
            final = self.path(key)
            error: OSError | None = None
            for _ in range(3):
                try:
                    os.rename(tmp, final)  # fails when the target exists: a finished entry is never replaced
                    return final
                except OSError as err:
                    error = err
                if final.exists():
                    problem = self.problem(final)
                    if problem is None:  # another process finished the same entry first: use it
                        return final
                    self.discard(final, problem)
            assert error is not None  # every attempt failed: the last one set it
            raise error
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def problem(path: Path, verify: bool = False) -> str | None:
        """Why the entry at ``path`` cannot be used, or None when it is intact.

        A read checks that every file of the manifest is there with its recorded size, which catches a truncated or
        missing file without reading gigabytes of weights on every run; ``verify`` (``bench cache verify``) also
        re-hashes every file against its sha256 (an entry written before sizes were recorded is always re-hashed).
        """
        try:
            manifest = json.loads((path / ENTRY).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            return f"unreadable {ENTRY} ({err})"
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT \
                or manifest.get("format_version") != FORMAT_VERSION or not isinstance(manifest.get("files"), dict):
            return f"{ENTRY} is not a bench stage manifest of version {FORMAT_VERSION}"
        sizes = manifest.get("sizes") if isinstance(manifest.get("sizes"), dict) else None
        for name, expected in manifest["files"].items():
            file = path / name
            if not file.resolve().is_relative_to(path.resolve()):
                return f"{ENTRY} names a file outside the entry: {name!r}"
            if not file.is_file():
                return f"missing file {name}"
            if sizes is not None and file.stat().st_size != sizes.get(name):
                return f"{name} does not have its recorded size (truncated or modified)"
            if (verify or sizes is None) and _sha256(file) != expected:
                return f"{name} does not match its sha256 (truncated or modified)"
        return None

    def verify(self) -> list[tuple[Path, str]]:
        """Re-hash every entry's files; discard (and return) the corrupt ones with the reason."""
        corrupt = []
        for entry in self.entries():
            problem = self.problem(entry.path, verify=True)
            if problem is not None:
                self.discard(entry.path, problem)
                corrupt.append((entry.path, problem))
        return corrupt

    def discard(self, path: Path, reason: str) -> None:
        """Delete a corrupt entry: moved aside first (one rename), so no reader sees it half deleted."""
        log.warning("stage cache: discarding entry %s: %s", path, reason)
        trash = path.parent / f".trash-{path.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, trash)
        except OSError:
            return  # someone else moved it already
        shutil.rmtree(trash, ignore_errors=True)

    def entries(self) -> list[CacheEntry]:
        """The finished stage entries (temporary and trashed directories are not listed)."""
        found: list[CacheEntry] = []
        if not self.root.is_dir():
            return found
        for path in sorted(self.root.iterdir()):
            if path.name.startswith(".") or not path.is_dir():
                continue
            try:
                meta = json.loads((path / ENTRY).read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                meta = {}
            found.append(CacheEntry(
                kind=str(meta.get("kind", "stage (unreadable)")), task=str(meta.get("task", "?")),
                defense=meta.get("defense"), path=path, size=directory_size(path), created=meta.get("created"),
                detail=_detail(meta)))
        return found

    def clear(self) -> Cleared:
        """Delete every stage entry and the leftovers of interrupted or discarded writers, except the entries a
        process is building right now (their lock is held): those are kept and listed. Lock files stay."""
        removed, held = 0, []
        if not self.root.is_dir():
            return Cleared(0)
        locks = self.root / ".locks"
        for path in sorted(self.root.iterdir()):
            if path == locks or not path.is_dir():
                continue
            if path.name.startswith(".trash-"):
                shutil.rmtree(path, ignore_errors=True)
                continue
            building = temp_entry_name(path)
            if not remove_unless_held(path, locks, building or path.name):
                held.append(path)
            elif building is None:
                removed += 1
        return Cleared(removed, tuple(held))


def _detail(meta: Mapping[str, Any]) -> str:
    parts = [meta.get("tier"), meta.get("model"), f"seed {meta['seed']}" if meta.get("seed") is not None else None,
             meta.get("device")]
    return " ".join(str(p) for p in parts if p)


def cache_entries(cache: Cache) -> list[CacheEntry]:
    """Everything in the cache: the stage entries, then the tasks' built models and judges."""
    def order(entry: CacheEntry):
        return entry.task, entry.kind != "released", entry.defense or "", entry.created or ""

    return sorted(StageStore(cache).entries(), key=order) + cache.entries(skip=(STAGES,))


def clear_cache(cache: Cache, *, everything: bool) -> Cleared:
    """Delete the stage entries, or (``everything``) the built models and judges too; entries being built by a
    running process are kept and listed (:class:`bench.cache.Cleared`)."""
    stages = StageStore(cache).clear()
    if not everything:
        return stages
    rest = cache.clear(skip=(STAGES,))
    return Cleared(stages.removed + rest.removed, stages.held + rest.held)

"""On-disk cache for expensive, deterministic artefacts (the tiny tiers' released models and judges, and the runs'
measured stages: :mod:`bench.stage_cache`).

The root is ``$BENCH_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/training-resistance-bench`` (``~/.cache/...``).
Entries are directories built into a temporary name and renamed into place, so a crash or a concurrent builder never
leaves a half-written entry behind, and a finished entry is never replaced while someone may be reading it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

ENV_VAR = "BENCH_CACHE_DIR"


def default_cache_root() -> Path:
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "training-resistance-bench"


COMPLETE = ".complete"
"""Marker file of a finished :meth:`Cache.get_or_build` entry."""


@dataclass(frozen=True)
class CacheEntry:
    """One entry, as ``bench cache ls`` shows it."""

    kind: str
    """``released`` or ``defended`` (a stage), or what a task built: ``tiny model``, ``real model``, ``real-judges``."""
    task: str
    defense: str | None
    path: Path
    size: int
    """Bytes on disk."""
    created: str | None
    """ISO time the entry was finished."""
    detail: str = ""


def make_temp_entry(parent: Path, name: str) -> Path:
    """A temporary directory to build an entry in, next to where it will be renamed to. mkdtemp makes it private
    (0700); it gets the permissions of an ordinary directory, so a cache shared by several users stays readable."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    return tmp


def directory_size(path: Path) -> int:
    total = 0
    for file in path.rglob("*"):
        try:
            total += file.stat().st_size if file.is_file() else 0
        except OSError:  # deleted meanwhile (e.g. by a concurrent clear)
            pass
    return total


@contextlib.contextmanager
def file_lock(folder: Path, name: str):
    """Hold an exclusive lock named ``name`` (in ``folder``) while the block runs, so that processes about to build
    the same cache entry build it one after another: the second finds the first's entry and reads it instead. The
    operating system releases the lock when its holder dies; where locks are unavailable (a read-only folder, a
    file system without them) the block runs unlocked (entries are still written atomically)."""
    import fcntl

    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / f"{hashlib.sha256(name.encode()).hexdigest()[:24]}.lock", "a")
    except OSError:
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            pass
        yield  # (closing the file releases the lock)


class Cache:
    """A directory of content-addressed entries."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_root()

    def entry(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def get_or_build(self, build: Callable[[Path], None], *parts: str) -> tuple[Path, bool]:
        """Return the entry's directory, calling ``build(tmp_dir)`` to create it if absent; also says if it was built."""
        final = self.entry(*parts)
        if final.is_dir() and (final / COMPLETE).exists():
            return final, False
        with file_lock(self.root / ".locks", "/".join(parts)):  # a miss: one process builds, the others wait
            if final.is_dir() and (final / COMPLETE).exists():  # built by another process while this one waited
                return final, False
            return self._build(build, final), True

    def _build(self, build: Callable[[Path], None], final: Path) -> Path:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_entry(final.parent, final.name)
        try:
            build(tmp)
            (tmp / COMPLETE).touch()
            if (final / COMPLETE).exists():  # a concurrent builder finished first: keep its entry, readers may use it
                return final
            if final.exists():  # an unfinished leftover, never used: replace it
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.replace(tmp, final)
            except OSError:
                if not (final / COMPLETE).exists():  # lost a race to an incomplete entry: surface the error
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    def entries(self, skip: Iterable[str] = ()) -> list[CacheEntry]:
        """The finished :meth:`get_or_build` entries (``<task>/<kind>/<key>``), except under the top-level ``skip``."""
        found = []
        if not self.root.is_dir():
            return found
        for marker in sorted(self.root.rglob(COMPLETE)):
            path = marker.parent
            parts = path.relative_to(self.root).parts
            if parts[0] in skip or any(p.startswith(".") for p in parts):
                continue
            kind = "/".join(parts[1:-1]) or "entry"
            kind = f"{kind} model" if kind in ("tiny", "real") else kind
            created = dt.datetime.fromtimestamp(marker.stat().st_mtime, dt.timezone.utc).isoformat(timespec="seconds")
            found.append(CacheEntry(kind=kind, task=parts[0], defense=None, path=path, size=directory_size(path),
                                    created=created))
        return found

    def clear(self) -> None:
        """Delete everything in the cache (the root directory itself stays)."""
        if self.root.is_dir():
            for path in self.root.iterdir():
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

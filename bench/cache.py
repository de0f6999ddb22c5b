"""On-disk cache for expensive, deterministic artefacts (the tiny tiers' released models and judges, and the runs'
measured stages: :mod:`bench.run.stage_cache`).

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.errors import DataError

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


def _lock_path(folder: Path, name: str) -> Path:
    return folder / f"{hashlib.sha256(name.encode()).hexdigest()[:24]}.lock"


@contextlib.contextmanager
def file_lock(folder: Path, name: str):
    """Hold an exclusive lock named ``name`` (in ``folder``) while the block runs, so that processes about to build
    the same cache entry build it one after another: the second finds the first's entry and reads it instead.

    The lock is :mod:`filelock`'s (``flock`` on POSIX): the operating system releases it when its holder dies. A lock
    that cannot be created or taken (a read-only folder, a file system without locks) is an error, never a silent
    unlocked build, since two unlocked builders may delete each other's entries."""
    import filelock

    path = _lock_path(folder, name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(path))
        lock.acquire()
    except OSError as err:
        raise DataError(f"cannot lock cache entry {name!r} ({path}): {err.strerror or err}; the cache folder must be "
                        f"writable and on a file system with locks (set {ENV_VAR} to move it)") from err
    try:
        yield
    finally:
        lock.release()


def lock_is_held(folder: Path, name: str) -> bool:
    """Whether some process (this one included) holds :func:`file_lock` ``name`` right now."""
    import filelock

    path = _lock_path(folder, name)
    if not path.exists():
        return False
    probe = filelock.FileLock(str(path))
    try:
        probe.acquire(timeout=0)
    except filelock.Timeout:
        return True
    except OSError:
        return False  # an unreadable lock file locks nothing
    probe.release()
    return False


def remove_unless_held(path: Path, locks: Path, name: str) -> bool:
    """Delete the entry (or temporary) directory ``path`` unless the lock ``name`` it is built under is held;
    returns whether it was deleted. Lock files themselves are never deleted: another process may hold them."""
    if lock_is_held(locks, name):
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


def temp_entry_name(path: Path) -> str | None:
    """The entry name a :func:`make_temp_entry` directory is building (``.NAME.random``), else None."""
    if not path.name.startswith(".") or path.name.startswith(".trash-") or path.name.count(".") < 2:
        return None
    return path.name[1:].rsplit(".", 1)[0]


@dataclass(frozen=True)
class Cleared:
    """What a clear did: entries deleted, and the paths kept because a process was building them."""

    removed: int
    held: tuple[Path, ...] = ()


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
        found: list[CacheEntry] = []
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

    def clear(self, skip: Iterable[str] = ()) -> Cleared:
        """Delete the finished entries and the leftovers of interrupted builds, except under the top-level ``skip``
        and except what a process is building right now (its lock is held): those are kept and listed."""
        locks = self.root / ".locks"
        removed, held = 0, []
        if not self.root.is_dir():
            return Cleared(0)
        for entry in self.entries(skip=skip):
            name = "/".join(entry.path.relative_to(self.root).parts)
            if remove_unless_held(entry.path, locks, name):
                removed += 1
            else:
                held.append(entry.path)
        for tmp in sorted(self.root.rglob(".*")):
            parts = tmp.relative_to(self.root).parts
            building = temp_entry_name(tmp)
            if parts[0] in skip or parts[0] == ".locks" or not tmp.is_dir() or building is None:
                continue
            if not remove_unless_held(tmp, locks, "/".join((*parts[:-1], building))):
                held.append(tmp)
        for folder in sorted(self.root.rglob("*"), key=lambda p: -len(p.parts)):  # the emptied task/tier folders
            if folder.is_dir() and folder.relative_to(self.root).parts[0] not in (*skip, ".locks"):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only succeeds when empty
        return Cleared(removed, tuple(held))

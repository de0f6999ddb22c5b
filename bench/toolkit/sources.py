"""Resolving what a user names on the real tier: a local folder or a hub id, and datasets loaded from either.

Every real tier (vision, text-to-image, LLM) takes a model and often a dataset as "hub id or local path"; the
rules for telling them apart, loading a dataset with all its splits pooled, and turning library exceptions into a
one-line :class:`~bench.errors.DataError` that names what the user typed live here once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.errors import DataError, OutOfMemoryError

OFFLINE_HINT = " (not a local folder; with HF_HUB_OFFLINE=1 the hub id must be in the local HF cache)"


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (library messages can be pages long), or its type name."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) is an allocation failure: Python's, torch's (CPU or CUDA)."""
    seen = set()
    link: BaseException | None = err
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        text = str(link).lower()
        if isinstance(link, MemoryError) or type(link).__name__ == "OutOfMemoryError" or "out of memory" in text \
                or "can't allocate memory" in text or "cannot allocate memory" in text:
            return True
        link = link.__cause__ or link.__context__
    return False


def load_failure(err: BaseException, what: str) -> Exception:
    """The error to raise for a loader's exception, classified: out of memory (an
    :class:`~bench.errors.OutOfMemoryError`: the runs fail, the sweep goes on), a missing file, or a file in a
    format the loader cannot read (both :class:`~bench.errors.DataError`: bad input, the request stops). ``what``
    names what was being loaded as the user typed it, e.g. ``causal LM 'gpt2'``."""
    if is_out_of_memory(err):
        return OutOfMemoryError(f"out of memory loading {what}: {first_line(err)} (a smaller dtype, another device "
                                f"or a machine with more memory may fit it)")
    if isinstance(err, FileNotFoundError) or "no such file" in str(err).lower() \
            or "does not appear to have a file named" in str(err) or "not found" in first_line(err).lower():
        return DataError(f"cannot load {what}: a file is missing: {first_line(err)}")
    return DataError(f"cannot load {what}: not in a format this loader reads: {first_line(err)}")


def looks_local(ref: str) -> bool:
    """True when ``ref`` is meant as a path: it exists, or it is written like one.

    A hub id is "name" or "owner/name"; anything else that does not exist is a mistyped path, not a hub id.
    """
    return Path(ref).expanduser().exists() or ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or "\\" in ref


def local_or_hub(ref: str, what: str) -> tuple[str, str]:
    """(what to pass to ``from_pretrained``, a hint for error messages); a missing local folder is a DataError."""
    if looks_local(ref):
        if not Path(ref).expanduser().is_dir():
            raise DataError(f"{what} path {ref!r} does not exist (or is not a directory)")
        return str(Path(ref).expanduser()), ""
    return ref, OFFLINE_HINT


def load_pooled_dataset(ref: str, cache, *, layout: str, columns: Sequence[str], column_hint: str):
    """A ``datasets`` dataset from a local ``imagefolder`` or a hub id, every split pooled into one.

    ``layout`` describes the expected folder content for the "empty folder" error; each of ``columns`` must exist
    (``column_hint`` says how to point the task at other columns). Arrow files of local folders go to the bench
    cache, so users' HF caches stay clean.
    """
    import datasets

    try:
        if looks_local(ref):
            folder = Path(ref).expanduser()
            if not folder.is_dir():
                raise DataError(f"dataset folder {ref!r} does not exist (or is not a directory)")
            if not any(p.is_file() for p in folder.rglob("*")):
                raise DataError(f"dataset folder {ref!r} is empty (expected {layout})")
            loaded = datasets.load_dataset("imagefolder", data_dir=str(folder), cache_dir=str(cache.entry("hf-datasets")))
        else:
            loaded = datasets.load_dataset(ref)
        parts = list(loaded.values()) if isinstance(loaded, datasets.DatasetDict) else [loaded]
        ds = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    except DataError:
        raise
    except Exception as err:  # datasets raises FileNotFoundError, ValueError, ConnectionError, DatasetGenerationError...
        raise DataError(f"cannot load dataset {ref!r}: {first_line(err)}") from err
    for column in columns:
        if column not in ds.column_names:
            raise DataError(f"dataset {ref!r} has no column {column!r} (columns: {', '.join(ds.column_names)}); "
                            f"{column_hint}")
    return ds

"""``bench cache ls``, ``bench cache verify`` and ``bench cache clear``: what the on-disk cache holds (measured stages,
built models), checking every stage file against its sha256, and removing it. The cache lives in ``$BENCH_CACHE_DIR`` (default ``~/.cache/training-resistance-bench``)."""

from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  bench cache ls
  bench cache verify                 # re-hash every stage file (runs only check sizes); corrupt entries are discarded
  bench cache clear --yes            # the measured stages (released and defended models): rebuilt when next needed
  bench cache clear --all --yes      # everything, the tiny tiers' trained released models and judges too
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("cache", help="list, verify or clear the on-disk cache", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("ls", "verify", "clear"),
                   help="ls: list the entries; verify: re-hash every stage's files, discarding corrupt entries; "
                        "clear: delete them")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--stages", dest="everything", action="store_false", default=False,
                       help="clear: only the measured stages (the default)")
    scope.add_argument("--all", dest="everything", action="store_true",
                       help="clear: everything, built released models and judges too")
    p.add_argument("--yes", "-y", action="store_true", help="clear without asking")
    p.add_argument("--cache-dir", metavar="DIR", help="the cache root (default: $BENCH_CACHE_DIR or the user cache)")
    return p


def _size(n: float) -> str:
    unit = "B"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            break
        n /= 1024
    return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"


def main(args: argparse.Namespace) -> int:
    from bench.cache import Cache
    from bench.errors import ConfigError
    from bench.run.stage_cache import cache_entries, clear_cache

    cache = Cache(args.cache_dir)
    entries = cache_entries(cache)
    if args.action == "ls":
        if not entries:
            print(f"cache {cache.root} is empty")
            return 0
        rows = [(e.kind, e.task, e.defense or "", e.detail, _size(e.size), e.created or "", e.path.name)
                for e in entries]
        header = ("KIND", "TASK", "DEFENSE", "DETAIL", "SIZE", "CREATED", "KEY")
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
        print(f"{len(entries)} entries, {_size(sum(e.size for e in entries))} in {cache.root}")
        return 0
    if args.action == "verify":
        from bench.run.stage_cache import StageStore

        corrupt = StageStore(cache).verify()
        for path, problem in corrupt:
            print(f"corrupt, discarded (rebuilt when next needed): {path.name}: {problem}")
        print(f"verified {len(StageStore(cache).entries()) + len(corrupt)} stage entries: {len(corrupt)} corrupt")
        return 1 if corrupt else 0
    what = "everything in the cache" if args.everything else "the measured stages"
    if not args.yes:
        if not sys.stdin.isatty():
            raise ConfigError(f"bench cache clear would delete {what} in {cache.root}; pass --yes to confirm")
        if input(f"delete {what} in {cache.root}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 0
    cleared = clear_cache(cache, everything=args.everything)
    print(f"deleted {cleared.removed} entries ({what}) from {cache.root}")
    if cleared.held:
        print(f"kept {len(cleared.held)} being built by a running process (clear again when it is done):")
        for path in cleared.held:
            print(f"  {path}")
    return 0

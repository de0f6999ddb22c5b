"""Reading a results folder's metrics: ``pq.read_table`` per run file (before) against one ``ParquetFile`` read on
one thread (:func:`bench.run.results.read_metrics_file`, after), paired, and the tables compared.

The leaderboard reads every run's ``metrics.parquet`` (9,466 files for the tiny leaderboard; that read was 47 of the
render's 110 CPU-s in a profile). Each repeat times both readers over the same files, alternating which goes
first, in CPU seconds (``time.process_time``) and wall seconds; the ratio of their medians is printed with the
machine yardstick. The tables read are checked to be equal, NaN included (pandas ``DataFrame.equals``).

    python benchmarks/read_metrics.py RESULTS_DIR [--files 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: import the yardstick next to it
from yardstick import yardstick_line  # noqa: E402

from bench.run.results import METRICS, read_metrics_file, run_directories  # noqa: E402


def timed(read, files: list[Path]) -> tuple[float, float, list]:
    cpu, wall = time.process_time(), time.perf_counter()
    tables = [read(path) for path in files]
    return time.process_time() - cpu, time.perf_counter() - wall, tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--files", type=int, default=2000, help="read at most this many run files")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    files = [d / METRICS for d in run_directories(args.results) if (d / METRICS).is_file()][:args.files]
    if not files:
        print(f"no {METRICS} under {args.results}")
        return 2
    print(yardstick_line())
    readers = {"read_table": pq.read_table, "ParquetFile, one thread": read_metrics_file}
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in readers}
    for repeat in range(args.repeats):
        order = list(readers) if repeat % 2 == 0 else list(reversed(readers))
        tables = {}
        for name in order:
            cpu, wall, tables[name] = timed(readers[name], files)
            seconds[name].append((cpu, wall))
        before, after = tables["read_table"], tables["ParquetFile, one thread"]
        same = all(a.schema == b.schema and a.to_pandas().equals(b.to_pandas()) for a, b in zip(before, after))
        if not same:
            print("the two readers gave different tables")
            return 1
    for name, runs in seconds.items():
        cpus, walls = [c for c, _ in runs], [w for _, w in runs]
        print(f"{name:>24}: {statistics.median(cpus):6.2f} CPU-s [{min(cpus):.2f}-{max(cpus):.2f}], "
              f"{statistics.median(walls):6.2f} s wall over {len(files)} files")
    ratio = statistics.median(c for c, _ in seconds["read_table"]) / statistics.median(
        c for c, _ in seconds["ParquetFile, one thread"])
    print(f"CPU-s ratio read_table / ParquetFile: {ratio:.2f}x (tables equal)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A one-line machine yardstick: single-thread float32 1024³ matrix multiply throughput with torch, in GFLOP/s.

Wall times from different machines cannot be compared (issue 23: the headline took 94 s on one 2-core machine and
154 s on another), so every benchmark that prints a time also prints this figure, measured in the same process.
It is one thread on purpose: the tiny tiers run one intra-op thread per run, and the figure then does not depend on
how many cores happen to be idle. The best of several repeats is reported (a busy machine only ever slows a repeat
down), with the median next to it so contention shows.

    python benchmarks/yardstick.py            # e.g. "yardstick: 82.1 GFLOP/s (fp32 1024^3 GEMM, 1 thread; median 80.4)"

Other benchmarks import :func:`yardstick` and :func:`yardstick_line`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

SIZE = 1024


@dataclass(frozen=True)
class Yardstick:
    best: float
    """GFLOP/s of the fastest repeat."""
    median: float
    """GFLOP/s of the median repeat (far under ``best``: the machine was busy)."""
    size: int = SIZE

    def line(self) -> str:
        return (f"yardstick: {self.best:.1f} GFLOP/s (fp32 {self.size}^3 GEMM, 1 thread; median {self.median:.1f}"
                f" over repeats)")


def yardstick(repeats: int = 7, size: int = SIZE) -> Yardstick:
    """Measure single-thread float32 GEMM throughput (the caller's torch thread setting is restored)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=generator)
        b = torch.randn(size, size, generator=generator)
        torch.mm(a, b)  # warm-up: first-call allocation and kernel selection
        flops = 2.0 * size ** 3
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            rates.append(flops / (time.perf_counter() - start) / 1e9)
    finally:
        torch.set_num_threads(threads)
    return Yardstick(max(rates), statistics.median(rates), size)


def yardstick_line(repeats: int = 7) -> str:
    return yardstick(repeats).line()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    print(yardstick_line(args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

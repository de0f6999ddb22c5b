"""The real tier on a laptop, second architecture: a Gemma-3-270M-shaped model from a Q4_K_M ``.gguf``, timed and
measured (wall, CPU seconds, peak RSS) per phase.

    python benchmarks/real_gguf.py                          # builds the model once into the cache, then compares
    python benchmarks/real_gguf.py --size test              # the same on the test-size model (seconds)
    python benchmarks/real_gguf.py task.eval_size=24        # extra `bench run` overrides

The model (:func:`fixtures_gemma.save_gemma3_gguf`: Gemma-3-270M's shapes and 262,144-token vocabulary, random
weights, written as Q4_K_M) is built once into ``$BENCH_CACHE_DIR/gguf-fixture-v2/`` (or ``--fixture DIR``) by a child
process, so its build is not in the measured peak. Then it runs :mod:`benchmarks.real_cpu`'s two-run comparison
(SpecDef ``n_layers=5`` and ``none``, ``full-ft`` AdamW lr 1e-5, 20 steps) through ``bench run`` in this process,
with ``task.refusal_floor=0`` (a random model answers nothing like a refusal; without it no run would attack), in
fresh results and cache directories. It prints each run's stage parts, then per phase (each top-level part of the
stages, and the time outside them: the attacks, loading, result writing) its wall time, CPU seconds and the peak RSS sampled
every 50 ms, and in total the wall time, CPU seconds (user + system, all threads) and the process's true peak RSS
(``ru_maxrss``), with a one-line machine yardstick (single-thread float32 1024³ matmul GFLOP/s, measured here).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
TESTS = Path(__file__).resolve().parents[1] / "tests"  # the test fixtures: not in the package
from real_cpu import ISSUE_COMMAND, ISSUE_OVERRIDES, cpu_seconds, report  # noqa: E402
from yardstick import yardstick  # noqa: E402  (the one machine yardstick, next to this script)

GGUF_NAME = "model.Q4_K_M.gguf"


def fixture(folder: Path, size: str) -> Path:
    """The gguf file of ``size`` in ``folder``, built by a child process the first time."""
    path = folder / size / GGUF_NAME
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); from pathlib import Path; "
                "from fixtures_gemma import save_gemma3_gguf; "
                "p = Path(sys.argv[1]); save_gemma3_gguf(p.with_suffix('.tmp'), sys.argv[2]); "
                "p.with_suffix('.tmp').rename(p)")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code, str(path), size], check=True)
        print(f"built {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - start:.0f} s")
    return path


class PhaseMemory:
    """Wall seconds and sampled peak RSS per phase: the top-level stage part running, or ``outside stages``."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.phase = interval, "outside stages"
        self.peaks: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._since, self._cpu_since = time.perf_counter(), cpu_seconds()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), self._rss())

    def enter(self, phase: str) -> None:
        now, cpu = time.perf_counter(), cpu_seconds()
        self.seconds[self.phase] = self.seconds.get(self.phase, 0.0) + now - self._since
        self.cpu[self.phase] = self.cpu.get(self.phase, 0.0) + cpu - self._cpu_since
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), self._rss())
        self.phase, self._since, self._cpu_since = phase, now, cpu

    def __enter__(self) -> PhaseMemory:
        import contextlib

        from bench.toolkit.stage_clock import StageClock

        original, memory = StageClock.part, self

        @contextlib.contextmanager
        def part(clock, name, detail=""):  # a top-level part of a stage is a phase; nested parts belong to it
            top = not clock._path
            if top:
                memory.enter(f"{clock.stage} stage: {name}")
            try:
                with original(clock, name, detail):
                    yield
            finally:
                if top:
                    memory.enter("outside stages")

        self._restore = lambda: setattr(StageClock, "part", original)
        StageClock.part = part
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.enter("outside stages")
        self._restore()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="extra PART.KEY=VALUE overrides, e.g. task.eval_size=24")
    parser.add_argument("--size", default="270m", choices=("270m", "test"), help="model size (default 270m)")
    parser.add_argument("--fixture", help="folder of the built gguf files (default $BENCH_CACHE_DIR/gguf-fixture-v2)")
    parser.add_argument("--work", help="directory for results and cache (default: a fresh temporary one)")
    args = parser.parse_args(argv)

    cache_root = Path(os.environ.get("BENCH_CACHE_DIR", Path.home() / ".cache" / "training-resistance-bench"))
    model = fixture(Path(args.fixture) if args.fixture else cache_root / "gguf-fixture-v2", args.size)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-real-gguf-"))
    os.environ["BENCH_CACHE_DIR"] = str(work / "cache")  # fresh: every stage is built, none read back
    from bench.cli import main as bench_main
    from bench.cli import passive_thread_waits

    passive_thread_waits()  # as `bench` does, before torch is imported
    gflops = yardstick().best
    command = ["run", *ISSUE_COMMAND, "--model", str(model), "--results", str(work / "results"),
               *ISSUE_OVERRIDES, "task.refusal_floor=0", *args.overrides]
    print("bench " + " ".join(command), flush=True)
    load_before = os.getloadavg()[0]
    start, cpu = time.perf_counter(), cpu_seconds()
    with PhaseMemory() as memory:
        code = bench_main(command)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    report(work / "results")
    print("\nper phase: wall seconds, CPU seconds, peak RSS (sampled every 50 ms)")
    for phase, seconds in memory.seconds.items():
        print(f"  {phase:<40} {seconds:8.1f} s {memory.cpu[phase]:8.1f} CPU s "
              f"{memory.peaks.get(phase, 0) / 2**30:7.2f} GiB")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"\nwall {wall:.1f} s, CPU {cpu:.1f} s (user + system, all threads), peak RSS {peak / 2**30:.2f} GiB "
          f"({peak / 1e9:.2f} GB); load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; "
          f"yardstick {gflops:.0f} GFLOP/s (1-thread fp32 1024³ matmul); exit code {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())

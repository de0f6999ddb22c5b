"""Muon on the CPU: torch's bfloat16 Newton–Schulz against :class:`attacks._optim.CpuFloat32Muon` (float32), and a
whole Muon attack run on the tiny vision task with each, measured in this process (one thread), as a ratio.

    python benchmarks/muon_cpu.py [--steps 500]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _optimizer_step_ms(cls, shapes, steps: int) -> float:
    import torch

    params = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
    opt = cls(params, lr=1e-3, weight_decay=0.0, adjust_lr_fn="match_rms_adamw")
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - start) / steps * 1e3


def _attack_seconds(results: str) -> float:
    from bench.cli import main

    start = time.perf_counter()
    assert main(["run", "--defense", "none", "--task", "vision-digits", "--attack", "full-ft", "optimizer=muon",
                 "lr=1e-6", "--no-baseline", "--jobs", "1", "--quiet", "--results", results]) == 0
    return time.perf_counter() - start


def main() -> None:
    import tempfile

    import torch

    from attacks import _optim
    from tasks.vision.task import VisionConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    hidden = VisionConfig().hidden
    sizes = [64, *hidden, 10]
    shapes = [(sizes[i + 1], sizes[i]) for i in range(len(sizes) - 1)]
    bf16 = _optimizer_step_ms(torch.optim.Muon, shapes, args.steps)
    f32 = _optimizer_step_ms(_optim.CpuFloat32Muon, shapes, args.steps)
    print(f"Muon step on the vision MLP's matrices {shapes}: torch bfloat16 {bf16:.2f} ms, float32 {f32:.2f} ms "
          f"({bf16 / f32:.1f}x)")
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        _attack_seconds(a)  # warm: the released model and its stage
        new = _attack_seconds(b)
        original = _optim.CpuFloat32Muon
        _optim.CpuFloat32Muon = torch.optim.Muon
        try:
            with tempfile.TemporaryDirectory() as c:
                old = _attack_seconds(c)
        finally:
            _optim.CpuFloat32Muon = original
    print(f"vision-digits full-ft Muon lr 1e-6 run (all 500 steps: it never harms; probes included): torch bfloat16 {old:.1f} s, "
          f"float32 {new:.1f} s ({old / new:.1f}x)")


if __name__ == "__main__":
    main()

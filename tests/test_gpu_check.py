"""``benchmarks/gpu_check.py`` in its CPU smoke mode: every real tier end to end, none and SpecDef, in bf16 where the
tier supports it, so the script a GPU user runs is known to work before they run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# The slow lane: a fresh Python that builds and runs all three real tiers twice. CI runs each piece in process: the
# real tiers end to end (test_llm_real, test_diffusion_real, test_vision_real), in bfloat16 for the LLM and diffusion
# ones (test_llm_real's bf16 Llama, test_diffusion_real's end-to-end run in both dtypes).
@pytest.mark.slow
def test_gpu_check_smoke_mode_passes_on_cpu(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--size",
                           "test", "--budget", "2"], capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for task in ("llm-harmful-qa", "sd-style", "vision-digits"):
        assert f"PASS  {task}" in proc.stdout
    assert proc.stdout.count("specdef: status success") == 3 and "defended stage" in proc.stdout

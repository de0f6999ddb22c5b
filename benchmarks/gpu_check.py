"""GPU check: the real tier of every task family end to end on one device, with pass/fail and timings per stage.

Builds local checkpoints from configs (``tests/fixtures.py``: a ~1B-parameter random Llama with a Llama-3 chat
template, a Stable Diffusion pipeline, a ViT, and their data folders), then for each task runs ``none`` and
``specdef`` (``n_layers`` maps, ``dtype=auto``) against a short AdamW attack through the library API, exactly as
``bench run --tier real --device …`` would: the released stage (evaluation, lm-eval on a shipped tiny task, probe,
curvature), the defended stage (the defense, function preservation, retained utility) and the attack run. The LLM
and diffusion tiers run in bfloat16 (the vision tier loads float32 checkpoints). Prints one line per stage and run,
then PASS/FAIL per task; exits 1 if anything failed.

    python benchmarks/gpu_check.py                              # on CUDA, full size (66 s on one H200)
    python benchmarks/gpu_check.py --device cpu --size test     # smoke mode: tiny fixtures, CPU, ~1 minute
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from bench.cache import Cache
from bench.core.spec import make_spec
from bench.run.devices import resolve_device
from bench.run.runner import run
from bench.run.stages import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test fixtures: not in the package
import fixtures  # noqa: E402


def checks(size: str, root: Path) -> list[tuple[str, str, callable, dict]]:
    """(label, task, build the model directory and return it with the task args, defense args)."""
    full = size == "gpu"
    light = {} if full else {"curvature_iters": 3}  # smoke mode: the diagnostic runs, briefly

    def llm():
        model = fixtures.save_llama(root / "llama", size, dtype=torch.bfloat16 if full else torch.float32)
        return model, {"dtype": "bfloat16", "lm_eval_tasks": ["llm_tiny_arithmetic"], "lm_eval_limit": 16,
                       "probe_size": 8, "max_new_tokens": 8, "max_length": 128, "bootstrap": 100,
                       "refusal_floor": 0.0, **light}  # a random model never refuses: attack it anyway

    def diffusion():
        model = fixtures.save_sd_pipeline(root / "sd", size)
        folder = fixtures.make_captioned_folder(root / "sd-data")
        return model, {"dataset": str(folder), "forbidden": "stripes", "dtype": "bfloat16", "judge_steps": 40,
                       "eval_samples": 8, "probe_samples": 4, "confirm_samples": 8, "sampler_steps": 4,
                       "bootstrap": 100, **light}

    def vision():
        model = fixtures.save_vit(root / "vit", size=size)
        folder = fixtures.make_class_folder(root / "vision-data")
        return model, {"dataset": str(folder), "release_steps": 30, "bootstrap": 100, **light}

    return [("llm-harmful-qa", "llm-harmful-qa", llm, {"n_layers": 10} if full else {}),
            ("sd-style", "sd-style", diffusion, {}),
            ("vision-digits", "vision-digits", vision, {})]


def timed(label: str, fn):
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(f"    {label:<34} {seconds:8.2f} s", flush=True)
    return out


def run_check(label, task, build, defense_args, args, root: Path) -> bool:
    print(f"\n== {label} ({args.size}, {args.device})", flush=True)
    try:
        model, task_args = timed("write the checkpoint and data", build)
        session = Session(results_dir=root / "results", cache=Cache(root / "cache"), device=args.device)
        attack = {"optimizer": "adamw", "lr": 1e-5, "budget": args.budget, "eval_every": max(args.budget // 2, 1),
                  "batch_size": 4}
        ok = True
        for defense, dargs in (("none", {}), ("specdef", defense_args)):
            spec = make_spec(task=task, defense=defense, attack="full-ft", tier="real", model=str(model),
                             task_args=task_args, defense_args=dargs, attack_args=attack)
            released = timed(f"{defense}: released stage", lambda: session.released(spec))
            defended = timed(f"{defense}: defended stage", lambda: session.defended(spec))
            result = timed(f"{defense}: attack run ({args.budget} steps)", lambda: run(spec, session))
            values = {row["metric"]: row["value"] for row in defended.rows}
            curvature = {row["metric"]: row["value"] for row in released.rows}
            print(f"    {defense}: status {result.status}; defense {defended.seconds:.2f} s; "
                  f"max |Δ out| {values.get('max_abs_diff', float('nan')):.3g} "
                  f"({values.get('relative_abs_diff', float('nan')):.2g} of scale); "
                  f"params +{defended.params_added / 1e6:.1f} M; "
                  f"released top Hessian eig {curvature.get('hessian_top_eig', float('nan')):.3g} "
                  f"({curvature.get('hessian_seconds', float('nan')):.2f} s)", flush=True)
            if result.status != "success":
                print(f"    error: {result.error}", flush=True)
                ok = False
        return ok
    except Exception:  # noqa: BLE001 - a check reports its failure and the next one runs
        traceback.print_exc()
        return False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--size", choices=("gpu", "test"), default="gpu", help="fixture size (test: seconds on a CPU)")
    p.add_argument("--budget", type=int, default=20, help="attack steps per run (default: %(default)s)")
    p.add_argument("--only", nargs="*", help="task labels to check (default: all)")
    args = p.parse_args(argv)
    args.device = str(resolve_device(args.device, "real"))
    print(f"GPU check on {args.device}"
          + (f" ({torch.cuda.get_device_name(torch.device(args.device))})" if args.device.startswith("cuda") else "")
          + f"; torch {torch.__version__}", flush=True)
    outcome = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, task, build, defense_args in checks(args.size, Path(tmp)):
            if args.only and label not in args.only:
                continue
            start = time.perf_counter()
            outcome[label] = (run_check(label, task, build, defense_args, args, Path(tmp) / label),
                              time.perf_counter() - start)
    print()
    for label, (ok, seconds) in outcome.items():
        print(f"{'PASS' if ok else 'FAIL'}  {label:<16} {seconds:7.1f} s")
    return 0 if all(ok for ok, _ in outcome.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

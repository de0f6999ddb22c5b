"""Before and after, in one process: the full-vocabulary logits path against the chunked LM head
(:mod:`tasks.llm.chunked`) and the whole-array output comparison against the row-chunked one, on a Gemma-3-270M-shaped
model (262,144-token vocabulary, random weights built from its config).

    python benchmarks/chunked_nll.py                 # batch 32 × 96 tokens, as the harness's default batches
    python benchmarks/chunked_nll.py --batch 8 --repeats 3

For each measure it runs the two variants interleaved (``--repeats`` times) and prints the CPU seconds and the peak
RSS above the starting point (the kernel's high-water mark, reset before each measure through
``/proc/self/clear_refs``), the median and range over repeats, and the largest difference between the two results
(they must agree to float rounding). Measures: the evaluation NLL (no grad), one attack step's loss and backward,
and the released-vs-defended output comparison (function preservation) on ``--rows`` rows of logits.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test fixtures: not in the package


def _reset_peak() -> int:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (peak RSS) to the current RSS
    return _status("VmRSS")


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def measure(fn) -> tuple[float, int, object]:
    """(CPU seconds, peak RSS above the start in bytes, result) of ``fn()``."""
    import gc

    gc.collect()
    start_rss = _reset_peak()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    result = fn()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime - cpu, _status("VmHWM") - start_rss, result


def old_function_preservation(released, defended):
    """The whole-array comparison as it was before (float64 copies of everything)."""
    from bench.core.metrics import _log_softmax

    r, d = np.asarray(released, dtype=np.float64), np.asarray(defended, dtype=np.float64)
    max_abs = float(np.max(np.abs(r - d)))
    log_p, log_q = _log_softmax(r), _log_softmax(d)
    kl = float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)))
    return max_abs, max(kl, 0.0), float(np.mean(r.argmax(-1) == d.argmax(-1)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=96)
    parser.add_argument("--rows", type=int, default=512, help="logit rows compared (function preservation)")
    parser.add_argument("--preservation-vocab", type=int, default=262144, help="logit columns compared")
    parser.add_argument("--only-preservation", action="store_true", help="skip the model measures (no model built)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    import torch
    from fixtures_gemma import gemma3_model

    from bench.core.metrics import function_preservation
    from tasks.llm import chunked
    from tasks.llm.chat import Batch, response_loss

    if not args.only_preservation:
        model = gemma3_model("270m")
        model.set_attn_implementation("eager")
        vocab = model.config.vocab_size
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab, (args.batch, args.length), generator=generator)
        loss_mask = torch.zeros(args.batch, args.length - 1)
        loss_mask[:, args.length // 3:] = 1.0  # the response: the last two thirds, as in a chat exchange
        batch = Batch(ids, torch.ones_like(ids), loss_mask, torch.full((args.batch,), 100.0))
        limit = chunked.FULL_LOGITS_LIMIT

        def nll(full: bool):
            chunked.FULL_LOGITS_LIMIT = 1 << 62 if full else 0  # 0: chunked at any size
            try:
                with torch.no_grad():
                    return response_loss(model, batch, reduction="none")
            finally:
                chunked.FULL_LOGITS_LIMIT = limit

        def step(full: bool):
            chunked.FULL_LOGITS_LIMIT = 1 << 62 if full else 0  # 0: chunked at any size
            try:
                model.zero_grad(set_to_none=True)
                loss = response_loss(model, batch)
                loss.backward()
                grad = model.get_output_embeddings().weight.grad.detach().clone()
                model.zero_grad(set_to_none=True)
                return torch.cat([loss.detach().view(1), grad.view(-1)[:100000]])
            finally:
                chunked.FULL_LOGITS_LIMIT = limit

    rng = np.random.default_rng(0)
    shape = (args.rows, args.preservation_vocab)
    released = rng.standard_normal(shape, dtype=np.float32) * 5
    defended = released + rng.standard_normal(shape, dtype=np.float32) * 1e-3

    def preservation(old: bool):
        if old:
            return old_function_preservation(released.astype(np.float64), defended.astype(np.float64))
        result = function_preservation(released, defended)
        return result.max_abs_diff, result.mean_divergence, result.agreement

    measures = {"function preservation": (preservation, "whole array, float64", "row chunks")}
    if not args.only_preservation:
        print(f"Gemma-3-270M shapes, vocabulary {vocab}; batch {args.batch} × {args.length} tokens "
              f"({int(loss_mask.sum())} response positions); {args.repeats} repeats, interleaved")
        measures = {"evaluation NLL (no grad)": (nll, "full logits", "chunked"),
                    "attack step (loss + backward)": (step, "full logits", "chunked"), **measures}
    print(f"function preservation on {shape[0]} × {shape[1]} float32 logits")
    for name, (fn, before_name, after_name) in measures.items():
        runs: dict[bool, list[tuple[float, int, object]]] = {True: [], False: []}
        for _ in range(args.repeats):
            for before in (True, False):
                runs[before].append(measure(lambda fn=fn, before=before: fn(before)))
        a, b = runs[True][0][2], runs[False][0][2]
        if isinstance(a, torch.Tensor):
            diff = float((a - b).abs().max())
        else:
            diff = max(abs(x - y) for x, y in zip(a, b))
        print(f"\n{name}: largest difference between the results {diff:.3g}")
        for before, label in ((True, before_name), (False, after_name)):
            cpu = [r[0] for r in runs[before]]
            peak = [r[1] / 2**30 for r in runs[before]]
            print(f"  {label:<22} CPU {statistics.median(cpu):7.1f} s [{min(cpu):.1f}, {max(cpu):.1f}]   "
                  f"peak RSS +{statistics.median(peak):5.2f} GiB [{min(peak):.2f}, {max(peak):.2f}]")
    print(f"\n(time {time.strftime('%H:%M:%S')}; CPU seconds, not wall: the machine may be shared)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time the curvature diagnostic (:func:`bench.run.curvature.top_hessian_eigenvalue`) on a randomly initialised Llama.

Builds a ``LlamaForCausalLM`` from a config (no download): ``--size 1b`` is a Llama-3.2-1B-shaped model with a
32k vocabulary (hidden 2048, 16 layers, intermediate 8192, 32 heads, 8 key/value heads: 1.1e9 parameters),
``--size tiny`` a 2-layer one that runs on a CPU in seconds. It is cast to ``--dtype`` and moved to ``--device``,
with eager attention (fused SDPA kernels have no double backward). The loss is the causal-LM loss on a fixed batch
of random token ids (``--batch`` 4 sequences of ``--tokens`` 128, the LLM tasks' curvature batch), and the
diagnostic runs as the runner runs it: at most ``--iters`` Lanczos steps, stopped after ``--seconds``.

Printed: parameter count, the largest Ritz value, Lanczos steps, converged, seconds of the diagnostic (the loss,
its gradient graph and the Hessian-vector products), and on CUDA the peak memory. A random model sits far from a
minimum, so its Hessian has large negative eigenvalues too: the value printed is the largest algebraic one.

    python benchmarks/curvature.py --size tiny                  # CPU, a few seconds
    python benchmarks/curvature.py --size 1b                    # bfloat16 on cuda when available
    python benchmarks/curvature.py --size 1b --dtype float32 --iters 50 --seconds 120
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from bench.run.curvature import top_hessian_eigenvalue

SIZES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, intermediate_size=256, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, intermediate_size=8192, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=32000),
}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def build_model(size: str, dtype: torch.dtype, device: torch.device, seed: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SIZES[size], max_position_embeddings=2048, tie_word_embeddings=False)
    torch.manual_seed(seed)
    with torch.device(device):  # initialise in place: a 1B model built on the CPU takes longer than the diagnostic
        model = LlamaForCausalLM(config)
    model.set_attn_implementation("eager")
    return model.to(dtype).eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=4, help="sequences in the batch")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--iters", type=int, default=30, help="most Lanczos steps")
    parser.add_argument("--seconds", type=float, default=60.0, help="time cap of the diagnostic")
    parser.add_argument("--tol", type=float, default=1e-4, help="relative change of the top Ritz value that converges")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (a tiny model runs fastest on one, and a shared machine makes more crawl)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    start = time.perf_counter()
    model = build_model(args.size, DTYPES[args.dtype], device, args.seed)
    built = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.tokens), generator=generator).to(device)

    def loss_fn(m: torch.nn.Module) -> torch.Tensor:
        return m(input_ids=ids, labels=ids).loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    eigen = top_hessian_eigenvalue(model, loss_fn, iters=args.iters, tol=args.tol, seed=args.seed,
                                   seconds=args.seconds if args.seconds > 0 else math.inf)
    print(f"llama {args.size} ({params / 1e6:.1f}M parameters, {args.dtype}, {device}; built in {built:.1f} s), "
          f"batch {args.batch} x {args.tokens} tokens")
    print(f"iterations {eigen.iterations}  converged {eigen.converged}  seconds {eigen.seconds:.2f}  "
          f"largest Hessian eigenvalue {eigen.value:.6g}")
    if device.type == "cuda":
        print(f"peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()

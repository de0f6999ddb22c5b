"""SpecDef's per-layer cost: iterative top-k SVD path vs full SVD path, with the accuracy of each.

For each square float32 matrix size this times the two ways SpecDef can prepare one layer, side by side:

* **top-k**: ``top_k_left_singular(W, k, method="topk")`` (block subspace iteration) + ``specdef_maps``;
* **exact**: ``top_k_left_singular(W, k, method="exact")`` (full float64 SVD) + ``specdef_maps``;

and reports, per size: both times and the speedup (target >= 10x at 4096²), the reconstruction error
||C W̃ - W|| / ||W|| (float64) of both paths, the largest principal angle between the top-k path's subspace and the
exact top-k subspace, the top-k path's iterations and final Ritz residual, and the worst relative error of the top-k
singular values of the top-k path's W̃ against alpha·σ_i(W) (from the exact SVD).

Test matrices are W = U diag(s) Vᵀ with random orthogonal U, V and s_i = i^-decay (``--spectrum decay``, a decaying
spectrum like trained weights), or a plain Gaussian matrix (``--spectrum flat``: σ_k ≈ σ_k+1, the hard case for
subspace iteration). Only the two timed calls run with ``--threads`` threads; building the matrices and the accuracy
checks use every core.

``--shapes llama8b`` uses Llama-3.1-8B's rectangular maps (q/o 4096², k/v 1024×4096, gate/up 14336×4096, down
4096×14336) and ``--device cuda`` runs everything on a GPU. ``--apply N`` times what a user waits for instead: SpecDef
applied (``svd=auto`` and ``svd=exact``) to N maps drawn from a Llama-8B layer's seven projections, in ``--dtype``
(bfloat16 by default, stored per ``dtype=auto``), with the time split into SVD and the rest, the parameters added
and the worst stored-map reconstruction error.

    python benchmarks/specdef_svd.py                       # 1024, 2048, 4096; 4096 takes a couple of minutes
    python benchmarks/specdef_svd.py --shapes 1024,2048    # quick run
    python benchmarks/specdef_svd.py --spectrum both --threads 2
    python benchmarks/specdef_svd.py --device cuda --shapes llama8b --spectrum both
    python benchmarks/specdef_svd.py --device cuda --apply 10 --spectrum both     # the 10-layer, 8B-shaped apply
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from defenses._spectral import principal_angle, specdef_maps, top_k_left_singular

LLAMA8B = {"q_proj": (4096, 4096), "k_proj": (1024, 4096), "v_proj": (1024, 4096), "o_proj": (4096, 4096),
           "gate_proj": (14336, 4096), "up_proj": (14336, 4096), "down_proj": (4096, 14336)}

ALL_THREADS = torch.get_num_threads()  # for the untimed setup and accuracy checks


def test_matrix(m: int, n: int, spectrum: str, decay: float, seed: int, device="cpu") -> torch.Tensor:
    """An m × n float32 matrix with a decaying (U diag(s) Vᵀ, s_i = i^-decay) or flat (Gaussian) spectrum."""
    g = torch.Generator(device=device).manual_seed(seed)
    if spectrum == "flat":
        return torch.randn(m, n, generator=g, device=device) / n**0.5
    r = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(m, r, dtype=torch.float64, generator=g, device=device))
    v, _ = torch.linalg.qr(torch.randn(n, r, dtype=torch.float64, generator=g, device=device))
    s = torch.arange(1, r + 1, dtype=torch.float64, device=device) ** -decay
    return ((u * s) @ v.T).float()


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, threads: int, repeats: int):
    """Run ``fn`` ``repeats`` times on ``threads`` threads; return its last result and the fastest time."""
    torch.set_num_threads(threads)
    best = float("inf")
    try:
        for _ in range(repeats):
            synchronize()
            start = time.perf_counter()
            out = fn()
            synchronize()
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(ALL_THREADS)
    return out, best


def relative_reconstruction_error(weight: torch.Tensor, inflated: torch.Tensor, compensation: torch.Tensor) -> float:
    w = weight.double()
    return float(torch.linalg.matrix_norm(compensation @ inflated - w) / torch.linalg.matrix_norm(w))


def measure(shape: tuple[int, int], spectrum: str, args, topk_first: bool) -> dict:
    weight = test_matrix(*shape, spectrum, args.decay, args.seed, args.device)

    def topk_path():
        gen = torch.Generator().manual_seed(args.seed)
        top = top_k_left_singular(weight, args.k, method="topk", generator=gen, max_iter=args.max_iter)
        return top, *specdef_maps(weight, top.u, args.alpha)

    def exact_path():
        top = top_k_left_singular(weight, args.k, method="exact")
        return top, *specdef_maps(weight, top.u, args.alpha)

    # The caller alternates which path runs first, so neither always gets the colder caches.
    if topk_first:
        (top_t, inf_t, comp_t), t_topk = timed(topk_path, args.threads, args.repeats)
        (top_e, inf_e, comp_e), t_exact = timed(exact_path, args.threads, args.repeats)
    else:
        (top_e, inf_e, comp_e), t_exact = timed(exact_path, args.threads, args.repeats)
        (top_t, inf_t, comp_t), t_topk = timed(topk_path, args.threads, args.repeats)

    amplified = torch.linalg.svdvals(inf_t)[: args.k]  # true singular values of the top-k path's W̃
    target = args.alpha * top_e.s
    return {
        "size": f"{shape[0]}×{shape[1]}",
        "spectrum": spectrum,
        "t_topk": t_topk,
        "t_exact": t_exact,
        "speedup": t_exact / t_topk,
        "iters": top_t.iterations,
        "residual": top_t.residual,
        "recon_topk": relative_reconstruction_error(weight, inf_t, comp_t),
        "recon_exact": relative_reconstruction_error(weight, inf_e, comp_e),
        "angle": principal_angle(top_t.u, top_e.u),
        "sigma_err": float(((amplified - target).abs() / target).max()),
        "gap": float(top_e.s[-1] / torch.linalg.svdvals(weight.double())[args.k]) if args.show_gap else float("nan"),
        "method": top_t.method,
    }


COLUMNS = [  # (header, key, format)
    ("size", "size", "{:>10}"), ("spectrum", "spectrum", "{:>8}"),
    ("top-k s", "t_topk", "{:8.3f}"), ("exact s", "t_exact", "{:8.3f}"), ("speedup", "speedup", "{:7.1f}x"),
    ("iters", "iters", "{:5d}"), ("residual", "residual", "{:9.1e}"),
    ("recon top-k", "recon_topk", "{:11.1e}"), ("recon exact", "recon_exact", "{:11.1e}"),
    ("max angle", "angle", "{:9.1e}"),
    ("amp σ err", "sigma_err", "{:9.1e}"),
]


FOOTNOTE = """
speedup = exact s / top-k s (target >= 10x at 4096², decaying spectrum); recon = ||C W̃ - W|| / ||W|| in float64;
max angle = principal_angle() (rad, from the sine) between the top-k path's and the exact top-k subspaces;
amp σ err = max_i |σ_i(W̃) - alpha·σ_i(W)| / (alpha·σ_i(W)) over i <= k, for the top-k path's W̃."""


def print_table(rows: list[dict], show_gap: bool) -> None:
    columns = COLUMNS + ([("σk/σk+1", "gap", "{:8.4f}")] if show_gap else [])
    widths = [max(len(h), len(f.format(rows[0][k]))) for h, k, f in columns]
    print("  ".join(h.rjust(w) for (h, _, _), w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(f.format(row[k]).rjust(w) for (_, k, f), w in zip(columns, widths)))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", "--sizes", dest="shapes", default="1024,2048,4096",
                   help="comma-separated N (square) or MxN shapes, or llama8b (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: %(default)s)")
    p.add_argument("--apply", type=int, default=0, metavar="N",
                   help="instead: time SpecDef's apply on N maps drawn from Llama-8B's projections")
    p.add_argument("--scale", type=int, default=1, help="--apply: divide every dimension by this (a CPU smoke run)")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"),
                   help="--apply: the weights' dtype (default: %(default)s)")
    p.add_argument("--k", type=int, default=25, help="singular values to inflate (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=1e4, help="inflation factor (default: %(default)g)")
    p.add_argument("--spectrum", choices=("decay", "flat", "both"), default="decay",
                   help="decay: s_i = i^-decay; flat: Gaussian matrix; both (default: %(default)s)")
    p.add_argument("--decay", type=float, default=0.5, help="exponent of the decaying spectrum (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the timed calls (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=1, help="timed repeats per path; the fastest is kept (default: 1)")
    p.add_argument("--max-iter", type=int, default=300, help="top-k path's iteration cap (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show-gap", action="store_true", help="also print σ_k/σ_k+1 (costs one more SVD per size)")
    return p.parse_args(argv)


def parse_shapes(text: str) -> list[tuple[int, int]]:
    if text == "llama8b":
        return list(dict.fromkeys(LLAMA8B.values()))
    shapes = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m, _, n = part.partition("x")
        shapes.append((int(m), int(n or m)))
    return shapes


def apply_benchmark(args, spectrum: str) -> list[str]:
    """SpecDef's apply on ``args.apply`` Llama-8B-shaped maps, per SVD method: wall time, SVD share, accuracy."""
    from bench.toolkit.layers import count_parameters
    from defenses import specdef
    from defenses.specdef import SpecDef, SpecDefConfig

    draw = torch.Generator().manual_seed(args.seed)
    names = list(LLAMA8B)
    picked = [names[int(i)] for i in torch.randint(0, len(names), (args.apply,), generator=draw)]
    dtype = getattr(torch, args.dtype)
    model = nn.Sequential()
    for i, name in enumerate(picked):
        m, n = (d // args.scale for d in LLAMA8B[name])
        layer = nn.Linear(n, m, bias=False, device="meta")
        layer.weight = nn.Parameter(test_matrix(m, n, spectrum, args.decay, args.seed + i, args.device).to(dtype))
        model.add_module(f"{i}_{name}", layer)
    before = count_parameters(model)
    lines = []
    for method in ("auto", "exact"):
        svd_seconds = []
        original = specdef.top_k_left_singular

        def timed_svd(*a, **kw):
            synchronize()
            start = time.perf_counter()
            out = original(*a, **kw)
            synchronize()
            svd_seconds.append((time.perf_counter() - start, out.method, out.iterations))
            return out

        specdef.top_k_left_singular = timed_svd
        try:
            import copy

            work = copy.deepcopy(model)
            synchronize()
            start = time.perf_counter()
            result = SpecDef().apply(work, None, SpecDefConfig(k=args.k, alpha=args.alpha, svd=method),
                                     generator=torch.Generator().manual_seed(args.seed))
            synchronize()
            wall = time.perf_counter() - start
        finally:
            specdef.top_k_left_singular = original
        info = result.info["per_layer"]
        svd = sum(t for t, _, _ in svd_seconds)
        methods = ",".join(sorted({m for _, m, _ in svd_seconds}))
        iters = max(i for _, _, i in svd_seconds)
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
        lines.append(f"{spectrum:>8}  {method:>5}  {wall:8.2f} s  svd {svd:6.2f} s ({methods}, ≤{iters} iters)  "
                     f"rest {wall - svd:6.2f} s  +{(count_parameters(work) - before) / 1e9:.2f} B params  "
                     f"max recon {max(v['reconstruction_error'] for v in info.values()):.1e}  peak {peak:.1f} GiB")
        del work, result
    return lines


def main(argv=None) -> None:
    args = parse_args(argv)
    spectra = ("decay", "flat") if args.spectrum == "both" else (args.spectrum,)
    if args.apply:
        print(f"SpecDef apply on {args.apply} Llama-8B-shaped maps, {args.dtype} weights, k={args.k}, "
              f"alpha={args.alpha:g}, device {args.device}; torch {torch.__version__}")
        for spectrum in spectra:
            for line in apply_benchmark(args, spectrum):
                print(line, flush=True)
        return
    shapes = parse_shapes(args.shapes)
    print(f"SpecDef maps, k={args.k}, alpha={args.alpha:g}, float32 weights on {args.device}, timed on "
          f"{args.threads} thread(s); torch {torch.__version__}")
    rows = []
    for spectrum in spectra:
        for shape in shapes:
            rows.append(measure(shape, spectrum, args, topk_first=len(rows) % 2 == 0))
            print(f"  done {shape[0]}×{shape[1]} {spectrum}: top-k {rows[-1]['t_topk']:.3f}s ({rows[-1]['method']}), "
                  f"exact {rows[-1]['t_exact']:.3f}s", flush=True)
    print()
    print_table(rows, args.show_gap)
    print(FOOTNOTE)


if __name__ == "__main__":
    main()

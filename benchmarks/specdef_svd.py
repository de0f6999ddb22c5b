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

    python benchmarks/specdef_svd.py                       # 1024, 2048, 4096; 4096 takes a couple of minutes
    python benchmarks/specdef_svd.py --sizes 1024,2048     # quick run
    python benchmarks/specdef_svd.py --spectrum both --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from defenses._spectral import principal_angle, specdef_maps, top_k_left_singular

ALL_THREADS = torch.get_num_threads()  # for the untimed setup and accuracy checks


def test_matrix(n: int, spectrum: str, decay: float, seed: int) -> torch.Tensor:
    """An n × n float32 matrix with a decaying (U diag(s) Vᵀ, s_i = i^-decay) or flat (Gaussian) spectrum."""
    g = torch.Generator().manual_seed(seed)
    if spectrum == "flat":
        return torch.randn(n, n, generator=g) / n**0.5
    u, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=g))
    v, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=g))
    s = torch.arange(1, n + 1, dtype=torch.float64) ** -decay
    return ((u * s) @ v.T).float()


def timed(fn, threads: int, repeats: int):
    """Run ``fn`` ``repeats`` times on ``threads`` threads; return its last result and the fastest time."""
    torch.set_num_threads(threads)
    best = float("inf")
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(ALL_THREADS)
    return out, best


def relative_reconstruction_error(weight: torch.Tensor, inflated: torch.Tensor, compensation: torch.Tensor) -> float:
    w = weight.double()
    return float(torch.linalg.matrix_norm(compensation @ inflated - w) / torch.linalg.matrix_norm(w))


def measure(n: int, spectrum: str, args, topk_first: bool) -> dict:
    weight = test_matrix(n, spectrum, args.decay, args.seed)

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
        "size": f"{n}²",
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
    }


COLUMNS = [  # (header, key, format)
    ("size", "size", "{:>6}"), ("spectrum", "spectrum", "{:>8}"),
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
    p.add_argument("--sizes", default="1024,2048,4096", help="comma-separated square sizes (default: %(default)s)")
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


def main(argv=None) -> None:
    args = parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    spectra = ("decay", "flat") if args.spectrum == "both" else (args.spectrum,)
    print(f"SpecDef apply, k={args.k}, alpha={args.alpha:g}, float32 weights, timed on {args.threads} thread(s); "
          f"torch {torch.__version__}")
    rows = []
    for spectrum in spectra:
        for n in sizes:
            rows.append(measure(n, spectrum, args, topk_first=len(rows) % 2 == 0))
            print(f"  done {n}² {spectrum}: top-k {rows[-1]['t_topk']:.3f}s, exact {rows[-1]['t_exact']:.3f}s",
                  flush=True)
    print()
    print_table(rows, args.show_gap)
    print(FOOTNOTE)


if __name__ == "__main__":
    main()

"""Learning-rate grids: the decades an attack sweep starts from and the half-decade points that refine it.

Tasks declare their attack sweeps with :func:`decades`; the planner refines around a family's best full run with
:func:`refinement`, and the leaderboard recognises those refinement runs when it orders an attacker's trials. The
three import it from here, a core module, so that no plugin or reader has to import the planner.
"""

from __future__ import annotations


def decades(high_exponent: int, low_exponent: int) -> tuple[float, ...]:
    """Learning rates 10^high, 10^(high-1), ..., 10^low."""
    return tuple(float(f"1e{e}") for e in range(high_exponent, low_exponent - 1, -1))


def refinement(lr: float) -> tuple[float, float]:
    """The two half-decade neighbours of ``lr`` (rounded to 3 significant digits for stable run ids)."""
    return tuple(float(f"{lr * 10 ** s:.3g}") for s in (0.5, -0.5))  # type: ignore[return-value]

"""The utility-vs-resistance plot of one task: numbered markers (the page's legend table names each number), labels
moved apart so that none overlaps another label or a marker, and the Pareto front (no other defense both resists
longer and keeps more utility) drawn as a line."""

from __future__ import annotations

import math
from dataclasses import dataclass

from leaderboard.figures import png_bytes, pyplot

# Label positions tried around a point, nearest first (offsets in points): 8 directions at growing distance.
_DIRECTIONS = [(1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)]
_CANDIDATES = [(dx * r, dy * r) for r in (7, 13, 20, 28, 38) for dx, dy in _DIRECTIONS]


@dataclass(frozen=True)
class Point:
    number: int
    """The marker's number in the plot and in the legend table."""
    label: str
    steps: float
    """Worst-case steps-to-harm (x)."""
    censored: bool
    """The steps are a lower bound (not harmed within budget): drawn hollow."""
    utility: float
    """Retained utility (y)."""


def task_points(rows, spec) -> tuple[list[Point], str | None]:
    """One numbered point per row of a task's sorted board rows (worst-case median steps, retained utility of the
    task's primary utility metric) and that metric's name; ([], None) when no row has a utility. Rows broken at
    release (:mod:`leaderboard.release`) are left out: their steps measure repair, not resistance, and would sit on
    the front as if they resisted longest."""
    from leaderboard.groups import utility_metrics
    from leaderboard.render import isnan

    if "broken_at_release" in rows:
        rows = rows[~rows["broken_at_release"].fillna(False).astype(bool)]
    utilities = utility_metrics(rows, spec.primary_utility)
    if not utilities:
        return [], None
    key = next(k for k in (f"retained_mean:{utilities[0]}", f"defended_retained:{utilities[0]}")
               if k in rows and rows[k].notna().any())

    def number(value) -> float:
        return math.nan if isnan(value) else float(value)

    points = [Point(i + 1, str(r["defense_label"]), number(r["worst_median"]),
                    not isnan(r["worst_median_censored"]) and bool(r["worst_median_censored"]), number(r[key]))
              for i, (_, r) in enumerate(rows.iterrows())]
    return points, utilities[0]


def pareto_front(points: list[Point]) -> list[Point]:
    """The points no other point dominates (at least as many steps and as much utility, one of them more)."""
    def dominated(p: Point) -> bool:
        return any(q.steps >= p.steps and q.utility >= p.utility and (q.steps > p.steps or q.utility > p.utility)
                   for q in points)
    return sorted((p for p in points if not dominated(p)), key=lambda p: p.steps)


def pareto_png(points: list[Point], *, title: str, utility: str) -> bytes | None:
    """The plot of ``points`` as PNG bytes; None when there are none."""
    points = [p for p in points if math.isfinite(p.steps) and math.isfinite(p.utility)]
    if not points:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    front = pareto_front(points)
    if len(front) > 1:
        ax.step([p.steps for p in front], [p.utility for p in front], where="pre", color="0.7", linewidth=1,
                zorder=1, label="Pareto front")
    for p in points:
        ax.scatter([p.steps], [p.utility], s=36, zorder=2, facecolors="white" if p.censored else "C0",
                   edgecolors="C0", linewidths=1.2)
    if min(p.steps for p in points) > 0 and max(p.steps for p in points) / min(p.steps for p in points) > 30:
        ax.set_xscale("log")
    ax.margins(x=0.12, y=0.15)
    ax.set_xlabel("worst-case steps-to-harm (hollow: not reached, a lower bound)")
    ax.set_ylabel(f"retained {utility}")
    ax.set_title(title, fontsize=10)
    _place_labels(fig, ax, points)
    if len(front) > 1:
        ax.legend(fontsize=7, loc="lower right", frameon=False)
    return png_bytes(fig)


def _place_labels(fig, ax, points: list[Point]) -> None:
    """Number every marker; points that coincide on screen share one label ("2,5"). Each label takes the nearest
    candidate position that overlaps no placed label and no marker and stays inside the axes; a label pushed
    away from its point gets a thin leader line."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    to_pixels = ax.transData.transform
    clusters: list[tuple[tuple[float, float], list[Point]]] = []
    for p in points:
        xy = tuple(to_pixels((p.steps, p.utility)))
        for centre, members in clusters:
            if math.dist(centre, xy) < 5:
                members.append(p)
                break
        else:
            clusters.append((xy, [p]))
    from matplotlib.transforms import Bbox

    markers = [Bbox.from_bounds(x - 5, y - 5, 10, 10) for (x, y), _ in clusters]
    frame = ax.get_window_extent(renderer)
    placed: list = []
    for _, members in clusters:
        anchor = (members[0].steps, members[0].utility)
        text = ",".join(str(p.number) for p in members)
        label = ax.annotate(text, anchor, xytext=_CANDIDATES[0], textcoords="offset points", fontsize=8,
                            ha="center", va="center", zorder=3)
        chosen = _CANDIDATES[0]
        for offset in _CANDIDATES:
            label.set_position(offset)
            box = label.get_window_extent(renderer).padded(1)
            inside = frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
            if inside and not any(box.overlaps(b) for b in placed + markers):
                chosen = offset
                break
        label.set_position(chosen)
        placed.append(label.get_window_extent(renderer).padded(1))
        if math.hypot(*chosen) > 10:
            ax.annotate("", anchor, xytext=chosen, textcoords="offset points", zorder=1,
                        arrowprops={"arrowstyle": "-", "color": "0.5", "linewidth": 0.6, "shrinkA": 5, "shrinkB": 3})

"""The figures of the Markdown leaderboard (``bench leaderboard --format md --out FILE``): per task, the same
utility-vs-resistance, harm-curve and attacker-cost plots as the site, written as PNG files into a folder beside
``FILE`` and linked under that task's table, so a committed ``docs/leaderboard.md`` renders with its figures."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from leaderboard.aggregate import Aggregates
from leaderboard.figures import COST_CAPTION, FOREST_CAPTION, HARM_CAPTION, PARETO_CAPTION, cost_curve, harm_curves
from leaderboard.forest import forest_png
from leaderboard.groups import task_groups
from leaderboard.html import slug
from leaderboard.pareto import pareto_png, task_points
from leaderboard.render import md_cell, sort_rows
from leaderboard.schema import Schema


def figures_folder(markdown_file: str | Path) -> Path:
    """Where the figures of ``markdown_file`` go: ``docs/leaderboard.md`` → ``docs/leaderboard-figures/``."""
    path = Path(markdown_file)
    return path.with_name(f"{path.stem}-figures")


def write_figures(data: Aggregates, schema: Schema, markdown_file: str | Path) -> dict[str, str]:
    """Write every task's figures into :func:`figures_folder`; return, per task title, the Markdown that shows them
    (image links relative to ``markdown_file``). Stale PNGs from an earlier call are removed."""
    folder = figures_folder(markdown_file)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    out: dict[str, str] = {}
    for title, task, group in task_groups(data.board):
        spec = schema.table_for(task)
        stem = slug(title, "task")
        parts = []
        for plot in spec.plots:
            if plot == "forest":
                parts.append(_image(folder, f"{stem}-forest.png", forest_png(group, title), FOREST_CAPTION))
            elif plot == "pareto":
                points, utility = task_points(sort_rows(group, spec), spec)
                png = pareto_png(points, title=f"{title}: utility vs. resistance", utility=utility) if points else None
                legend = "; ".join(f"{p.number} = {md_cell(p.label)}" for p in points)
                parts.append(_image(folder, f"{stem}-pareto.png", png, f"{PARETO_CAPTION} Markers: {legend}."))
            elif plot == "harm_curves":
                parts.append(_image(folder, f"{stem}-harm.png", harm_curves(data, group, title), HARM_CAPTION))
            elif plot == "cost_curve":
                parts.append(_image(folder, f"{stem}-cost.png", cost_curve(data, group, title), COST_CAPTION))
        shown = [p for p in parts if p]
        if shown:
            out[title] = "\n\n".join(shown)
    return out


def _image(folder: Path, name: str, png: bytes | None, caption: str) -> str:
    if png is None:
        return ""
    (folder / name).write_bytes(png)
    alt = caption.split(":")[0]
    return f"![{alt}]({quote(folder.name)}/{quote(name)})\n\n{caption}"

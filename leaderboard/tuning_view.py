"""The defender-tuning records (``bench tune``, ``<results>/tuning/``) on the leaderboard (issue 21, items 1 and 2).

Per task (task, tier, model): the budget-curve figure (:func:`leaderboard.budgets.budget_figure`) with a table of
its points and, per defense, the best budget within the cost cap (:func:`bench.run.tuning_record.best_budget`);
and a table of the knob tunings (``mode != "budget"``): candidates, the selected config and how it compares with
the candidate that is the defense's default config. Per defense: one line per tuning ("tuned on vision-digits, 6
candidates, validation seeds 100,101 …"). Rows are plain text, built once here and rendered both as Markdown
(:func:`markdown_sections`) and by the site's Jinja2 templates (:func:`site_task`, :func:`defense_lines`), which
escape them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from bench.run.tuning_record import COST_CAP
from leaderboard.formats import isnan

CAP_NOTE = (f"Best budget within the cost cap: {COST_CAP:g}× today's defender training length (no cap is "
            "declared per task; the leaderboard's cap is bench/run/tuning_record.py COST_CAP, which budget "
            "presets are chosen within too).")
TUNING_CAPTION = ("Defender tuning on a validation suite (other seeds than the reported ones): the candidates "
                  "searched, the config the rule selected, and that config against the candidate that is the "
                  "defense's default config (when one was searched).")
BUDGET_HEADERS = ("Defense", "Budget", "Defender passes", "Validation bounded worst case", "Worst case", "vs none",
                  "Retained at release", "Usable")
TUNING_HEADERS = ("Defense", "Candidates (usable)", "Selected config", "Validation seeds", "Selected vs default")

Key = tuple[str, str, str | None]
"""(task, tier, model) of a tuning record; model None: the task's default model."""


@dataclass(frozen=True)
class Tunings:
    """The latest budget curve and knob tuning per (defense, task, tier) recorded under a results folder."""

    budgets: pd.DataFrame
    searches: pd.DataFrame

    @property
    def empty(self) -> bool:
        return self.budgets.empty and self.searches.empty

    def keys(self) -> list[Key]:
        """Every (task, tier, model) with a record, sorted."""
        found = {_key(row) for frame in (self.budgets, self.searches) for row in frame.to_dict("records")}
        return sorted(found, key=lambda k: (k[0], k[1], k[2] or ""))

    def budgets_of(self, key: Key) -> pd.DataFrame:
        return _of(self.budgets, key)

    def searches_of(self, key: Key) -> pd.DataFrame:
        return _of(self.searches, key)


def load(results_dir: str | Path) -> Tunings:
    """The tuning records under ``results_dir`` (empty frames when it has none)."""
    from bench.run.tuning_record import read_tunings
    from leaderboard.budgets import budget_points

    searches = read_tunings(results_dir)
    if not searches.empty:
        searches = searches[searches["mode"] != "budget"]
        latest = searches.sort_values("created_at").groupby(["defense", "task", "tier"])["tune_id"].last()
        searches = searches[searches["tune_id"].isin(set(latest))].reset_index(drop=True)
    return Tunings(budget_points(results_dir), searches)


def _key(row: dict[str, Any]) -> Key:
    model = row.get("model")
    return str(row["task"]), str(row["tier"]), None if isnan(model) else str(model)


def _of(frame: pd.DataFrame, key: Key) -> pd.DataFrame:
    if frame.empty:
        return frame
    return frame[[_key(row) == key for row in frame.to_dict("records")]]


def title_of(key: Key) -> str:
    """A record's task title in :func:`leaderboard.groups.task_groups`' form."""
    task, tier, model = key
    return f"{task} ({tier}{', ' + model if model else ''})"


def board_titles(tunings: Tunings, groups: Iterable[tuple[str, str, pd.DataFrame]]) -> dict[Key, str | None]:
    """Each record's board group title: the group of its task, tier and model (the plain one before a variant
    with other task settings or another attack suite); None when the board has no such group."""
    matches: dict[Key, list[str]] = {key: [] for key in tunings.keys()}
    for title, _, group in groups:
        key = _key(group.iloc[0].to_dict())
        if key in matches:
            matches[key].append(title)
    titles: dict[Key, str | None] = {}
    for key, found in matches.items():
        plain = [t for t in found if " · " not in t]
        titles[key] = (plain or found)[0] if found else None
    return titles


def steps_text(score: float, *, bounded: bool = False) -> str:
    """A tuning score (:func:`bench.run.tuning_record._key`) as text: ``> N`` when censored at N steps."""
    if isnan(score):
        return "—"
    if math.isinf(score):
        return "no run within the bound" if bounded else "not harmed"
    return f"> {int(score)}" if score != int(score) else str(int(score))


def _worst(row: pd.Series) -> str:
    text = steps_text(row["worst_score"])
    low, high = row.get("worst_steps_low"), row.get("worst_steps_high")
    if not isnan(low) and not isnan(high) and low != high:
        text += f" [{low:.0f}–{high:.0f}]"
    return text


def _fraction(value: Any) -> str:
    return "—" if isnan(value) else f"{float(value):.3f}"


def bound_note(frame: pd.DataFrame) -> str:
    """What the tables' bounded worst case counts, from the records' utility limits."""
    limits = sorted({int(v) for v in frame.get("utility_limit", pd.Series(dtype=float)).dropna()})
    if not limits:
        return ""
    shown = "/".join(f"{100 - v}%" for v in limits)
    return (f" Bounded worst case: over the validation attack runs that kept ≥ {shown} of the primary utility "
            "(lower median over seeds; '> N': not harmed within N steps); worst case: over every run, [range over "
            "seeds]; vs none: ratio to the undefended model on the same suite.")


def budget_rows(points: pd.DataFrame) -> pd.DataFrame:
    """One text row per budget point (defense, then factor), in :data:`BUDGET_HEADERS` order."""
    rows = []
    for _, row in points.sort_values(["defense", "budget_factor"]).iterrows():
        rows.append({
            "Defense": str(row["defense"]), "Budget": f"{row['budget_factor']:g}×",
            "Defender passes": "—" if isnan(row["fb_passes"]) else f"{row['fb_passes']:,.0f}",
            "Validation bounded worst case": steps_text(row["bounded_score"], bounded=True),
            "Worst case": _worst(row), "vs none": "—" if isnan(row["ratio"]) else f"{row['ratio']:.2f}×",
            "Retained at release": _fraction(row["retained_release"]),
            "Usable": "yes" if bool(row["usable_at_release"]) else "no"})
    return pd.DataFrame(rows, columns=list(BUDGET_HEADERS))


def best_lines(points: pd.DataFrame, cost_cap: float = COST_CAP) -> list[tuple[str, str]]:
    """(defense, text) per defense of ``points``: the budget point a leaderboard row would use within ``cost_cap``."""
    from bench.run.tuning_record import best_budget

    out = []
    for defense, curve in points.groupby("defense", sort=True):
        best = best_budget(curve, cost_cap)
        if best is None:
            text = f"no usable point within {cost_cap:g}×"
        else:
            text = (f"{best['budget_factor']:g}× ({best['fb_passes']:,.0f} passes; validation worst case "
                    f"{steps_text(best['worst_score'])}, retained {_fraction(best['retained_release'])})")
        out.append((str(defense), text))
    return out


def _args_text(args: str) -> str:
    parsed = json.loads(args) if isinstance(args, str) and args else {}
    return ", ".join(f"{k}={v}" for k, v in parsed.items()) or "the defaults"


def _default_hash(defense: str) -> str | None:
    """The defense hash of ``defense``'s default config today (None when it no longer resolves)."""
    from bench.core.spec import resolve_plugin
    from bench.errors import BenchError
    from bench.registry import DEFENSES

    try:
        return str(resolve_plugin(DEFENSES, defense, {})[0].hash())
    except BenchError:
        return None


def _versus(selected: pd.Series, default: pd.Series | None) -> str:
    limit = selected.get("utility_limit")
    bound = f"bounded{int(limit)}" if not isnan(limit) else "bounded"
    if default is None:
        return (f"worst case {steps_text(selected['worst_score'])}; {bound} "
                f"{steps_text(selected['bounded_score'], bounded=True)}; no candidate is the default config")
    if default["candidate"] == selected["candidate"]:
        return f"the default config is selected (worst case {steps_text(selected['worst_score'])})"
    return (f"worst case {steps_text(selected['worst_score'])} vs {steps_text(default['worst_score'])}; {bound} "
            f"{steps_text(selected['bounded_score'], bounded=True)} vs "
            f"{steps_text(default['bounded_score'], bounded=True)}; retained {_fraction(selected['retained_release'])}"
            f" vs {_fraction(default['retained_release'])}")


def tuning_rows(searches: pd.DataFrame) -> pd.DataFrame:
    """One text row per knob tuning (per defense), in :data:`TUNING_HEADERS` order."""
    rows = []
    for (defense, _), record in searches.groupby(["defense", "tune_id"], sort=True):
        home = _default_hash(str(defense))
        defaults = record[record["defense_hash"] == home] if home else record.iloc[:0]
        default = defaults.iloc[0] if len(defaults) else None
        picked = record[record["selected"].astype(bool)]
        selected = picked.iloc[0] if len(picked) else None
        rows.append({
            "Defense": str(defense), "Candidates (usable)": f"{len(record)} ({int(record['usable_at_release'].sum())})",
            "Selected config": _args_text(selected["args"]) if selected is not None else "none: no candidate usable",
            "Validation seeds": str(record["validation_seeds"].iloc[0]),
            "Selected vs default": _versus(selected, default) if selected is not None else "—"})
    return pd.DataFrame(rows, columns=list(TUNING_HEADERS))


def rules(searches: pd.DataFrame) -> list[str]:
    """The distinct selection rules of ``searches`` (normally one)."""
    return sorted(set(map(str, searches["rule"]))) if not searches.empty else []


def figure_name(title: str) -> str:
    """The budget figure's file name for a task title, in the scheme of the other figures (``<stem>-budgets.png``)."""
    from leaderboard.html import slug

    return f"{slug(title, 'task')}-budgets.png"


def budget_png(points: pd.DataFrame, task: str) -> bytes | None:
    from leaderboard.budgets import budget_figure
    from leaderboard.figures import png_bytes

    fig = budget_figure(points, task) if not points.empty else None
    return png_bytes(fig) if fig is not None else None


def _md_table(frame: pd.DataFrame) -> list[str]:
    from leaderboard.render import md_cell

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "|".join("---" for _ in frame.columns) + "|"]
    lines += ["| " + " | ".join(md_cell(str(v)) for v in row) + " |" for row in frame.itertuples(index=False)]
    return lines


def task_markdown(tunings: Tunings, key: Key, image: str | None) -> str:
    """The Markdown of one task's records; ``image``: the budget figure's link (None: no figure written)."""
    from leaderboard.budgets import BUDGET_CAPTION
    from leaderboard.render import md_cell

    parts: list[str] = []
    points = tunings.budgets_of(key)
    if not points.empty:
        parts.append(f"#### Defender budget curves: {md_cell(title_of(key))}\n")
        if image:
            parts.append(f"![Defender budget curves]({image})\n")
        parts.append(f"{BUDGET_CAPTION}. {CAP_NOTE}{bound_note(points)}\n")
        parts += [*_md_table(budget_rows(points)), ""]
        parts.append("; ".join(f"**{md_cell(d)}**: {md_cell(t)}" for d, t in best_lines(points)) + "\n")
    searches = tunings.searches_of(key)
    if not searches.empty:
        parts.append(f"#### Defender tuning: {md_cell(title_of(key))}\n")
        parts.append(TUNING_CAPTION + "\n")
        parts += [*_md_table(tuning_rows(searches)), ""]
        parts += [f"Rule: {md_cell(rule)}.\n" for rule in rules(searches)]
    return "\n".join(parts).rstrip("\n")


def markdown_sections(tunings: Tunings, groups: Iterable[tuple[str, str, pd.DataFrame]],
                      markdown_file: str | Path | None) -> tuple[dict[str, str], list[str]]:
    """Per board title, the Markdown of its task's records; and the sections of records whose task has no board
    group. With ``markdown_file``, the budget figures are written into its figures folder
    (:func:`leaderboard.md_figures.figures_folder`, beside the other figures; call after those are written)."""
    from leaderboard.md_figures import figures_folder

    by_title: dict[str, str] = {}
    orphans: list[str] = []
    for key, title in board_titles(tunings, groups).items():
        image = None
        points = tunings.budgets_of(key)
        if markdown_file is not None and not points.empty:
            png = budget_png(points, key[0])
            if png is not None:
                folder = figures_folder(markdown_file)
                folder.mkdir(parents=True, exist_ok=True)
                name = figure_name(title or title_of(key))
                (folder / name).write_bytes(png)
                image = f"{quote(folder.name)}/{quote(name)}"
        text = task_markdown(tunings, key, image)
        if title is None:
            orphans.append(f"### {title_of(key)}: defender tuning only (no leaderboard runs)\n\n{text}\n")
        else:
            by_title[title] = text
    return by_title, orphans


def site_task(tunings: Tunings, key: Key, title: str, img_dir: Path,
              table_view: Callable[[str, pd.DataFrame], Any]) -> dict[str, Any] | None:
    """What a task page shows of ``key``'s records (None: none); writes the budget figure into ``img_dir``.
    ``table_view(id, frame)`` makes a sortable table of a text frame (:func:`leaderboard.html.table`)."""
    from leaderboard.budgets import BUDGET_CAPTION

    points, searches = tunings.budgets_of(key), tunings.searches_of(key)
    if points.empty and searches.empty:
        return None
    figure = None
    png = budget_png(points, key[0])
    if png is not None:
        figure = figure_name(title)
        (img_dir / figure).write_bytes(png)
    return {"figure": figure, "caption": f"{BUDGET_CAPTION}. {CAP_NOTE}{bound_note(points)}",
            "budgets": table_view("budgets", budget_rows(points)) if not points.empty else None,
            "best": best_lines(points) if not points.empty else [],
            "tuning_caption": TUNING_CAPTION,
            "searches": table_view("tuning", tuning_rows(searches)) if not searches.empty else None,
            "rules": rules(searches)}


def _base(label: str) -> str:
    return str(label).split("(", 1)[0]


def defense_lines(tunings: Tunings, label: str) -> list[str]:
    """The defense page's lines about ``label``'s tunings and budget curves: those of its own name and of what it
    was tuned from, as its preset record says (:func:`bench.core.tuning_presets.tuned_chain`:
    ``tar.my-best`` written from ``tar.sophon``; ``ga-retain.tuned-vision-digits-budget`` from
    ``ga-retain.tuned-vision-digits``, itself from ``ga-retain``)."""
    from bench.core.tuning_presets import tuned_chain

    chain = set(tuned_chain(_base(label)))

    def mine(defense: str) -> bool:
        return defense in chain

    lines = []
    for _, record in (tunings.searches.groupby("tune_id", sort=False) if not tunings.searches.empty else []):
        first = record.iloc[0]
        if not mine(str(first["defense"])):
            continue
        picked = record[record["selected"].astype(bool)]
        choice = (f"selected {_args_text(picked.iloc[0]['args'])} (validation worst case "
                  f"{steps_text(picked.iloc[0]['worst_score'])})") if len(picked) else "no candidate usable at release"
        lines.append(f"{first['defense']} tuned on {title_of(_key(first.to_dict()))}, {len(record)} candidates "
                     f"({int(record['usable_at_release'].sum())} usable at release), validation seeds "
                     f"{first['validation_seeds']}; {choice}")
    budgets = tunings.budgets
    for defense, curve in (budgets.groupby("defense", sort=True) if not budgets.empty else []):
        if not mine(str(defense)):
            continue
        for key in sorted({_key(r) for r in curve.to_dict("records")}, key=lambda k: (k[0], k[1], k[2] or "")):
            points = _of(curve, key)
            factors = ", ".join(f"{f:g}×" for f in sorted(points["budget_factor"]))
            text = dict(best_lines(points)).get(str(defense), "")
            lines.append(f"{defense} budget curve on {title_of(key)} ({factors}); best within the {COST_CAP:g}× "
                         f"cost cap: {text}")
    return lines

"""Tuned presets: a tuning's selected config, committed as a named preset of its defense with the command that
reproduces it.

``bench tune ... --write-preset`` writes ``defenses/tuned/<defense>.yaml`` (one file per defense, so concurrent
tunings of different defenses never touch the same file)::

    tuned-vision-digits:                 # the preset: `--defense ga-retain.tuned-vision-digits`
      args: {alpha: 2.0, lr: null}
      task: vision-digits                # what it was tuned on: a preset is a label, its values apply anywhere
      tier: tiny
      command: bench tune --defense ga-retain --task vision-digits --seeds 100,101 ...
      tuning: 3f2a...                    # the tune_id of the record under <results>/tuning/
      selected_from: 3 candidates (validation seeds 100,101; rule ...)
      tuned_from: ga-retain              # the defense label the tuning started from (what the preset answers to)

A preset written from a budget curve (``bench tune --budgets ... --write-preset``) also records ``budget_factor``
(the factor of today's training length it trains at) and ``fb_passes`` (its defender forward-backward passes on the
task it was measured on); its args include ``steps``.

``tuned_from`` is what the claims ledger and the leaderboard read back (:func:`tuned_base`): a preset named
``my-best`` of ``tar.sophon`` answers to Sophon's claim. Files written before it was recorded fall back to the
name rule (:func:`tuned_from`, the inverse of :func:`default_preset_name`).

The registry merges these with the class's own ``presets`` (class presets win on a name clash), so a tuned preset
works wherever ``name.preset`` does; its values are checked like any config (unknown keys are errors).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from bench.errors import ConfigError

PRESET_KEYS = ("args", "task", "tier", "command", "tuning", "selected_from", "tuned_from", "budget_factor",
               "fb_passes")

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader where PyYAML has it (the same documents, parsed ~10x faster): every resolved spec reads its
defense's file again (a sweep's plan resolves thousands), so the file is never stale and no cache is kept."""


def tuned_dir() -> Path:
    """Where tuned presets live: ``$BENCH_TUNED_PRESETS`` when set (tests), else the checkout's defenses/tuned/."""
    override = os.environ.get("BENCH_TUNED_PRESETS")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "defenses" / "tuned"


def preset_file(defense: str) -> Path:
    return tuned_dir() / f"{defense}.yaml"


def load_tuned(defense: str) -> dict[str, dict[str, Any]]:
    """The tuned presets of ``defense`` (name → record); {} when none were written."""
    path = preset_file(defense)
    if not path.is_file():
        return {}
    try:
        data = yaml.load(path.read_text(), Loader=_LOADER) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict) or not all(isinstance(v, dict) and isinstance(v.get("args", {}), dict)
                                             for v in data.values()):
        raise ConfigError(f"{path}: expected `preset-name: {{args: {{...}}, command: ...}}` entries")
    for name, record in data.items():
        unknown = sorted(set(record) - set(PRESET_KEYS))
        if unknown:
            raise ConfigError(f"{path}: preset {name!r} has unknown keys {unknown}; "
                              f"valid keys: {', '.join(PRESET_KEYS)}")
    return data


def tuned_preset_args(defense: str) -> dict[str, dict[str, Any]]:
    """Preset name → config values, as the registry layers them."""
    return {name: dict(record.get("args") or {}) for name, record in load_tuned(defense).items()}


def default_preset_name(defense: str, task: str) -> str:
    """The name ``--write-preset`` gives a tuning's selection: ``tuned-<task>``, or ``<preset>-tuned-<task>`` when the
    tuning varied a preset (``tar.sophon`` → ``tar.sophon-tuned-vision-digits``), so tuning a method and a preset of
    it on one task writes two presets, not one over the other."""
    preset = defense.partition(".")[2]
    return f"{preset}-tuned-{task}" if preset else f"tuned-{task}"


def tuned_from(defense: str) -> str:
    """The inverse of :func:`default_preset_name` on a defense label: what a default-named tuned preset tuned
    (``tar.sophon-tuned-vision-digits`` → ``tar.sophon``, ``ga-retain.tuned-vision-digits`` → ``ga-retain``); any
    other label unchanged."""
    name, dot, preset = defense.partition(".")
    if not dot:
        return defense
    if preset.startswith("tuned-"):
        return name
    base, marker, _ = preset.partition("-tuned-")
    return f"{name}.{base}" if marker and base else defense


def default_budget_preset_name(defense: str, task: str) -> str:
    """The name ``--write-preset`` gives a budget curve's selection: the name names its task once. No preset:
    ``budget-<task>`` (``tar`` → ``tar.budget-vision-digits``); a preset whose name already ends with the task (a
    tuned preset): ``<preset>-budget`` (``ga-retain.tuned-vision-digits`` → ``ga-retain.tuned-vision-digits-budget``);
    any other preset: ``<preset>-budget-<task>`` (``tar.sophon`` → ``tar.sophon-budget-vision-digits``). A budget
    preset always records ``tuned_from``, so nothing reads its name back."""
    preset = defense.partition(".")[2]
    if not preset:
        return f"budget-{task}"
    return f"{preset}-budget" if preset.endswith(f"-{task}") else f"{preset}-budget-{task}"


def preset_record(label: str) -> dict[str, Any] | None:
    """The tuned-preset record of ``name.preset`` (None: no such tuned preset, or not a preset label)."""
    name, dot, preset = label.partition(".")
    if not dot or not re.fullmatch(r"[\w-]+", name):  # a label that is no registry name has no preset file
        return None
    return load_tuned(name).get(preset)


def tuned_chain(label: str) -> list[str]:
    """``label`` (a defense name or ``name.preset``, no ``(config)``) then, for a tuned preset, what it was tuned
    from, and so on: ``ga-retain.tuned-vision-digits-budget`` → ``[that, ga-retain.tuned-vision-digits,
    ga-retain]``. Each step reads the preset record's ``tuned_from``, or the name rule (:func:`tuned_from`) for a
    record written before it was recorded (and for a label without a record, e.g. a class preset)."""
    chain = [label]
    while True:
        if "." not in chain[-1]:
            return chain
        record = preset_record(chain[-1]) or {}
        parent = str(record.get("tuned_from") or tuned_from(chain[-1]))
        if parent in chain:  # no record (the name rule returned the label itself), or a cycle written by hand
            return chain
        chain.append(parent)


def tuned_base(label: str) -> str:
    """What a tuned preset tuned, followed to the end (:func:`tuned_chain`): ``tar.my-best`` written from
    ``tar.sophon`` → ``tar.sophon``; any other label unchanged."""
    return tuned_chain(label)[-1]


def write_preset(defense: str, name: str, args: Mapping[str, Any], *, task: str, tier: str, command: str,
                 tune_id: str, selected_from: str, tuned_from: str, budget_factor: float | None = None,
                 fb_passes: float | None = None) -> Path:
    """Add (or replace) preset ``name`` of ``defense``; returns the file written. ``tuned_from``: the defense label
    the tuning started from; ``budget_factor``/``fb_passes``: the budget a budget curve's selection trains at."""
    if not name or "." in name or "+" in name:
        raise ConfigError(f"preset name must be non-empty without '.' or '+', got {name!r}")
    if tuned_from.partition(".")[0] != defense:
        raise ConfigError(f"preset {defense}.{name}: tuned_from {tuned_from!r} is not a label of {defense!r}")
    records = load_tuned(defense)
    record: dict[str, Any] = {"args": json.loads(json.dumps(dict(args), default=str)), "task": task, "tier": tier,
                              "command": command, "tuning": tune_id, "selected_from": selected_from,
                              "tuned_from": tuned_from}
    if budget_factor is not None:
        record["budget_factor"] = float(budget_factor)
    if fb_passes is not None:
        record["fb_passes"] = int(round(fb_passes))
    records[name] = record
    path = preset_file(defense)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text("# Written by `bench tune --write-preset` (bench/core/tuning_presets.py); rerun its command to "
                   "reproduce.\n" + yaml.safe_dump(records, sort_keys=True, allow_unicode=True))
    os.replace(tmp, path)
    return path

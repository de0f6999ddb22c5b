"""The code of a submission: ``bench submit`` ties the runs it copies to the code that made them.

:func:`code_of` reads the code fingerprint of every run of a results folder (:mod:`bench.run.fingerprint`) and checks:

* every run has one, and they agree: one harness version, one version of each library, one source per plugin;
* no plugin replaced another with ``override=True`` (a submission cannot show other code under a taken name);
* each built-in plugin the runs used is this checkout's (the same source hash), and each other plugin's source, as
  loaded here (``--plugin FILE`` or its installed package), is the one the runs recorded: that source is what the
  submission carries (:func:`copy_code`, hash-checked again after the copy);
* every task is one of the harness's, unless ``new_task`` (``--new-task``): then the task's source is carried too;
* the runs use the official settings of their task (its config's defaults, the same on the tiny and real tiers),
  unless ``custom_task_settings`` (``--custom-task-settings``): then the differences are recorded in the
  submission's ``code/manifest.json`` (``custom_task_settings``), beside ``new_tasks``.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.core.spec import RunSpec
from bench.errors import BenchError, DataError
from bench.run.fingerprint import plugin_files, plugin_version, source_hash
from bench.run.results import read_run_json, run_directories

CODE = "code"
"""The folder of a submission holding its plugins' sources and ``manifest.json``."""


@dataclass(frozen=True)
class PluginSource:
    """A plugin's source files, as its code fingerprint hashes them."""

    kind: str
    name: str
    hash: str
    target: str
    """``module:Qualname`` of its class (part of the hash)."""
    root: Path
    files: tuple[Path, ...]


@dataclass
class CodeCheck:
    problems: list[str] = field(default_factory=list)
    sources: list[PluginSource] = field(default_factory=list)
    harness: str | None = None
    new_tasks: list[str] = field(default_factory=list)
    custom_task_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per task label: each setting that differs from the official one, ``{"value": ..., "official": ...}``."""


def code_of(folder: str | Path, *, new_task: bool = False, custom_task_settings: bool = False) -> CodeCheck:
    """Check the code of the runs under ``folder`` (see the module docstring); unreadable runs are left to
    :func:`bench.apps.submit.check_submission`, which reports them."""
    from bench.registry import TASKS

    check = CodeCheck()
    fingerprints: dict[str, Mapping[str, Any]] = {}
    specs: dict[str, RunSpec] = {}
    unrecorded: list[str] = []
    for directory in run_directories(Path(folder)):
        try:
            info = read_run_json(directory)
            specs[str(info.get("run_id", directory.name))] = RunSpec.from_json(info["spec"])
        except (BenchError, KeyError, TypeError, ValueError):
            continue
        run_id = str(info.get("run_id", directory.name))
        if isinstance(info.get("fingerprint"), Mapping):
            fingerprints[run_id] = info["fingerprint"]
        else:
            unrecorded.append(run_id)
    if unrecorded:
        check.problems.append(f"{len(unrecorded)} run(s): no code fingerprint in run.json (made by an older bench): "
                              f"rerun them with this bench: {_ids(unrecorded)}")
    check.problems += _disagreements("harness version", {r: fp.get("harness") for r, fp in fingerprints.items()})
    harnesses = {fp.get("harness") for fp in fingerprints.values()}
    check.harness = harnesses.pop() if len(harnesses) == 1 else None
    libraries = sorted({name for fp in fingerprints.values() for name in (fp.get("libraries") or {})})
    for name in libraries:
        check.problems += _disagreements(f"{name} version",
                                         {r: (fp.get("libraries") or {}).get(name) for r, fp in fingerprints.items()})
    plugins: dict[tuple[str, str], dict[str, Mapping[str, Any]]] = defaultdict(dict)
    for run_id, fp in fingerprints.items():
        for plugin in fp.get("plugins") or []:
            plugins[(plugin.get("kind"), plugin.get("name"))][run_id] = plugin
    for (kind, name), entries in sorted(plugins.items()):
        _check_plugin(check, kind, name, entries, new_task=new_task)
    for spec in specs.values():
        if spec.task.name not in TASKS or not TASKS.plugin_info(spec.task.name)["builtin"]:
            continue
        diff = official_difference(spec)
        if diff:
            check.custom_task_settings.setdefault(f"{spec.task.name} ({spec.tier})", {}).update(diff)
    if check.custom_task_settings and not custom_task_settings:
        for where, diff in check.custom_task_settings.items():
            shown = ", ".join(f"{k}={v['value']!r} (official {v['official']!r})" for k, v in sorted(diff.items()))
            check.problems.append(f"{where}: the runs use task settings other than the official ones: {shown}; the "
                                  "leaderboard compares runs on the official settings: rerun without task overrides, "
                                  "or pass --custom-task-settings to submit them marked as such")
    return check


def _check_plugin(check: CodeCheck, kind: str, name: str, entries: Mapping[str, Mapping[str, Any]], *,
                  new_task: bool) -> None:
    from bench.registry import REGISTRIES

    problems = _disagreements(f"source of {kind} {name!r}", {r: e.get("hash") for r, e in entries.items()})
    if problems:
        check.problems += problems
        return
    recorded = next(iter(entries.values()))
    if any(e.get("overrides") for e in entries.values()):
        check.problems.append(f"{kind} {name!r} replaced {recorded.get('overrides')} (override=True) in the runs: a "
                              "submission cannot show other code under a taken name; register it under a name of its "
                              "own and rerun")
        return
    registry = REGISTRIES.get(f"{kind}s")
    if registry is None:
        check.problems.append(f"the runs record a plugin of unknown kind {kind!r} ({name!r})")
        return
    try:
        cls: type = registry.get(name)
    except (BenchError, AttributeError) as err:
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        check.problems.append(f"{kind} {name!r} cannot be loaded here ({why}): pass its plugin file with --plugin FILE")
        return
    info = registry.plugin_info(name)
    now = plugin_version(cls)
    if info["overrides"]:
        check.problems.append(f"{kind} {name!r} is loaded here as an override of {info['overrides']}: submit the runs "
                              "of a plugin registered under its own name")
    elif info["builtin"]:
        if now != recorded.get("hash"):
            check.problems.append(f"built-in {kind} {name!r}: the runs recorded other code ({recorded.get('hash')}) "
                                  f"than this checkout's ({now}): they were made with a modified copy or another "
                                  "harness version; rerun them with this checkout")
    elif kind == "task" and not new_task:
        check.problems.append(f"task {name!r} is not in the harness (it comes from {info['origin']}): a submission on "
                              "a new task needs --new-task, and carries the task's source")
    elif now is None:
        check.problems.append(f"{kind} {name!r} ({info['origin']}) has no source file to submit")
    elif now != recorded.get("hash"):
        check.problems.append(f"{kind} {name!r}: its source here ({info['origin']}, {now}) is not the code the runs "
                              f"recorded ({recorded.get('hash')}): pass the plugin file the runs were made with")
    else:
        found = plugin_files(cls)
        assert found is not None  # it has a version (now), so it has its source files
        root, files = found
        check.sources.append(PluginSource(kind, name, now, f"{cls.__module__}:{cls.__qualname__}", root, tuple(files)))
        if kind == "task":
            check.new_tasks.append(name)


def official_difference(spec: RunSpec) -> dict[str, dict[str, Any]]:
    """The task settings of ``spec`` that differ from its task's official ones (its config's defaults)."""
    from bench.core.spec import resolve_plugin
    from bench.registry import TASKS

    official = resolve_plugin(TASKS, spec.task.name, {})[0].kwargs
    used = spec.task.kwargs
    return {key: {"value": used.get(key), "official": official.get(key)}
            for key in sorted(set(used) | set(official)) if used.get(key) != official.get(key)}


def copy_code(check: CodeCheck, into: Path) -> None:
    """Copy the plugin sources of ``check`` into ``into/code/<kind>-<name>/`` and write ``code/manifest.json``;
    each copy is hashed again and must give the hash the runs recorded (a file edited meanwhile is an error)."""
    plugins = []
    for source in check.sources:
        folder = into / CODE / f"{source.kind}-{source.name}"
        copied = []
        for file in source.files:
            target = folder / file.relative_to(source.root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
            copied.append(target)
        digest = source_hash(source.target, copied, folder)
        if digest != source.hash:
            raise DataError(f"{source.kind} {source.name!r}: its files changed while they were copied (hash {digest}, "
                            f"the runs recorded {source.hash}); nothing submitted")
        plugins.append({"kind": source.kind, "name": source.name, "hash": source.hash, "target": source.target,
                        "files": [p.relative_to(folder).as_posix() for p in copied]})
    manifest = {"harness": check.harness, "plugins": plugins, "new_tasks": check.new_tasks,
                "custom_task_settings": check.custom_task_settings}
    (into / CODE).mkdir(parents=True, exist_ok=True)
    (into / CODE / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))


def _disagreements(what: str, values: Mapping[str, Any]) -> list[str]:
    groups: dict[str, list[str]] = defaultdict(list)
    for run_id, value in values.items():
        groups[str(value)].append(run_id)
    if len(groups) <= 1:
        return []
    shown = "; ".join(f"{value}: {len(ids)} run(s), e.g. {ids[0]}"
                      for value, ids in sorted(groups.items(), key=lambda kv: -len(kv[1])))
    return [f"the runs disagree on the {what} ({shown}): a submission is one version of the code; rerun the others "
            "with it"]


def _ids(ids: list[str], shown: int = 3) -> str:
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return ", ".join(ids[:shown]) + more

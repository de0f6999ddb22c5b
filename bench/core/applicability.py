"""Which defenses and attacks apply to which tasks: a plugin's declared ``settings`` against a task's ``setting``.

Some methods belong to one modality: RMU steers a language model's hidden states, IMMA immunises a diffusion
model's cross-attention, a linear probe retrains a classifier's head. A plugin declares the task settings it applies
to (``settings = frozenset({"chat", "knowledge"})``; empty: every task); a task declares its ``setting``
(:attr:`bench.contracts.DefenderView.setting`: ``chat``, ``knowledge``, ``classification`` or ``generation``).
A run of a plugin on a task it does not apply to is a :class:`NotApplicableError` (a clear message naming the
tasks it does apply to); a sweep skips such combinations and lists them, so "every defense on every task it
supports" is one grid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.errors import ConfigError
from bench.registry import TASKS

if TYPE_CHECKING:
    from bench.contracts import Task


class NotApplicableError(ConfigError):
    """A defense or attack was asked to run on a task whose setting it does not declare."""


def applies(plugin_cls: type, task_cls: type) -> bool:
    """Whether a defense or attack class (a composite: every part) applies to a task class."""
    from bench.core.composition import plugin_classes

    setting = getattr(task_cls, "setting", None)
    for cls in plugin_classes(plugin_cls):
        settings: frozenset[str] = getattr(cls, "settings", frozenset())
        if settings and setting not in settings:
            return False
    return True


def check_applies(kind: str, name: str, plugin_cls: type, task: str, task_cls: type[Task]) -> None:
    """Raise :class:`NotApplicableError` when ``plugin_cls`` (a ``kind`` named ``name``) does not apply to ``task``."""
    if applies(plugin_cls, task_cls):
        return
    from bench.core.composition import plugin_classes

    wanted: list[str] = sorted(set[str]().union(*(getattr(cls, "settings", frozenset()) or set() for cls in plugin_classes(plugin_cls))))
    fitting = [t for t in TASKS.names() if applies(plugin_cls, TASKS.get(t))]
    raise NotApplicableError(
        f"{kind} {name!r} does not apply to task {task!r} (a {task_cls.setting or 'unspecified'} task): it applies to "
        f"{' and '.join(wanted)} tasks ({', '.join(fitting) or 'none registered'})")

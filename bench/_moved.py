"""Old import paths of modules that moved into ``bench``'s subpackages: they still import, with a FutureWarning
naming the new path.

``bench`` was one flat folder until it was split by what each part does (see :mod:`bench`). Plugins written against
the flat layout (e.g. ``from bench.layers import linear_layers``) keep working: the finder installed by
:func:`install` answers an old name with the module at its new path (the same module object, not a copy) and warns
once per importing place. The plugin API (:mod:`bench.contracts`, :mod:`bench.registry`, :mod:`bench.config`,
:mod:`bench.errors`, :mod:`bench.cache`, :mod:`bench.modelio`, :mod:`bench.testing`) did not move.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings

MOVED = {
    "bench.applicability": "bench.core.applicability",
    "bench.attack_record": "bench.run.attack_record",
    "bench.builtins": "bench.core.builtins",
    "bench.claims_file": "bench.core.claims_file",
    "bench.compare": "bench.apps.compare",
    "bench.composition": "bench.core.composition",
    "bench.crossing": "bench.toolkit.crossing",
    "bench.curvature": "bench.run.curvature",
    "bench.devices": "bench.run.devices",
    "bench.executors": "bench.exec.executors",
    "bench.executors.local": "bench.exec.local",
    "bench.executors.ray": "bench.exec.ray",
    "bench.executors.run_queue": "bench.exec.run_queue",
    "bench.executors.shared": "bench.exec.shared",
    "bench.executors.slurm": "bench.exec.slurm",
    "bench.experiment": "bench.plan.experiment",
    "bench.features": "bench.toolkit.features",
    "bench.fingerprint": "bench.run.fingerprint",
    "bench.images": "bench.toolkit.images",
    "bench.layers": "bench.toolkit.layers",
    "bench.lr_grid": "bench.core.lr_grid",
    "bench.metrics": "bench.core.metrics",
    "bench.monitor": "bench.run.monitor",
    "bench.planner": "bench.plan.planner",
    "bench.plugin_check": "bench.check.plugin_check",
    "bench.provenance": "bench.run.provenance",
    "bench.pruning": "bench.run.pruning",
    "bench.replay": "bench.toolkit.replay",
    "bench.results": "bench.run.results",
    "bench.run_claim": "bench.run.run_claim",
    "bench.runner": "bench.run.runner",
    "bench.shared_runs": "bench.run.shared_runs",
    "bench.sources": "bench.toolkit.sources",
    "bench.spec": "bench.core.spec",
    "bench.stage_cache": "bench.run.stage_cache",
    "bench.stage_clock": "bench.toolkit.stage_clock",
    "bench.stage_codec": "bench.run.stage_codec",
    "bench.stages": "bench.run.stages",
    "bench.submit": "bench.apps.submit",
    "bench.submit_code": "bench.apps.submit_code",
    "bench.suite": "bench.exec.suite_run",
    "bench.sweep": "bench.plan.sweep",
    "bench.sweep_run": "bench.exec.sweep_run",
    "bench.task_support": "bench.check.task_support",
    "bench.tuning": "bench.apps.tuning",
    "bench.tuning_presets": "bench.core.tuning_presets",
    "bench.tuning_record": "bench.run.tuning_record",
    "bench.worker": "bench.exec.worker",
    "bench.yaml_dataclass": "bench.core.yaml_dataclass",
}
"""Old module name → its new name."""


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old name of :data:`MOVED` and loads it as the module at the new name."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}: import it from there (the old path will be removed)",
                      FutureWarning, stacklevel=_importer_level())
        return importlib.import_module(new)

    def exec_module(self, module: types.ModuleType) -> None:
        """The module at the new path is already executed."""


def _importer_level() -> int:
    """The stack level of the first frame outside the import machinery: the ``import`` statement that used the old
    name, so the warning points at the plugin's line."""
    frame: types.FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and (frame.f_code.co_filename.startswith("<frozen importlib")
                                 or frame.f_code.co_filename == __file__):
        frame, level = frame.f_back, level + 1
    return level


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())

"""The packages' import directions, read from the source with ``ast`` (function-local imports included), and the
static site built from Parquet without torch, the runner or the planner imported.

The layers, bottom to top:

* **core** — the plugin API and the result readers (:data:`READABLE`, and the rest of ``bench``'s helpers): never
  imports the leaderboard or a plugin package (the registry names built-in plugins by string, ``bench.core.builtins``);
* **plugins** (``tasks``, ``defenses``, ``attacks``) → core only: never the engine, the applications or the
  leaderboard (:data:`ENGINE`, :data:`APPLICATIONS`);
* **leaderboard** → only :data:`READABLE`: it reads results and never imports the runner, the planner or torch;
* **applications** (:data:`APPLICATIONS`: the CLI, ``bench compare``, ``bench tune``) sit on top of both the
  engine and the leaderboard: the only modules of ``bench`` that may import ``leaderboard``. The aggregation that
  ``bench run``'s summary, ``bench compare``, ``bench tune`` and the site share is ``leaderboard.aggregate``.

No import cycle crosses two packages.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "leaderboard", "tasks", "defenses", "attacks")
PLUGINS = ("tasks", "defenses", "attacks")

READABLE = {"bench.errors", "bench.config", "bench.registry", "bench.contracts", "bench.core.yaml_dataclass",
            "bench.core.spec", "bench.core.metrics", "bench.core.lr_grid", "bench.core.claims_file",
            "bench.core.tuning_presets",
            "bench.toolkit.images", "bench.run.results", "bench.run.tuning_record", "bench.run.summary"}
"""What of ``bench`` the leaderboard may import: errors, configs, the registry (a task's declared utility bound and
defaults, resolved lazily), the spec's labels, the metrics and the result and record readers."""
ENGINE_PREFIXES = ("bench.run.runner", "bench.run.stages", "bench.run.stage_cache", "bench.plan", "bench.exec")
"""What runs experiments: plugins and the leaderboard never import it."""
APPLICATIONS = ("bench.cli", "bench.apps")
"""Modules (and packages) of ``bench`` above both the engine and the leaderboard."""
PLUGIN_API = ("bench.contracts", "bench.registry", "bench.config", "bench.errors", "bench.cache", "bench.modelio")
"""The plugin API (the guide's imports, apart from ``bench.testing``, which plugin authors' tests use)."""
LAYERS = {  # bench's subpackages, bottom to top: each imports only its own layer and those below it
    "base": ("bench.core", "bench.toolkit", "bench._moved", *PLUGIN_API),
    "run": ("bench.run",),
    "plan": ("bench.plan",),
    "exec": ("bench.exec",),
    "check": ("bench.check", "bench.testing"),
    "apps": ("bench.apps",),
    "cli": ("bench.cli", "bench.__main__"),
}
RANK = {"base": 0, "run": 1, "plan": 2, "exec": 3, "check": 3, "apps": 4, "cli": 5}
"""exec and check share a rank: neither imports the other."""


def _module_names() -> dict[str, Path]:
    names = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            names[name.removesuffix(".__init__")] = path
    return names


MODULES = _module_names()


def _targets(module: str, node: ast.AST) -> list[str]:
    """The modules an import statement of ``module`` names (``from a import b`` names ``a.b`` when that is a
    module, else ``a``); relative imports resolved."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    base = node.module or ""
    if node.level:
        parts = module.split(".")
        is_package = MODULES[module].name == "__init__.py"
        parts = parts[: len(parts) - node.level + (1 if is_package else 0)]
        base = ".".join(parts + ([base] if base else []))
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]


def _imports() -> dict[str, set[str]]:
    """Module → every module it imports anywhere in its body (top level, functions, ``TYPE_CHECKING`` blocks)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module].update(_targets(module, node))
    return graph


GRAPH = _imports()


def _package(module: str) -> str:
    return module.split(".")[0]


def _within(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _violations(sources, allowed) -> list[str]:
    return sorted(f"{src} -> {dst}" for src in sources for dst in GRAPH[src] if not allowed(src, dst))


def test_the_graph_reads_every_package():
    assert {_package(m) for m in MODULES} == set(PACKAGES)
    assert "leaderboard.aggregate" in GRAPH["bench.cli.run"]  # a function-local import is seen
    assert "bench.run.results" in GRAPH["leaderboard.aggregate"]


def test_the_leaderboard_imports_only_the_result_reading_part_of_bench():
    def allowed(src, dst):
        return _package(dst) != "bench" or dst in READABLE
    assert _violations([m for m in MODULES if _package(m) == "leaderboard"], allowed) == []


def test_what_the_leaderboard_reads_stays_below_the_engine_and_the_leaderboard():
    """The result readers' own imports, followed transitively, reach neither the engine, the applications, the
    leaderboard nor a plugin package."""
    seen, todo = set(), sorted(READABLE)
    while todo:
        module = todo.pop()
        if module in seen or module not in MODULES:
            continue
        seen.add(module)
        todo += [dst for dst in GRAPH[module] if _package(dst) == "bench"]
    reached = {m for m in seen if _within(m, ENGINE_PREFIXES + APPLICATIONS)}
    assert reached == set()
    others = sorted(f"{m} -> {d}" for m in seen for d in GRAPH[m] if _package(d) in ("leaderboard", *PLUGINS))
    assert others == []


def test_only_the_applications_import_the_leaderboard():
    def allowed(src, dst):
        return _package(dst) != "leaderboard" or _within(src, APPLICATIONS)
    assert _violations([m for m in MODULES if _package(m) == "bench"], allowed) == []


def test_bench_imports_no_plugin_package():
    """Built-in plugins are registered by ``"module:Attr"`` strings (``bench.core.builtins``), never imported."""
    def allowed(src, dst):
        return _package(dst) not in PLUGINS
    assert _violations([m for m in MODULES if _package(m) == "bench"], allowed) == []


def test_plugins_import_the_plugin_api_the_core_and_the_toolkit_only():
    def allowed(src, dst):
        return _package(dst) != "bench" or _layer(dst) == "base"
    assert _violations([m for m in MODULES if _package(m) in PLUGINS], allowed) == []


def _layer(module: str) -> str:
    if module == "bench":
        return "base"
    for layer, prefixes in LAYERS.items():
        if _within(module, prefixes):
            return layer
    raise AssertionError(f"{module} is in no layer of LAYERS: add it")


def test_bench_subpackages_import_downwards_only():
    """base (plugin API, core, toolkit) <- run <- plan <- exec, check <- apps <- cli: a module imports its own layer
    and the layers below it, never one above or beside it."""
    def allowed(src, dst):
        if _package(dst) != "bench":
            return True
        a, b = _layer(src), _layer(dst)
        return a == b or RANK[b] < RANK[a]
    assert _violations([m for m in MODULES if _package(m) == "bench"], allowed) == []


def test_every_bench_module_lives_in_a_subpackage_or_the_plugin_api():
    subpackages = {prefix for layer in LAYERS.values() for prefix in layer
                   if prefix not in PLUGIN_API and (ROOT / prefix.replace(".", "/")).is_dir()}  # bench.contracts is one
    top = sorted(m for m in MODULES if m.startswith("bench.") and m.count(".") == 1 and m not in subpackages)
    assert top == sorted({"bench.__main__", "bench._moved", "bench.testing", *PLUGIN_API})


def test_no_import_cycle_crosses_packages():
    """Tarjan's strongly connected components of the module graph: each lies within one package."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    crossing: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in MODULES:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len({_package(m) for m in component}) > 1:
                crossing.append(sorted(component))

    for module in sorted(MODULES):
        if module not in index:
            visit(module)
    assert crossing == []


SITE_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_site import write_run
root = Path({root!r})
for defense, steps in [("none", 10), ("specdef", 40)]:  # a registered task: its bound and defaults are read
    write_run(root / "results", task="vision-digits", defense=defense, attack="full-ft(lr=0.001)", steps=steps)
from bench.cli import main
assert main(["leaderboard", "--results", str(root / "results"), "--out", str(root / "site")]) == 0
assert (root / "site" / "index.html").is_file()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "diffusers")
               or m in ("bench.run.runner", "bench.plan.planner", "bench.run.stages"))
print("IMPORTED", heavy)
"""


def test_the_site_builds_from_parquet_without_torch_the_runner_or_the_planner(tmp_path):
    script = SITE_SCRIPT.format(tests=str(ROOT / "tests"), root=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "IMPORTED []" in proc.stdout, proc.stdout


OLD_LAYOUT_PLUGIN = '''
"""A plugin written against the flat layout: bench.layers, bench.spec, and AttackSweep, as the old README showed."""
from bench.contracts import AttackSweep
from bench.layers import count_parameters
from bench.spec import RunSpec
import torch

n = count_parameters(torch.nn.Linear(3, 2))
family = AttackSweep("full-ft", {"optimizer": "adam"}, (1e-3,), family="adam")
'''


def test_a_plugin_written_against_the_flat_layout_still_runs_and_is_told_the_new_paths(tmp_path):
    """Moved modules answer at their old paths (the same module object) with a FutureWarning naming the new path."""
    plugin = tmp_path / "old_plugin.py"
    plugin.write_text(OLD_LAYOUT_PLUGIN)
    script = (f"import runpy, sys\nns = runpy.run_path({str(plugin)!r})\n"
              "import bench.layers, bench.toolkit.layers, bench.contracts\n"
              "assert bench.layers is bench.toolkit.layers\n"
              "assert ns['n'] == 8 and type(ns['family']) is bench.contracts.AttackFamily\n"
              "assert ns['RunSpec'] is sys.modules['bench.core.spec'].RunSpec\nprint('RAN')")
    proc = subprocess.run([sys.executable, "-W", "always::FutureWarning", "-c", script], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RAN" in proc.stdout
    for old, new in (("bench.layers", "bench.toolkit.layers"), ("bench.spec", "bench.core.spec")):
        assert f"{old} moved to {new}" in proc.stderr
    assert "old_plugin.py" in proc.stderr  # the warning points at the plugin's import line
    assert "AttackSweep was renamed AttackFamily" in proc.stderr


def test_every_old_path_resolves_to_an_existing_module():
    from bench._moved import MOVED
    for old, new in MOVED.items():
        assert new in MODULES, f"{old} -> {new}: no such module"
        assert old not in MODULES, f"{old} exists again: remove it from MOVED"

"""Benchmark harness for training-resistance defenses.

The package, by what each part does (lower layers never import higher ones; ``tests/test_layers.py`` checks it):

* the plugin API, at the top: :mod:`bench.contracts` (what a task, defense and attack implement),
  :mod:`bench.registry`, :mod:`bench.config`, :mod:`bench.errors`, :mod:`bench.cache`, :mod:`bench.modelio`
  (checkpoint IO) and :mod:`bench.testing` (conformance checks for plugin authors' tests);
* :mod:`bench.core`: the shared vocabulary (run specs, YAML configs, metrics, LR grids, applicability, claims file);
* :mod:`bench.toolkit`: helpers plugins build on (layers, features, data sources, replayable draws, images);
* :mod:`bench.run`: one run (stages and their cache, the runner, results on disk, fingerprints, pruning);
* :mod:`bench.plan`: what to run (suite requests, the planner's waves, experiment and sweep files);
* :mod:`bench.exec`: where it runs (executors, worker processes, running suites and sweep files);
* :mod:`bench.check`, :mod:`bench.apps`, :mod:`bench.cli`: plugin checks, studies (compare, tune, submit) and the
  ``bench`` command, on top.

The library entry points are :func:`bench.run.runner.run` (one :class:`bench.core.spec.RunSpec`) and
:func:`bench.exec.suite_run.run_suite` (a defense against a task's attack suite); the ``bench`` command is a thin
layer over them. Modules that moved out of the old flat layout still import from their old paths, with a warning
(:mod:`bench._moved`).
"""

from bench._moved import install

__version__ = "0.1.0"

install()

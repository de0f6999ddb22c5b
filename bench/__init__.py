"""Benchmark harness for training-resistance defenses.

The library entry points are :func:`bench.runner.run` (one :class:`bench.spec.RunSpec`) and
:func:`bench.suite.run_suite` (a defense against a task's attack suite); the ``bench`` command is a thin
layer over them.
"""

__version__ = "0.1.0"

"""Checking plugins outside the test suite: which built-in baselines a task supports (:mod:`.task_support`) and
`bench check --plugin FILE` (:mod:`.plugin_check`), over the conformance checks of :mod:`bench.testing`.
"""

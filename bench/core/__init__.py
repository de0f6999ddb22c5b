"""The shared vocabulary below the plugin API: run specs, configs as YAML, built-in plugin names, tuned presets,
composite defenses, applicability, the metrics (steps-to-harm, worst cases, ratios), LR grids and the claims file.

Imports only the plugin API (:mod:`bench.contracts`, :mod:`bench.config`, :mod:`bench.registry`,
:mod:`bench.errors`, :mod:`bench.cache`) and itself; torch-free apart from what the plugin API needs.
"""

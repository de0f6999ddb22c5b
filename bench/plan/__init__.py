"""Deciding what to run, without running it: suite requests (:mod:`.request`), the planner that turns a request
into waves of run specs (LR grids, LR search, refinement: :mod:`.planner`), experiment files (:mod:`.experiment`) and
sweep files (:mod:`.sweep`). Imports the plugin API and the core; never the runner or the executors.
"""

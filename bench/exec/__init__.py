"""Executing plans: executors (in process, local worker processes, Ray, Slurm: :mod:`.executors`), the worker
process (:mod:`.worker`), running suites (:mod:`.suite_run`) and sweep files (:mod:`.sweep_run`). Sits on the plan
and run layers.
"""

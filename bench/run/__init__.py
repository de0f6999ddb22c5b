"""Running one run: the stages (released, defended) and their disk cache, the runner and its monitor, the metrics
record, results on disk (run.json, Parquet), code fingerprints and provenance, bound pruning, shared runs, the
tuning records. Imports the plugin API, the core and the toolkit; never the planner, the executors or the leaderboard.
"""

"""Studies built from many runs, above the engine and the leaderboard: `bench compare` (:mod:`.compare`), defender
tuning and budget curves (:mod:`.tuning`), and submissions (:mod:`.submit`, :mod:`.submit_code`). The only part of
``bench`` besides the CLI that may import the leaderboard.
"""

"""Leaderboard: aggregation of Parquet results into per-defense rows, rendered as Markdown, HTML and CSV/Parquet.

Everything here reads only the files under ``results/`` (never the registries or live models), so a leaderboard can
be rebuilt anywhere from the result files alone.
"""

"""Helpers plugins build on: layer discovery (:mod:`.layers`), feature capture (:mod:`.features`), image grids
(:mod:`.images`), local/hub data sources (:mod:`.sources`), replayable data draws (:mod:`.replay`) and the
training state an attack hands the exact-crossing replay (:mod:`.crossing`). Imports the plugin API and the core only.
"""

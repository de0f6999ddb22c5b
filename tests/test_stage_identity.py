"""Stage keys without building the task (issue 23): a task that can say what it is from its config and code
(:meth:`bench.contracts.Task.stage_identity`, the tiny tiers) has its stages looked up without being built, so a
sweep skips preparing the stages already on disk; the key is the same whether or not the task was built."""

from __future__ import annotations

import pytest

from bench.core.spec import make_spec
from bench.run.stages import Session

QUICK = {"curvature_iters": 0, "bootstrap": 0}


def _refuse(*args, **kwargs):
    raise AssertionError("the task was built to look a stage up")


def test_a_stage_on_disk_is_found_without_building_the_task(tmp_path, cache, monkeypatch):
    spec = make_spec(task="vision-digits", defense="none", attack="full-ft", seed=5, task_args=QUICK)
    fresh = Session(tmp_path, cache, progress=False)
    monkeypatch.setattr("bench.run.stages._build_task", _refuse)
    assert not fresh.on_disk(spec)  # (a seed no other test builds)
    monkeypatch.undo()
    builder = Session(tmp_path, cache, progress=False)
    task = builder.released(spec).task
    builder.defended(spec)
    device = builder.device_for(spec)
    assert builder._disk_key(spec, "defended", task, device) == builder._disk_key(spec, "defended", None, device)
    looker = Session(tmp_path, cache, progress=False)
    monkeypatch.setattr("bench.run.stages._build_task", _refuse)
    assert looker.on_disk(spec)
    assert looker.defended_to_prepare([spec]) == []  # nothing to build, and nothing built here to say so
    other_seed = make_spec(task="vision-digits", defense="none", attack="full-ft", seed=6, task_args=QUICK)
    assert not looker.on_disk(other_seed)


def test_a_task_without_an_identity_is_keyed_by_its_built_provenance(tmp_path, cache, monkeypatch):
    spec = make_spec(task="llm-harmful-qa", defense="none", attack="full-ft", task_args=QUICK)
    session = Session(tmp_path, cache, progress=False)
    monkeypatch.setattr("bench.run.stages._build_task", _refuse)
    assert session._disk_key(spec, "defended", None, session.device_for(spec)) is None
    assert not session.on_disk(spec)  # unknown without building: the sweep prepares it as before


def test_an_identity_that_contradicts_the_built_task_is_refused(tmp_path, cache, monkeypatch):
    from bench.contracts import StageIdentity
    from bench.errors import PluginError
    from tasks.vision.task import VisionDigits

    spec = make_spec(task="vision-digits", defense="none", attack="full-ft", task_args=QUICK)
    session = Session(tmp_path, cache, progress=False)
    task = session.released(spec).task
    monkeypatch.setattr(VisionDigits, "stage_identity", classmethod(lambda cls, cfg, *, tier, model:
                                                                    StageIdentity({}, portable=False)))
    with pytest.raises(PluginError, match="stage_portable"):
        session._disk_key(spec, "defended", task, session.device_for(spec))

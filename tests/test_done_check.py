"""One answer to "is this run already done?": a sweep's resume (``completed_run_ids``), a run's claim on its
directory (``claimed_run``) and the executors reading a worker's run back (``read_back``) all ask
:func:`bench.run.results.successful_run`, so they agree on every state a run directory can be in."""

from __future__ import annotations

import pandas as pd
import pytest

from bench.core.spec import make_spec
from bench.exec.shared import read_back
from bench.run.results import METRICS, RUN_JSON, completed_run_ids, successful_run
from bench.run.run_claim import claimed_run


def _metrics(run_dir, *, truncated=False):
    pd.DataFrame({"x": [1.0]}).to_parquet(run_dir / METRICS)
    if truncated:
        data = (run_dir / METRICS).read_bytes()
        (run_dir / METRICS).write_bytes(data[: len(data) // 2])


STATES = {
    # name: (run.json text or None, metrics: None / "ok" / "truncated", done?)
    "success": ('{"status": "success", "summary": {"steps_to_harm": 1}}', "ok", True),
    "success, metrics truncated": ('{"status": "success"}', "truncated", False),
    "success, no metrics": ('{"status": "success"}', None, False),
    "failed": ('{"status": "failed", "error": "boom"}', "ok", False),
    "run.json unreadable": ('{"status": "succ', "ok", False),
    "run.json not an object": ("[1, 2]", "ok", False),
    "no run.json": (None, "ok", False),
}


@pytest.mark.parametrize("state", list(STATES))
def test_resume_claim_and_read_back_agree_on_whether_a_run_is_done(tmp_path, state):
    text, metrics, done = STATES[state]
    spec = make_spec(task="vision-digits", defense="none", attack="full-ft", seed=0)
    run_dir = tmp_path / spec.run_id
    run_dir.mkdir()
    if metrics:
        _metrics(run_dir, truncated=metrics == "truncated")
    if text is not None:
        (run_dir / RUN_JSON).write_text(text)

    assert (successful_run(run_dir) is not None) is done
    assert (spec.run_id in completed_run_ids(tmp_path)) is done
    executed = []
    claimed_run(run_dir, lambda: executed.append("ran"), lambda info: executed.append("reused"))
    assert executed == (["reused"] if done else ["ran"])
    record = read_back(spec, run_dir / RUN_JSON)
    if text is None:
        assert record is None  # nothing written yet: the executor records the worker's death instead
    else:
        assert (record.status == "success") is done
        if state.startswith("success,"):  # a success whose metrics do not read is reported as such, not counted
            assert "RunCorrupt" in record.error

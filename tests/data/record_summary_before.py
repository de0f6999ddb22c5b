"""Record run summaries of fixed-seed runs (tests/data/summary_before.json, recorded from main at e28d317, before
RunSummary): `python tests/data/record_summary_before.py tests/data/summary_before.json`. tests/test_summary.py runs the
same cases and compares."""
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import torch

from bench.cache import Cache
from bench.core.spec import make_spec
from bench.run.runner import run
from bench.run.stages import Session

torch.set_num_threads(1)  # as tests/conftest.py: float sums depend on the thread count
FAST = {"curvature_iters": 0, "bootstrap": 100}
def spec(defense="none", attack_args=None, purpose="attack"):
    return make_spec(task="vision-digits", defense=defense, attack="full-ft", seed=0, task_args=FAST,
                     attack_args={"budget": 100, **(attack_args or {})}, purpose=purpose)

CASES = {
    "harmed": spec(attack_args={"optimizer": "adam", "lr": 1e-2}),
    "resisted": spec(attack_args={"optimizer": "adam", "lr": 1e-9}),
    "broken": spec(defense="specdef", attack_args={"optimizer": "sgd", "lr": 1.0}),
    "pruned": dataclasses.replace(spec(attack_args={"optimizer": "adam", "lr": 1e-4}),
                                  stop_at=10, bound_by=("0123456789abcdef",)),
    "probe": spec(attack_args={"optimizer": "adam", "lr": 1e-2, "budget": 10}, purpose="lr-probe"),
}
root = Path(tempfile.mkdtemp())
session = Session(root / "results", Cache(root / "cache"))
out = {}
for name, s in CASES.items():
    result = run(s, session)
    info = json.loads((root / "results" / s.run_id / "run.json").read_text())
    df = pq.read_table(root / "results" / s.run_id / "metrics.parquet").to_pandas()
    df = df[~df["metric"].str.contains("seconds")]
    rows = [[r.phase, None if r.step != r.step else r.step, r.split, r.metric, r.value, r.censored]
            for r in df[["phase", "step", "split", "metric", "value", "censored"]].itertuples()]
    out[name] = {"run_id": s.run_id, "status": info["status"], "summary": info["summary"],
                 "spec": info["spec"], "summary_rows": [r for r in rows if r[0] == "summary"], "n_rows": len(df)}
    print(name, s.run_id, info["summary"].get("outcome"), sorted(info["summary"]))
Path(sys.argv[1]).write_text(json.dumps(out, indent=1, sort_keys=True, default=str, allow_nan=True) + "\n")

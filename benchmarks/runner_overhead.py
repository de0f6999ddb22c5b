"""Runner overhead: ``bench.run.runner.run`` vs a bare PyTorch loop doing the same attack steps without probes.

Both sides run N Adam steps of full fine-tuning on the tiny ``vision-digits`` task (defense ``none``) from the same
released model, the same ``task.attack_batches`` stream (the bare loop starts from the generator state the runner's
attack had when it asked for its batches, recorded once) and the same loss. The runner's
attack uses lr = 1e-6 so the model is never harmed and nothing stops early, and ``eval_every = N`` so it probes only
at steps 0 and N. Measured, side by side in one process, median over ``--repeats`` with the order rotated each time:

* **bare loop**: optimizer construction + N forward/backward/step iterations;
* **runner attack stage**: the run summary's ``attack_seconds`` (attack.run under the probe monitor);
* **runner run()**: the wall time of the whole ``run()`` call (deepcopy, attack, final evaluation, result files),
  with the released and defended stages already memoised in the Session, as in a suite;
* the same two runner lines **with probes** every ``eval_every`` steps (the task's default, 5), to show what probing
  costs.

The runner's final training loss (from its metrics file) is checked against the bare loop's, so both really did
the same steps. Results go
to a temporary directory; the released model comes from ``$BENCH_CACHE_DIR`` (or the default cache), or from a
temporary cache with ``--temp-cache``.

    python benchmarks/runner_overhead.py                    # N = 500, 5 repeats, 1 thread
    python benchmarks/runner_overhead.py --steps 200 --repeats 3 --temp-cache
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import pyarrow.parquet as pq
import torch

from bench.cache import Cache
from bench.core.spec import make_spec
from bench.run.results import METRICS
from bench.run.runner import run
from bench.run.stage_measure import derive_seed
from bench.run.stages import Session


def make_run_spec(steps: int, eval_every: int | None, lr: float, seed: int):
    attack_args = {"optimizer": "adam", "lr": lr, "budget": steps}
    if eval_every is not None:  # None: the task's default probe interval
        attack_args["eval_every"] = eval_every
    return make_spec(task="vision-digits", defense="none", attack="full-ft", seed=seed,
                     task_args={"curvature_iters": 0, "bootstrap": 0}, attack_args=attack_args)


def record_stream_state(session: Session, spec) -> torch.Tensor:
    """Run the runner's attack once and return the data generator's state when it called ``task.attack_batches``
    (the attack may draw from the generator first), so the bare loop draws exactly the same batches."""
    task = session.released(spec).task
    states = []

    def recording(batch_size, generator):
        states.append(generator.get_state())
        return type(task).attack_batches(task, batch_size, generator)

    task.attack_batches = recording
    try:
        runner_run(session, spec)
    finally:
        del task.attack_batches
    return states[0]


def bare_loop(session: Session, spec, stream_state: torch.Tensor) -> dict:
    """The attack's steps as a plain loop: no monitor, no probes, no result files."""
    task = session.released(spec).task
    _, _, cfg = spec.configs()
    model = copy.deepcopy(task.model).train()
    torch.manual_seed(derive_seed(spec.seed, "attack-init"))
    generator = torch.Generator()
    generator.set_state(stream_state)
    start = time.perf_counter()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    batches = task.attack_batches(cfg.batch_size, generator)
    for _ in range(cfg.budget):
        batch = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss = task.attack_loss(model, batch)
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    return {"attack": seconds, "wall": seconds, "probe": 0.0, "final_loss": float(loss.detach())}


def runner_run(session: Session, spec) -> dict:
    start = time.perf_counter()
    result = run(spec, session)
    wall = time.perf_counter() - start
    if result.status != "success":
        raise RuntimeError(f"run failed: {result.error}")
    summary = result.summary
    if summary.steps_run != spec.configs()[2].budget:
        raise RuntimeError(f"the attack stopped early at step {summary.steps_run} ({summary.outcome})")
    rows = pq.read_table(result.directory / METRICS, columns=["metric", "step", "value"]).to_pylist()
    losses = {r["step"]: r["value"] for r in rows if r["metric"] == "loss"}
    return {"attack": summary.attack_seconds, "wall": wall, "probe": summary.probe_seconds,
            "final_loss": losses[max(losses)]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=500, help="attack steps N (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of each measurement (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-6, help="Adam learning rate (default: %(default)g)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temp-cache", action="store_true", help="build the released model in a temporary cache")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    quiet = make_run_spec(args.steps, args.steps, args.lr, args.seed)  # probes at steps 0 and N only
    probed = make_run_spec(args.steps, None, args.lr, args.seed)  # the task's default probe interval
    every = probed.configs()[2].eval_every
    measures = {
        "bare": lambda: bare_loop(session, quiet, stream_state),
        "runner": lambda: runner_run(session, quiet),
        "runner+probes": lambda: runner_run(session, probed),
    }
    with tempfile.TemporaryDirectory() as results_dir, tempfile.TemporaryDirectory() as cache_dir:
        session = Session(results_dir=results_dir, cache=Cache(cache_dir) if args.temp_cache else Cache())
        stream_state = record_stream_state(session, quiet)  # also loads the released model, memoises the stages
        for measure in measures.values():  # warm-up
            measure()
        samples: dict[str, list[dict]] = {name: [] for name in measures}
        names = list(measures)
        for i in range(args.repeats):
            for name in names[i % len(names):] + names[: i % len(names)]:  # rotate the order every repeat
                samples[name].append(measures[name]())

    med = {name: {key: statistics.median(s[key] for s in runs) for key in ("attack", "wall", "probe")}
           for name, runs in samples.items()}
    fastest = {name: {key: min(s[key] for s in runs) for key in ("attack", "wall")} for name, runs in samples.items()}
    bare = med["bare"]["attack"]
    lines = [  # (label, measurement, timing key)
        ("bare PyTorch loop (no probes)", "bare", "attack"),
        ("runner attack stage (attack_seconds), probes at 0 and N", "runner", "attack"),
        ("runner whole run() wall, probes at 0 and N", "runner", "wall"),
        (f"with probes: attack stage, probe every {every} steps", "runner+probes", "attack"),
        (f"with probes: whole run() wall, probe every {every} steps", "runner+probes", "wall"),
    ]
    print(f"vision-digits tiny, full-ft adam lr={args.lr:g}, N={args.steps} steps, batch "
          f"{quiet.configs()[2].batch_size}, {args.threads} thread(s), median of {args.repeats} "
          f"(order rotated); torch {torch.__version__}\n")
    width = max(len(label) for label, _, _ in lines)
    print(f"{'measurement':<{width}}  {'median s':>8}  {'ms/step':>8}  {'probe s':>8}  {'vs bare':>8}  {'overhead':>9}"
          f"  {'min s':>7}  {'min vs min':>10}")
    print("-" * (width + 71))
    for label, name, key in lines:
        seconds, low = med[name][key], fastest[name][key]
        print(f"{label:<{width}}  {seconds:8.4f}  {1e3 * seconds / args.steps:8.3f}  {med[name]['probe']:8.4f}  "
              f"{seconds / bare:7.3f}x  {100 * (seconds / bare - 1):+8.1f}%  {low:7.4f}  "
              f"{100 * (low / fastest['bare']['attack'] - 1):+9.1f}%")
    overhead = 100 * (med["runner"]["attack"] / bare - 1)
    verdict = "within" if overhead <= 10 else "ABOVE"
    print(f"\nattack-stage overhead {overhead:+.1f}% ({verdict} the 10% target); probe s = time inside the probes "
          "(monitor.probe_seconds, median);\nmin s / min vs min: the fastest repeat, less sensitive to other load.")
    losses = {name: {round(s["final_loss"], 12) for s in runs} for name, runs in samples.items()}
    same = losses["bare"] == losses["runner"] == losses["runner+probes"] and len(losses["bare"]) == 1
    print(f"final training loss: bare {samples['bare'][0]['final_loss']:.9f}, runner "
          f"{samples['runner'][0]['final_loss']:.9f}, runner+probes {samples['runner+probes'][0]['final_loss']:.9f}"
          f" ({'identical' if same else 'DIFFERENT: not the same batches; timings are still like for like'})")


if __name__ == "__main__":
    main()

"""Where the headline command's time goes: CPU seconds of one training step, one probe, and a run's last measurements.

``bench run --defense specdef --task sd-style`` is made of these pieces (8 attack runs and 10 LR-search probe runs of
up to 200 steps, a probe every 20 steps, a confirmation at a first harmful probe, then the evaluation and the
samples image). This script builds the tiny tier's released and defended stages for ``none`` and ``specdef`` and
times, on one thread, in CPU seconds (``time.process_time``: a busy shared machine inflates wall time far more):

* **step**: one AdamW step of full fine-tuning (forward, backward, optimizer), median of ``--steps``;
* **probe**: one probe of a fresh model (proxy loss + ``probe_samples`` prompts per side sampled and judged);
* **tail**: a harmed run's end on one model: probe, confirmation, evaluation, preview (prompts and proxy already
  measured on the unchanged model are reused).

With ``--sequential`` every row is also measured with SpecDef's factored layers applied one factor after another
(the old order) instead of multiplying the factors first where that costs fewer FLOPs, alternating the two.

    python benchmarks/headline_costs.py
    python benchmarks/headline_costs.py --sequential --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sequential", action="store_true", help="also time factored layers applied factor by factor")
    args = parser.parse_args(argv)

    import torch

    from attacks._optim import build_optimizer
    from bench.core.spec import make_spec
    from bench.run.stages import Session
    from bench.toolkit.layers import FactoredLinear

    torch.set_num_threads(1)
    product_first = FactoredLinear._product_first
    session = Session(results_dir=tempfile.mkdtemp(prefix="headline-costs-"), progress=False)

    def cpu(fn) -> float:
        start = time.process_time()
        fn()
        return time.process_time() - start

    def step_seconds(model, task) -> float:
        model = copy.deepcopy(model).train()
        optimizer = build_optimizer("adamw", model.parameters(), lr=1e-6, weight_decay=0.01)
        batches = task.attack_batches(task.config.batch_size, torch.Generator().manual_seed(0))

        def one():
            optimizer.zero_grad(set_to_none=True)
            task.attack_loss(model, next(batches)).backward()
            optimizer.step()
        return statistics.median(cpu(one) for _ in range(args.steps))

    def tail(model, task) -> None:
        task.probe(model), task.confirm(model), task.evaluate(model), task.preview(model)

    print(f"{'defense':<8} {'factored':<11} {'step ms':>8} {'probe s':>8} {'tail s':>7}")
    for defense in ("none", "specdef"):
        spec = make_spec(task="sd-style", defense=defense, attack="full-ft")
        defended, task = session.defended(spec).model, session.released(spec).task
        orders = ("cheaper", "sequential") if args.sequential and defense != "none" else ("cheaper",)
        rows: dict[str, list[tuple[float, float, float]]] = {order: [] for order in orders}
        for _ in range(args.repeats):
            for order in orders:
                FactoredLinear._product_first = product_first if order == "cheaper" else (lambda self, x: False)
                step = step_seconds(defended, task)
                with torch.no_grad():
                    probe = cpu(lambda: task.probe(copy.deepcopy(defended).eval()))
                    end = cpu(lambda: tail(copy.deepcopy(defended).eval(), task))
                rows[order].append((step, probe, end))
        FactoredLinear._product_first = product_first
        for order, values in rows.items():
            step, probe, end = (statistics.median(column) for column in zip(*values))
            print(f"{defense:<8} {order:<11} {step * 1e3:>8.1f} {probe:>8.3f} {end:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

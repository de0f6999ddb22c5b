"""What the adaptive attacks' rewrite check costs, batched (one joint forward) against one forward per chain.

Every adaptive attack rewrites each linear chain it finds and checks that the model's outputs on its own batch did
not move. On SpecDef's tiny sd-style UNet (every linear map factored) that was one UNet forward per chain. This
script builds the defended stage, then for each adaptive rewrite times ``rewrite_checked`` on a fresh copy both ways
(alternating, ``--repeats`` times, CPU seconds on one thread) and checks that both leave the same parameters, the
same trainable set and the same random state.

    python benchmarks/rewrite_check.py
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

from yardstick import yardstick  # the one machine yardstick, next to this script


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="sd-style")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import torch

    from attacks._adaptive import REWRITE_RTOL, output_probe
    from attacks._structure import collapse, find_chains, freeze_tail, inject, rewrite_checked, split_first
    from bench.core.spec import make_spec
    from bench.run.stages import Session

    torch.set_num_threads(1)
    session = Session(results_dir=tempfile.mkdtemp(prefix="rewrite-check-"), progress=False)
    spec = make_spec(task=args.task, defense="specdef", attack="adaptive-collapse")
    defended, task = session.defended(spec).model.eval(), session.released(spec).task
    outputs = output_probe(task, task.config.batch_size, torch.Generator().manual_seed(0))
    chains = find_chains(defended, outputs)
    rewrites = {"collapse": collapse, "inject": inject, "freeze": freeze_tail,
                "split": lambda m, c: split_first(m, c, 2)}

    def checked(rewrite, batched: bool):
        model = copy.deepcopy(defended)
        torch.manual_seed(0)
        start = time.process_time()
        result = rewrite_checked(model, chains, rewrite, outputs, rtol=REWRITE_RTOL, batched=batched)
        seconds = time.process_time() - start
        return seconds, (result, torch.get_rng_state(), {n: (p, p.requires_grad) for n, p in model.named_parameters()})

    print(f"{args.task}: SpecDef, {len(chains)} chains; {yardstick().line()}")
    print(f"{'rewrite':<9} {'one by one s':>13} {'batched s':>10} {'ratio':>6}  identical")
    for name, rewrite in rewrites.items():
        times: dict[bool, list[float]] = {False: [], True: []}
        ends = {}
        for _ in range(args.repeats):
            for batched in (False, True):
                seconds, ends[batched] = checked(rewrite, batched)
                times[batched].append(seconds)
        (result_a, rng_a, params_a), (result_b, rng_b, params_b) = ends[False], ends[True]
        same = (result_a == result_b and torch.equal(rng_a, rng_b) and params_a.keys() == params_b.keys()
                and all(torch.equal(p, params_b[n][0]) and g == params_b[n][1] for n, (p, g) in params_a.items()))
        one, joint = statistics.median(times[False]), statistics.median(times[True])
        print(f"{name:<9} {one:>13.2f} {joint:>10.2f} {one / joint:>5.1f}×  {'yes' if same else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

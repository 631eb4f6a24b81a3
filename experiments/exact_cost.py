"""Cost of exact (fixed-point) arithmetic on a zoo model: step time and memory, float vs exact.

For one registered model (default `hamiltonian74`: Chang et al. 2018, arXiv:1709.03698, BN
block, stored transitions) this compiles one training step per (arithmetic, backprop)
(`revjax.memory.model_update_step`: value_and_grad of the mean cross-entropy in train mode,
then an SGD-momentum update, params and optimizer state donated) and reports

- temp MiB: XLA's compiled temporary buffer size of that step (`revjax.memory`), exact;
- step ms and time / float: all variants timed round-robin in the same process
  (`revjax.benchmark.interleaved_times`); the ratio is the median over rounds of
  t(exact) / t(float) within a round (`benchmark.summarize`), so machine load largely
  cancels out of it.

`arithmetic="exact"` runs the body on int32 fixed-point states (`revjax.fixed_point`): each
increment is rounded to the 2^−frac_bits grid, the state carries a zero float gradient
carrier, and every update tests for overflow.

    python experiments/exact_cost.py --model hamiltonian74 --batch 16 --rounds 5
    python experiments/exact_cost.py --quick    # smoke run: batch 2, 16x16, one round

Writes `--out` (default experiments/results/exact_cost.json).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax
from result_files import default_out, write_json

from revjax import benchmark, memory, models

OPTIMIZER = optax.sgd(0.01, momentum=0.9)


def concrete(tree, key):
    """Random arrays (normal floats, integer zeros) of the ShapeDtypeStructs in `tree`."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))
    out = [
        jax.random.normal(k, s.shape, s.dtype)
        if jnp.issubdtype(s.dtype, jnp.floating)
        else jnp.zeros(s.shape, s.dtype)
        for k, s in zip(keys, leaves)
    ]
    return jax.tree.unflatten(treedef, out)


def measure(name, arithmetics, backprops, batch, size, rounds, **overrides):
    """One record per (arithmetic, backprop): temp bytes, step seconds and ratios to float."""
    compiled, records = {}, {}
    for backprop in backprops:
        for arithmetic in arithmetics:
            start = time.perf_counter()
            model = models.create(name, arithmetic=arithmetic, backprop=backprop, **overrides)
            step, params, data = memory.model_update_step(model, (batch, size, size, 3), OPTIMIZER)
            label = f"{arithmetic}/{backprop}"
            compiled[label] = (step, params, data)
            records[label] = {
                "model": name,
                "arithmetic": arithmetic,
                "backprop": backprop,
                "batch": batch,
                "size": size,
                "temp_bytes": memory.compiled_memory(step)["temp"],
                "compile_seconds": time.perf_counter() - start,
            }
            print(label, f"compiled in {records[label]['compile_seconds']:.0f} s", flush=True)
    fns = {}
    for label, (step, params, data) in compiled.items():
        p = concrete(params, jax.random.key(0))
        # Train mode normalises with batch statistics: the running averages' values are unused.
        batch = concrete(data, jax.random.key(1))
        fns.update(benchmark.update_step_calls({label: step}, p, OPTIMIZER.init(p), batch))
    times = benchmark.interleaved_times(fns, rounds)
    for backprop in backprops:
        base = f"float/{backprop}"
        summary = benchmark.summarize(
            {k: v for k, v in times.items() if k.endswith(backprop)}, base
        )
        for label, s in summary.items():
            r = records[label]
            r["step_seconds"] = s["median_seconds"]
            r["time_ratio_over_float"] = s["ratio_to_baseline"]
            r["memory_ratio_over_float"] = r["temp_bytes"] / max(records[base]["temp_bytes"], 1)
            r["rounds"] = rounds
    return list(records.values())


def format_table(records):
    lines = [
        "| model | backprop | arithmetic | temp MiB | step ms | time / float | memory / float |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in records:
        lines.append(
            f"| {r['model']} | {r['backprop']} | {r['arithmetic']} | "
            f"{r['temp_bytes'] / 2**20:.2f} | {1e3 * r['step_seconds']:.0f} | "
            f"{r['time_ratio_over_float']:.2f} | {r['memory_ratio_over_float']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hamiltonian74")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backprops", default="reversible", help="comma-separated")
    parser.add_argument("--out", default=default_out("exact_cost.json"))
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 2, 16x16, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.size, args.rounds = 2, 16, 1
    backprops = tuple(args.backprops.split(","))
    records = measure(args.model, ("float", "exact"), backprops, args.batch, args.size, args.rounds)
    print(
        f"\n{args.model}, batch {args.batch}, {args.size}x{args.size}, "
        f"{jax.devices()[0].platform}, {args.rounds} interleaved rounds"
    )
    print(format_table(records))
    write_json(args.out, records)


if __name__ == "__main__":
    main()

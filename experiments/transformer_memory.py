"""Compiled training-step memory of byte-level LMs: reversible blocks vs the stored baseline,
against depth and context length (`revjax.memory`, compile only: nothing is allocated or run).

For each (block, depth, context) the real Adam update step of `ByteLM` under
`next_token_loss` is lowered from shapes and compiled; XLA's `temp_size_in_bytes` is the
scratch beyond arguments and outputs, mostly activations kept for the backward pass. The
baseline is the standard pre-LN block with `backprop="store"`, same parameter count.

    python experiments/transformer_memory.py             # depth 12/48, context 256/1024, width 32
    python experiments/transformer_memory.py --quick     # depth 2/4, context 32, width 16 (seconds)

Writes experiments/results/transformer_memory[_quick].json and prints a table.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax
from result_files import default_out, write_json

from revjax import memory, models
from revjax.models import transformer


def step_memory(block, depth, context, *, width, heads, batch):
    backprop = "store" if block == "standard" else "reversible"
    model = transformer.ByteLM(block=block, depth=depth, width=width, num_heads=heads,
                               context=context, backprop=backprop)  # fmt: skip
    x = jax.ShapeDtypeStruct((batch, context), jnp.float32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape)))["params"]
    data = {"image": x, "label": jax.ShapeDtypeStruct((batch, context), jnp.int32)}
    loss = transformer.next_token_loss(model)
    stats = memory.update_step_memory(lambda p, b: loss(p, b), params, data, optax.adam(1e-3))
    return {"block": block, "depth": depth, "context": context, "params": models.count_params(
        params), **stats}  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--out",
        default=default_out("transformer_memory.json"),
        help="result file (--quick: transformer_memory_quick.json by default)",
    )
    parser.add_argument("--blocks", nargs="+", default=["standard", "coupling"])
    parser.add_argument("--depths", nargs="+", type=int, default=[12, 48])
    parser.add_argument("--contexts", nargs="+", type=int, default=[256, 1024])
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    if args.quick and args.out == parser.get_default("out"):
        args.out = default_out("transformer_memory_quick.json")
    if args.quick:  # seconds: the same code on a tiny model
        args.depths, args.contexts, args.width = [2, 4], [32], 16
    rows = []
    print(f"{'block':9s} {'depth':>5s} {'context':>7s} {'params':>9s} {'temp MiB':>9s}")
    for context in args.contexts:
        for depth in args.depths:
            for block in args.blocks:
                row = step_memory(block, depth, context, width=args.width, heads=args.heads,
                                  batch=args.batch)  # fmt: skip
                rows.append(row)
                print(
                    f"{block:9s} {depth:5d} {context:7d} {row['params']:9,d} "
                    f"{row['temp'] / 2**20:9.2f}",
                    flush=True,
                )
    base = {(r["depth"], r["context"]): r["temp"] for r in rows if r["block"] == "standard"}
    for r in rows:
        if (r["depth"], r["context"]) in base and r["block"] != "standard":
            r["store_over_reversible"] = base[(r["depth"], r["context"])] / max(r["temp"], 1)
            print(
                f"{r['block']} depth {r['depth']} context {r['context']}: stored / reversible "
                f"temp = {r['store_over_reversible']:.1f}x"
            )
    write_json(args.out, {"args": vars(args), "backend": jax.default_backend(), "rows": rows})


if __name__ == "__main__":
    main()

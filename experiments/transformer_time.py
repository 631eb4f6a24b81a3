"""Step time of reversible vs stored transformer training, interleaved in one process.

For each block kind the same `ByteLM` (same parameters) is compiled twice through
`revjax.memory.compile_update_step` (the Adam update of `next_token_loss`): `backprop=
"reversible"` and `"store"`. The two executables then run alternately (round-robin, so load on
a shared machine hits both alike), and the median time ratio reversible / stored is reported
against the 4/3 floor of one extra forward pass (forward + backward ≈ 3 forwards; the
reversible backward recomputes each block once more). The standard block is timed as its
own "store" reference only.

    python experiments/transformer_time.py --depth 4 --width 64 --context 128 --rounds 5
    python experiments/transformer_time.py --quick    # depth 2, width 32, context 32 (seconds)

Writes experiments/results/transformer_time[_quick].json.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from result_files import default_out, write_json

from revjax import memory
from revjax.data import text
from revjax.models import transformer


def compiled(block, backprop, args, batch):
    model = transformer.ByteLM(block=block, depth=args.depth, width=args.width,
                               num_heads=args.heads, context=args.context,
                               backprop=backprop)  # fmt: skip
    params = model.init(jax.random.key(0), batch["image"][:1])["params"]
    tx = optax.adam(1e-4)
    step = memory.compile_update_step(transformer.next_token_loss(model), params, batch, tx)
    return step, params, tx.init(params)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--out",
        default=default_out("transformer_time.json"),
        help="result file (--quick: transformer_time_quick.json by default)",
    )
    parser.add_argument("--blocks", nargs="+", default=list(transformer.BLOCKS[1:]))
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    if args.quick and args.out == parser.get_default("out"):
        args.out = default_out("transformer_time_quick.json")
    if args.quick:
        args.depth, args.width, args.context, args.rounds = 2, 32, 32, 2
        args.blocks = ["coupling", "leapfrog"]
    arrays = text.load_split("train", args.context)
    batch = {k: jnp.asarray(v[: args.batch]) for k, v in arrays.items()}
    rows = []
    for block in args.blocks:
        runs = {}
        for mode in ("reversible", "store"):
            step, params, opt = compiled(block, mode, args, batch)
            params, opt, loss = step(params, opt, batch)  # warm-up
            jax.block_until_ready(loss)
            runs[mode] = [step, params, opt]
        times = {"reversible": [], "store": []}
        for _ in range(args.rounds):
            for mode, run in runs.items():
                start = time.perf_counter()
                run[1], run[2], loss = run[0](run[1], run[2], batch)
                jax.block_until_ready(loss)
                times[mode].append(time.perf_counter() - start)
        med = {m: float(np.median(t)) for m, t in times.items()}
        row = {"block": block, "reversible_s": med["reversible"], "store_s": med["store"],
               "ratio": med["reversible"] / med["store"]}  # fmt: skip
        rows.append(row)
        print(
            f"{block:9s} reversible {row['reversible_s'] * 1e3:7.1f} ms  store "
            f"{row['store_s'] * 1e3:7.1f} ms  ratio {row['ratio']:.2f} (floor 1.33)",
            flush=True,
        )
    write_json(args.out, {"args": vars(args), "backend": jax.default_backend(), "rows": rows})


if __name__ == "__main__":
    main()

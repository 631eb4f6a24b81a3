"""Byte-level language models on `pydoc_text`: held-out bits per byte per block kind, and a sample.

A short, self-contained training loop (Adam, constant rate after a linear warm-up, the loss
`revjax.models.transformer.next_token_loss`), used until the trainer takes a next-token loss
by name. Every block kind trains the same `ByteLM` shape (equal parameter counts) from the same
seed on the same batches; the held-out figure is the mean bits per byte over every test window.

    python experiments/transformer_lm.py --quick            # ~2 min on 2 CPU cores
    python experiments/transformer_lm.py --blocks standard coupling --steps 2000 --seeds 0 1 2

Writes experiments/results/transformer_lm[_quick].json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from revjax import models
from revjax.data import text
from revjax.models import transformer

RESULTS = Path(__file__).parent / "results"


def train_one(block, seed, *, steps, depth, width, heads, context, batch, lr):
    backprop = "store" if block == "standard" else "reversible"
    model = transformer.ByteLM(block=block, depth=depth, width=width, num_heads=heads,
                               context=context, backprop=backprop)  # fmt: skip
    train = text.load_split("train", context)
    test = {k: jnp.asarray(v) for k, v in text.load_split("test", context).items()}
    params = model.init(jax.random.key(seed), test["image"][:1])["params"]
    loss_fn = transformer.next_token_loss(model)
    schedule = optax.linear_schedule(0.0, lr, max(steps // 10, 1))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    evaluate = jax.jit(loss_fn)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in range(steps):
        idx = rng.integers(0, len(train["label"]), batch)
        params, opt_state, loss = step(params, opt_state, {k: v[idx] for k, v in train.items()})
    jax.block_until_ready(loss)
    seconds = time.perf_counter() - start
    held_out = float(np.mean([float(evaluate(params, {k: v[i:i + 64] for k, v in test.items()}))
                              for i in range(0, len(test["label"]), 64)]))  # fmt: skip
    n_params = models.count_params(params)
    text_out = transformer.sample(model, {"params": params}, "The ", 80, jax.random.key(0),
                                  temperature=0.7)  # fmt: skip
    return {"block": block, "seed": seed, "params": n_params, "train_bpb_last": float(loss),
            "test_bpb": held_out, "seconds": seconds, "sample": text_out.decode("utf-8", "replace")}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--blocks", nargs="+", default=["standard", *transformer.BLOCKS[1:]])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", default=None, help="result file name (default by --quick)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.depth, args.width, args.context = 150, 2, 32, 32
        args.blocks = args.blocks if args.blocks != parser.get_default("blocks") else [
            "standard", "coupling"]
    rows = []
    for block in args.blocks:
        for seed in args.seeds:
            row = train_one(block, seed, steps=args.steps, depth=args.depth, width=args.width,
                            heads=args.heads, context=args.context, batch=args.batch,
                            lr=args.lr)  # fmt: skip
            rows.append(row)
            print(f"{block:9s} seed {seed}  params {row['params']:,}  test bpb "
                  f"{row['test_bpb']:.3f}  ({row['seconds']:.0f} s)  sample {row['sample']!r}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / (args.out or ("transformer_lm_quick.json" if args.quick else
                                  "transformer_lm.json"))
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

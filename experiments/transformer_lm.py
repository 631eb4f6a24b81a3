"""Byte-level language models on `pydoc_text`: held-out bits per byte per block kind, and a sample.

Every run is the trainer's (`revjax.train.trainer.train_and_evaluate`) on the config
`revjax/configs/lm_pydoc.py` (task "next_token", Adam with warm-up and cosine decay, gradient
clipping), with the body's block kind, size, steps and seed overridden: the same command a
user runs, `python -m revjax.train --config=lm_pydoc --config.model_kwargs.block=leapfrog`.
Every block kind trains the same `ByteLM` shape (equal parameter counts) from the same seed on
the same batches; "standard" is the stored pre-LN baseline (`byte_lm`). The held-out figure
is the trainer's test `bits_per_byte` over every test window; a sample of the trained model
(`revjax.models.transformer.sample`, loaded back with `revjax.train.load`) closes each row.

    python experiments/transformer_lm.py --quick            # about a minute on 2 CPU cores
    python experiments/transformer_lm.py --blocks standard leapfrog --seeds 0 1 2

Writes experiments/results/transformer_lm[_quick].json (rows appended per block and seed).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import jax
import ml_collections
from result_files import default_out, write_json

from revjax import configs
from revjax.models import transformer
from revjax.train import inference, trainer


def lm_config(block, seed, *, steps, depth, width, heads, context, batch, lr):
    """`lm_pydoc` with the body and the run overridden (what the command line would set)."""
    config = configs.load_config("lm_pydoc")
    config.model = "byte_lm" if block == "standard" else "rev_byte_lm"
    config.model_kwargs = ml_collections.ConfigDict(
        {"block": block, "depth": depth, "width": width, "num_heads": heads, "context": context,
         "backprop": "store" if block == "standard" else "reversible"}
    )  # fmt: skip
    config.dataset_options.context = context
    config.seed = seed
    config.num_steps = steps
    config.global_batch_size = batch
    config.optimizer.learning_rate = lr
    config.optimizer.warmup_steps = max(steps // 10, 1)
    config.log_every_steps = max(steps // 4, 1)
    config.checkpoint_every_steps = 0  # the final checkpoint only
    config.memory_report = False
    config.progress_bar = False
    config.tensorboard = False
    return config


def train_one(block, seed, **sizes):
    with tempfile.TemporaryDirectory() as workdir:
        summary = trainer.train_and_evaluate(lm_config(block, seed, **sizes), workdir)
        model, variables, _ = inference.load(workdir)
    text_out = transformer.sample(model, variables, "The ", 80, jax.random.key(0),
                                  temperature=0.7)  # fmt: skip
    return {
        "block": block,
        "seed": seed,
        "params": summary["num_params"],
        "train_bpb_last": summary["train_bits_per_byte"],
        "test_bpb": summary["bits_per_byte"],
        "seconds": summary["wall_time_s"],
        "sample": text_out.decode("utf-8", "replace"),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--out",
        default=default_out("transformer_lm.json"),
        help="result file (--quick: transformer_lm_quick.json by default)",
    )
    parser.add_argument("--blocks", nargs="+", default=["standard", *transformer.BLOCKS[1:]])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()
    if args.quick and args.out == parser.get_default("out"):
        args.out = default_out("transformer_lm_quick.json")
    if args.quick:
        args.steps, args.depth, args.width, args.context = 40, 1, 32, 32
        args.blocks = args.blocks if args.blocks != parser.get_default("blocks") else [
            "standard", "coupling"]  # fmt: skip
    sizes = {k: getattr(args, k) for k in ("steps", "depth", "width", "heads", "context",
                                           "batch", "lr")}  # fmt: skip
    out = Path(args.out)
    rows = [] if args.quick or not out.exists() else json.loads(out.read_text())["rows"]
    for block in args.blocks:
        for seed in args.seeds:
            row = {**train_one(block, seed, **sizes), **sizes}
            rows = [r for r in rows if not _same_run(r, row)] + [row]
            print(
                f"{block:9s} seed {seed}  params {row['params']:,}  test bpb "
                f"{row['test_bpb']:.3f}  ({row['seconds']:.0f} s)  sample {row['sample']!r}"
            )
            write_json(out, {"rows": rows}, quiet=True)
    print(f"wrote {out}")


def _same_run(a: dict, b: dict) -> bool:
    keys = ("block", "seed", "steps", "depth", "width", "heads", "context", "batch", "lr")
    return all(a.get(k) == b.get(k) for k in keys)


if __name__ == "__main__":
    main()

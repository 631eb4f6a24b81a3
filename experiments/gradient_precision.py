"""Float32 gradient error of every reversible zoo model against float64, at its defaults.

For each registered reversible model (registered defaults, initialisation, training mode,
batches of 4 16x16x3 images, 8x16x16x3 clips for 3D), the float32 gradient of the mean softmax
cross-entropy is computed with `backprop="reversible"` and with `backprop="store"`, and each is
compared with the float64 stored-activation gradient of the same parameters and inputs
(`revjax.precision.gradient_errors`), on three input batches: median and max (a batch whose
gradient sits within round-off of a kink shows as a max far above the median). The table also
gives the float32 reconstruction error of the body (`model.reconstruction_error`, training
mode). Compiled at XLA's default optimisation level (as users run). With `--store-every K ...`
each model is measured as registered and with its stacks storing their state every K blocks
(`store_every`, the float32 remedy for depths whose reconstruction reaches the gradient), with
the training step's compiled temp memory of both modes. Usage::

    python experiments/gradient_precision.py --quick     # one small model, < 30 s
    python experiments/gradient_precision.py             # every reversible model
    python experiments/gradient_precision.py --models hamiltonian1202 --store-every 3 11 33
"""

from __future__ import annotations

import argparse

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from result_files import default_out, write_json  # noqa: E402

from revjax import models, precision  # noqa: E402

BATCH = 4
SKIP = ("revnet104", "revup_imagenet")  # ImageNet-sized stems: not meaningful at 16x16


def input_shape(name: str) -> tuple[int, ...]:
    return (8, 16, 16, 3) if name.endswith("3d") else (16, 16, 3)


def reversible_models() -> list[str]:
    """The reversible image models of the zoo (stages; the transformers are measured in
    tests/test_transformer.py against float64)."""
    return [
        n
        for n in models.names(stages=True)
        if n not in SKIP and hasattr(models.create(n), "reconstruction_error")
    ]


def measure(name: str, seeds: int = 3, **overrides) -> dict:
    """Median and max over `seeds` input batches of each mode's error against float64."""
    model = models.create(name, **overrides)
    shape = (BATCH, *input_shape(name))
    xs = [jax.random.normal(jax.random.key(s), shape, jnp.float32) for s in range(seeds)]
    variables = jax.jit(lambda k: model.init(k, xs[0]))(jax.random.key(100))
    logits = jax.jit(lambda v: model.apply(v, xs[0]))(variables)
    batches = [
        (x, jax.random.randint(jax.random.key(50 + s), logits.shape[:-1], 0, logits.shape[-1]))
        for s, x in enumerate(xs)
    ]
    drift = jax.jit(lambda v, x: model.reconstruction_error(v, x, train=True))
    result = precision.gradient_errors(model, variables, batches)
    errors = result.errors
    row = {"model": name, "seeds": seeds, **overrides,
           "reconstruction_error": max(float(drift(variables, x)) for x in xs),
           **{f"{mode}_temp_bytes": n for mode, n in result.temp_bytes.items()}}  # fmt: skip
    for mode in ("reversible", "store"):
        values = [e[mode] for e in errors]
        row[f"{mode}_median"] = float(np.median(values))
        row[f"{mode}_max"] = float(np.max(values))
    row["ratio"] = row["reversible_median"] / max(row["store_median"], 1e-300)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small model")
    parser.add_argument("--models", nargs="*", help="names (default: every reversible model)")
    parser.add_argument("--store-every", type=int, nargs="*", default=[],
                        help="also measure with store_every=K for each K")  # fmt: skip
    parser.add_argument(
        "--out",
        default=default_out("gradient_precision.json"),
        help="(with --store-every: gradient_precision_store_every.json)",
    )
    args = parser.parse_args(argv)
    if args.store_every and args.out == parser.get_default("out"):
        args.out = default_out("gradient_precision_store_every.json")
    names = args.models or (["revnet_mini"] if args.quick else reversible_models())
    variants = [{}] + [{"store_every": k} for k in args.store_every]
    print(
        f"{'model':28s} {'every':>5s} {'reconstruction':>14s} {'reversible':>19s} "
        f"{'store':>19s} {'ratio':>6s}   (median / max over input batches)"
    )
    rows = []
    for name in names:
        for overrides in variants:
            row = measure(name, seeds=1 if args.quick else 3, **overrides)
            rows.append(row)
            print(
                f"{name:28s} {str(overrides.get('store_every', '-')):>5s} "
                f"{row['reconstruction_error']:14.1e} "
                f"{row['reversible_median']:9.1e} {row['reversible_max']:9.1e} "
                f"{row['store_median']:9.1e} {row['store_max']:9.1e} {row['ratio']:6.2f}",
                flush=True,
            )
    write_json(args.out, {"batch": BATCH, "rows": rows})
    return rows


if __name__ == "__main__":
    main()

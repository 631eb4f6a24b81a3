"""Float32 gradient error of every reversible zoo model against float64, at its defaults.

For each registered reversible model (registered defaults, initialisation, training mode,
batch 4 of 16x16x3 images, 8x16x16x3 clips for 3D), the float32 gradient of the mean softmax
cross-entropy is computed with `backprop="reversible"` and with `backprop="store"`, and each
is compared with the float64 stored-activation gradient of the same parameters and inputs
(`revjax.precision.gradient_errors`). The table also gives the float32 reconstruction error of
the body (`model.reconstruction_error`, training mode). Compiled at XLA's default optimisation
level (as users run). Usage::

    python experiments/gradient_precision.py --quick     # one small model, < 30 s
    python experiments/gradient_precision.py             # every reversible model
"""

from __future__ import annotations

import argparse

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
from result_files import default_out, write_json  # noqa: E402

from revjax import models, precision  # noqa: E402

BATCH = 4
SKIP = ("revnet104", "revup_imagenet")  # ImageNet-sized stems: not meaningful at 16x16


def input_shape(name: str) -> tuple[int, ...]:
    return (8, 16, 16, 3) if name.endswith("3d") else (16, 16, 3)


def reversible_models() -> list[str]:
    return [
        n for n in models.names()
        if n not in SKIP and hasattr(models.create(n), "reconstruction_error")
    ]


def measure(name: str) -> dict:
    model = models.create(name)
    x = jax.random.normal(jax.random.key(0), (BATCH, *input_shape(name)), jnp.float32)
    variables = jax.jit(lambda k: model.init(k, x))(jax.random.key(2))
    logits = jax.jit(lambda v: model.apply(v, x))(variables)
    labels = jax.random.randint(jax.random.key(1), logits.shape[:-1], 0, logits.shape[-1])
    drift = jax.jit(lambda v: model.reconstruction_error(v, x, train=True))(variables)
    errors = precision.gradient_errors(model, variables, x, labels)
    return {
        "model": name,
        "reconstruction_error": float(drift),
        "reversible_vs_float64": errors["reversible"],
        "store_vs_float64": errors["store"],
        "ratio": errors["reversible"] / max(errors["store"], 1e-300),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small model")
    parser.add_argument("--models", nargs="*", help="names (default: every reversible model)")
    parser.add_argument("--out", default=default_out("gradient_precision.json"))
    args = parser.parse_args(argv)
    names = args.models or (["revnet_mini"] if args.quick
                            else reversible_models())
    print(f"{'model':28s} {'reconstruction':>14s} {'reversible':>11s} {'store':>11s} {'ratio':>6s}")
    rows = []
    for name in names:
        row = measure(name)
        rows.append(row)
        print(f"{name:28s} {row['reconstruction_error']:14.1e} "
              f"{row['reversible_vs_float64']:11.1e} {row['store_vs_float64']:11.1e} "
              f"{row['ratio']:6.2f}", flush=True)
    write_json(args.out, {"batch": BATCH, "rows": rows})
    return rows


if __name__ == "__main__":
    main()

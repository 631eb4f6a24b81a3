"""Float32 reconstruction drift of reversible bodies versus depth (SPEC §8.2, §4).

For each family body -- RevNet-style additive coupling, Hamiltonian (Verlet), midpoint,
leapfrog -- at random (reference) initialisation and the default step size, at depths
10 / 100 / 1000 (--quick: 10 / 100), on CIFAR-like small shapes (batch 4, 16x16, 16 state
channels), this measures in float32:

- worst relative reconstruction error ‖x̂ − x‖/‖x‖ at the body input
  (`engine.reconstruction_error`, entry of the first layer: errors accumulate towards it);
- forward growth ‖Y_N‖/‖Y_0‖ of the features the head would read.

Bodies (one stage, no transitions):

- revnet: `couplings.additive_coupling` with F, G = conv3x3(ReLU(conv3x3(u) + b)) + no BN,
  reference init (std sqrt(2/(9 C_out))); state (x1, x2) = channel halves.
- hamiltonian: `families.chang.hamiltonian_step(h = 1.0)` (official h).
- midpoint: forward-Euler start + `midpoint_step(h = 0.1)`.
- leapfrog: zero-velocity start + `leapfrog_step(h = 0.5)`.

Expected (SPEC §8.2 lesson 1): error ≈ amplification × 1e-7; the official Hamiltonian h = 1
violates the frozen-coefficient bound h²μ ≤ 4 at this initialisation, so it grows with depth.

Usage: python experiments/reconstruction_drift.py [--quick] [--out results/reconstruction_drift]
Writes <out>.json and <out>.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import jax
import jax.numpy as jnp

from revjax import couplings, engine
from revjax.conv import conv
from revjax.families import chang
from revjax.models.chang import DEFAULT_STEP_SIZES
from revjax.models.heads import conv_init

BATCH, SIZE, WIDTH = 4, 16, 16
DTYPE = jnp.float32


def revnet_residual(p, u, rng=None):
    """conv3x3(ReLU(conv3x3(u, W1) + b), W2): a plain (BN-free) RevNet residual function."""
    return conv(jax.nn.relu(conv(u, p["W1"]) + p["b"]), p["W2"])


def init_revnet(key, depth, half):
    def one(k):
        k1, k2, k3, k4 = jax.random.split(k, 4)
        init = conv_init(3, half)
        block = {}
        for name, (ka, kb) in (("F", (k1, k2)), ("G", (k3, k4))):
            block[name] = {
                "W1": init(ka, (3, 3, half, half), DTYPE),
                "b": jnp.zeros(half, DTYPE),
                "W2": init(kb, (3, 3, half, half), DTYPE),
            }
        return block

    return jax.vmap(one)(jax.random.split(key, depth))


def family_body(family: str, depth: int, key):
    """(layers, params, input state, feature readout) of a one-stage body of `depth` blocks."""
    x = jax.random.normal(jax.random.key(1), (BATCH, SIZE, SIZE, WIDTH), DTYPE)
    if family == "revnet":
        step = couplings.additive_coupling(revnet_residual, revnet_residual, name="revnet")
        params = init_revnet(key, depth, WIDTH // 2)
        state = tuple(jnp.split(x, 2, axis=-1))
        return [engine.Scan(step)], [params], state, lambda s: jnp.concatenate(s, -1)
    config = chang.make_config(family, (depth,), (WIDTH,), DEFAULT_STEP_SIZES[family])
    tree = chang.init_body_params(key, config, DTYPE)
    layers, params = chang.body_layers(config), chang.body_params(tree, config)
    return layers, params, chang.to_state(x, config), lambda s: chang.from_state(s, config)


def measure(family: str, depth: int) -> dict:
    layers, params, state, readout = family_body(family, depth, jax.random.key(0))

    @jax.jit
    def run(params, state):
        errors = engine.reconstruction_error(layers, params, state)
        worst = jnp.max(jnp.stack([jnp.max(e) for e in errors]))
        y = engine.apply(layers, params, state)
        x0 = readout(state) if family in ("revnet", "hamiltonian") else state
        growth = jnp.linalg.norm(readout(y)) / jnp.linalg.norm(x0)
        return jnp.max(errors[0]), worst, growth

    at_input, worst, growth = (float(v) for v in run(params, state))
    return {
        "family": family,
        "depth": depth,
        "h": None if family == "revnet" else DEFAULT_STEP_SIZES[family],
        "input_error": at_input,
        "worst_error": worst,
        "growth": growth,
    }


def _finite_or_none(value):
    return value if isinstance(value, float) and math.isfinite(value) else None


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for family in dict.fromkeys(r["family"] for r in rows):
        sel = [r for r in rows if r["family"] == family]
        depths = [r["depth"] for r in sel]
        for ax, key in zip(axes, ("input_error", "growth")):
            values = [r[key] if math.isfinite(r[key]) else float("nan") for r in sel]
            ax.loglog(depths, values, "o-", label=family)
    axes[0].set(
        xlabel="depth (blocks)",
        ylabel="float32 relative error at input",
        title="reconstruction drift",
    )
    axes[1].set(xlabel="depth (blocks)", ylabel="‖Y_N‖ / ‖Y_0‖", title="forward growth")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="depths 10 and 100 only")
    parser.add_argument("--out", default="results/reconstruction_drift", help="path prefix")
    args = parser.parse_args(argv)
    depths = (10, 100) if args.quick else (10, 100, 1000)
    rows = [
        measure(f, d) for f in ("revnet", "hamiltonian", "midpoint", "leapfrog") for d in depths
    ]
    print(f"{'family':<12}{'h':>6}{'depth':>7}{'err@input':>12}{'worst err':>12}{'growth':>12}")
    for r in rows:
        h = "-" if r["h"] is None else f"{r['h']:g}"
        print(
            f"{r['family']:<12}{h:>6}{r['depth']:>7}{r['input_error']:>12.2e}"
            f"{r['worst_error']:>12.2e}{r['growth']:>12.3g}"
        )
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    setup = {
        "batch": BATCH,
        "size": SIZE,
        "width": WIDTH,
        "dtype": "float32",
        "devices": str(jax.devices()),
    }
    with open(args.out + ".json", "w") as f:
        json.dump(
            {
                "setup": setup,
                "rows": [
                    {k: _finite_or_none(v) if isinstance(v, float) else v for k, v in r.items()}
                    for r in rows
                ],
            },
            f,
            indent=2,
        )
    plot(rows, args.out + ".png")
    print(f"wrote {args.out}.json and {args.out}.png")


if __name__ == "__main__":
    main()

"""Float32 reconstruction drift of reversible bodies versus depth, float vs exact arithmetic.

For each family body -- RevNet-style additive coupling, Hamiltonian (Verlet), midpoint,
leapfrog -- at the default step size, at depths 10 / 100 / 1000 (--quick: depth 8), on small
shapes (batch 2, 8x8, 8 state channels), this measures in float32:

- worst relative reconstruction error ‖x̂ − x‖/‖x‖ at the body input
  (`engine.reconstruction_error`, entry of the first layer: errors accumulate towards it);
- forward growth ‖Y_N‖/‖Y_0‖ of the features the head would read;
- the same error for the *exact* (fixed-point, `revjax.fixed_point`, default frac_bits) version
  of the same body with the same weights and input (0.0 expected: bit-exact), and whether that
  version overflowed the fixed-point range;
- the frozen-coefficient statistic of the worst block (power iteration at the input shape):
  h²‖K_j‖²_op for Verlet / leapfrog (stable iff ≤ 4), h‖W_j − W_jᵀ‖_op for the midpoint net
  (stable for ≤ 1), ‖W2_j‖_op ‖W1_j‖_op (a Lipschitz bound of a RevNet branch).

Two weight regimes:

- "default init, i.i.d.": every block drawn independently from the reference init
  (std sqrt(2/(9 C_out)), zero biases). Parametric resonance and violated step bounds make the
  forward pass explode by depth 100, so the deep rows carry no drift information.
- "stable": kernels vary smoothly over depth, K_j = K_0 + δ (j/N) P (δ = 0.1, P a fresh
  kernel of the same std; the situation weight-smoothness decay aims for), then each block is
  rescaled, K_j ← K_j · min(1, target/σ̂_j), so that its frozen-coefficient bound holds with
  margin: h²‖K‖²_op ≤ 1 (Verlet, leapfrog; bound 4), h‖W − Wᵀ‖_op ≤ 0.5 (midpoint; bound 1),
  and for RevNet ‖W1‖_op, ‖W2‖_op ≤ sqrt(L) so each branch is L-Lipschitz (L = 0.01;
  generic F, G cannot meet the scalar condition −4 ≤ ab ≤ 0, so the branches are just small).

Bodies (one stage, no transitions):

- revnet: `couplings.additive_coupling` with F, G = conv3x3(ReLU(conv3x3(u) + b)), no BN;
  state (x1, x2) = channel halves.
- hamiltonian: `families.chang.hamiltonian_block_step` (bias block) at its registered default
  h = 0.1 (`revjax.models.chang.default_step_size`; the official code's h = 1 breaks the
  Verlet bound at the reference initialisation).
- midpoint: forward-Euler start + `chang.midpoint_block_step(h = 0.1)`.
- leapfrog: zero-velocity start + `chang.leapfrog_block_step(h = 0.5)`.

Every family's h is read from the model registry, so the table states the h the models use.

Expected: float error ≈ amplification × 1e-7 (the float32 unit round-off); exact error 0.

Usage: python experiments/reconstruction_drift.py [--quick] [--depths N ...] [--out STEM]
(--quick: depth 8 only, a smoke run of about 30 s; the committed table: no flag.)
Writes <out>.json and <out>.png (a trailing ".json" on --out is dropped).
"""

from __future__ import annotations

import argparse
import math
import os

import jax
import jax.numpy as jnp
from result_files import default_out, write_json

from revjax import couplings, engine, spectral_norm
from revjax import fixed_point as fp
from revjax.conv import conv
from revjax.families import chang
from revjax.models.chang import default_step_size
from revjax.models.heads import conv_init

BATCH, SIZE, WIDTH = 2, 8, 8
DTYPE = jnp.float32
FAMILIES = ("revnet", "hamiltonian", "midpoint", "leapfrog")
REGIMES = ("default init, i.i.d.", "stable")
DEPTHS = (10, 100, 1000)
QUICK_DEPTHS = (8,)
BLOCK = "bias"  # the one Chang block every family has; its registered h is used
SMOOTH_PERTURBATION = 0.1  # δ in K_j = K_0 + δ (j/N) P
POWER_ITERATIONS = 30
VERLET_MARGIN = 1.0  # target h²‖K‖² (frozen-coefficient bound: 4)
MIDPOINT_MARGIN = 0.5  # target h‖W − Wᵀ‖ (bound: 1)
REVNET_BRANCH_LIPSCHITZ = 0.01  # target ‖W2‖‖W1‖ per RevNet branch
# Kernel paths inside one block, per family.
KERNEL_PATHS = {
    "revnet": (("F", "W1"), ("F", "W2"), ("G", "W1"), ("G", "W2")),
    "hamiltonian": (("F", "K"), ("G", "K")),
    "midpoint": (("W",),),
    "leapfrog": (("K",),),
}


# --------------------------------------------------------------------------------------------
# Bodies.


def revnet_residual(p, u, rng=None):
    """conv3x3(ReLU(conv3x3(u, W1) + b), W2): a plain (BN-free) RevNet residual function."""
    return conv(jax.nn.relu(conv(u, p["W1"]) + p["b"]), p["W2"])


def init_revnet(key, depth, half):
    """Stacked i.i.d. RevNet blocks {"F", "G"}: {"W1", "W2"} (3, 3, half, half), "b" (half,)."""

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


def _get(tree, path):
    for part in path:
        tree = tree[part]
    return tree


def _set(tree, path, value):
    """A copy of the nested dict `tree` with tree[path] = value."""
    if not path:
        return value
    return {**tree, path[0]: _set(tree.get(path[0], {}), path[1:], value)}


def split_kernels(family, tree):
    """({path: (depth, kh, kw, C_in, C_out)} nested kernels of all blocks, rebuild(kernels)).

    `tree` is the stacked RevNet tree or `chang.init_body_params`' tree (one stage, whose
    "first" block and stacked "rest" blocks share one width); `rebuild` puts new kernels back.
    """
    kernels = {}
    for path in KERNEL_PATHS[family]:
        if family == "revnet":
            stack = _get(tree, path)
        else:
            stage = tree["stage1"]
            parts = [_get(stage["first"], path)[None]]
            if "rest" in stage:
                parts.append(_get(stage["rest"], path))
            stack = jnp.concatenate(parts)
        kernels = _set(kernels, path, stack)

    def rebuild(new):
        if family == "revnet":
            out = tree
            for path in KERNEL_PATHS[family]:
                out = _set(out, path, _get(new, path))
            return out
        stage = dict(tree["stage1"])
        for path in KERNEL_PATHS[family]:
            stack = _get(new, path)
            stage["first"] = _set(stage["first"], path, stack[0])
            if "rest" in stage:
                stage["rest"] = _set(stage["rest"], path, stack[1:])
        return {"stage1": stage}

    return kernels, rebuild


# --------------------------------------------------------------------------------------------
# Operator norms and the stable regime.


def _kernel_norm(kernel, key):
    """σ̂ ≈ ‖K‖_op of a stride-1 SAME conv on (SIZE, SIZE, C_in) inputs (power iteration)."""
    v = spectral_norm.init_power_vector(key, (SIZE, SIZE, kernel.shape[-2]), kernel.dtype)
    v = spectral_norm.power_iteration(kernel, v, POWER_ITERATIONS)
    return spectral_norm.operator_norm_estimate(kernel, v)


def _antisymmetric_norm(kernel, key):
    """σ̂ ≈ ‖W − Wᵀ‖_op by power iteration on (W − Wᵀ)ᵀ(W − Wᵀ) = −(W − Wᵀ)²."""
    op = chang.antisymmetric_conv
    v = spectral_norm.init_power_vector(key, (SIZE, SIZE, kernel.shape[-2]), kernel.dtype)

    def body(_, u):
        w = -op(op(u, kernel), kernel)
        return w / jnp.linalg.norm(w)

    v = jax.lax.fori_loop(0, POWER_ITERATIONS, body, v)
    return jnp.linalg.norm(op(v, kernel))


def stacked_norms(family, kernels):
    """{path: (depth,) operator-norm estimates} of every kernel of every block."""
    norm = _antisymmetric_norm if family == "midpoint" else _kernel_norm
    key = jax.random.key(7)
    return {
        path: jax.vmap(lambda k: norm(k, key))(_get(kernels, path)) for path in KERNEL_PATHS[family]
    }


def frozen_statistic(family, h, norms):
    """Worst block's frozen-coefficient statistic (see module docstring)."""
    if family == "revnet":
        return max(float(jnp.max(norms[(b, "W1")] * norms[(b, "W2")])) for b in ("F", "G"))
    if family == "midpoint":
        return float(h * jnp.max(norms[("W",)]))
    return max(float(h * h * jnp.max(n) ** 2) for n in norms.values())


def norm_target(family, h):
    """Largest operator norm a single kernel may have in the stable regime."""
    if family == "revnet":
        return math.sqrt(REVNET_BRANCH_LIPSCHITZ)
    if family == "midpoint":
        return MIDPOINT_MARGIN / h
    return math.sqrt(VERLET_MARGIN) / h


def smooth_over_depth(kernels, key):
    """K_j = K_0 + δ (j/N) P for every kernel path: weights that drift slowly with depth."""
    leaves, treedef = jax.tree.flatten(kernels)
    new = []
    for leaf, k in zip(leaves, jax.random.split(key, len(leaves))):
        depth = leaf.shape[0]
        direction = jax.random.normal(k, leaf.shape[1:], leaf.dtype) * jnp.std(leaf[0])
        ramp = (jnp.arange(depth, dtype=leaf.dtype) / depth)[:, None, None, None, None]
        new.append(leaf[0] + SMOOTH_PERTURBATION * ramp * direction)
    return jax.tree.unflatten(treedef, new)


def stabilise(family, h, kernels):
    """K_j ← K_j · min(1, target/σ̂_j): every block meets its bound with margin."""
    norms = stacked_norms(family, kernels)
    target = norm_target(family, h)
    for path, sigma in norms.items():
        scale = jnp.minimum(1.0, target / sigma).astype(DTYPE)
        kernels = _set(kernels, path, _get(kernels, path) * scale[:, None, None, None, None])
    return kernels


def family_body(family: str, depth: int, regime: str, key):
    """(layers, params, input state, readout, h, frozen statistic) of a one-stage body."""
    x = jax.random.normal(jax.random.key(1), (BATCH, SIZE, SIZE, WIDTH), DTYPE)
    if family == "revnet":
        h = None
        step = couplings.additive_coupling(revnet_residual, revnet_residual, name="revnet")
        layers, tree = [engine.Scan(step)], init_revnet(key, depth, WIDTH // 2)
        state = tuple(jnp.split(x, 2, axis=-1))
        to_params = lambda t: [t]  # noqa: E731
        readout = lambda s: jnp.concatenate(s, -1)  # noqa: E731
    else:
        h = default_step_size(family, BLOCK)
        config = chang.make_config(family, (depth,), (WIDTH,), h)
        layers, tree = chang.body_layers(config), chang.init_body_params(key, config, DTYPE)
        state = chang.to_state(x, config)
        to_params = lambda t: chang.body_params(t, config)  # noqa: E731
        readout = lambda s: chang.from_state(s, config)  # noqa: E731
    kernels, rebuild = split_kernels(family, tree)
    if regime == "stable":
        kernels = stabilise(family, h, smooth_over_depth(kernels, jax.random.fold_in(key, 1)))
    elif regime != REGIMES[0]:
        raise ValueError(f"unknown regime {regime!r}; use one of {REGIMES}")
    statistic = frozen_statistic(family, h, stacked_norms(family, kernels))
    return layers, to_params(rebuild(kernels)), state, readout, h, statistic


def exact_layers(family: str, h: float | None, layers) -> list:
    """The fixed-point (exact) counterpart of each layer of a one-stage body, same params."""
    res = None if h is None else chang.hamiltonian_residual(h)
    exact = {
        "revnet": lambda: fp.exact_additive_coupling(revnet_residual, revnet_residual),
        "hamiltonian": lambda: fp.exact_verlet_step(res, res),
        "midpoint": lambda: fp.exact_midpoint_step(chang.midpoint_residual, h),
        "midpoint_start": lambda: fp.exact_euler_start(chang.midpoint_residual, h),
        "leapfrog": lambda: fp.exact_leapfrog_step(chang.leapfrog_force, h),
        "duplicate_state": fp.exact_duplicate_state,
    }
    out = []
    for layer in layers:
        step = layer.step if isinstance(layer, engine.Scan) else layer
        new = exact[step.name]()
        out.append(engine.Scan(new, name=layer.name) if isinstance(layer, engine.Scan) else new)
    return out


def measure(family: str, depth: int, regime: str) -> dict:
    """One table row: errors, growth and the frozen statistic of one body."""
    layers, params, state, readout, h, statistic = family_body(
        family, depth, regime, jax.random.key(0)
    )

    @jax.jit
    def run(params, state):
        errors = engine.reconstruction_error(layers, params, state)
        worst = jnp.max(jnp.stack([jnp.max(e) for e in errors]))
        y = engine.apply(layers, params, state)
        x0 = readout(state) if family in ("revnet", "hamiltonian") else state
        growth = jnp.linalg.norm(readout(y)) / jnp.linalg.norm(x0)
        return jnp.max(errors[0]), worst, growth

    at_input, worst, growth = (float(v) for v in run(params, state))
    fixed = exact_layers(family, h, layers)

    @jax.jit
    def run_exact(params, state):
        encoded = fp.encode(state)
        errors = engine.reconstruction_error(fixed, params, encoded)
        _, aux = engine.apply_with_aux(fixed, params, encoded)
        return jnp.max(errors[0]), fp.any_overflow(aux)

    exact_error, overflow = run_exact(params, state)
    return {
        "regime": regime,
        "family": family,
        "depth": depth,
        "h": h,
        "frozen_statistic": statistic,
        "input_error": at_input,
        "worst_error": worst,
        "growth": growth,
        "exact_input_error": float(exact_error),
        "exact_overflow": bool(overflow),
    }


def _finite_or_none(value):
    return value if isinstance(value, float) and math.isfinite(value) else None


def plot(rows, path):
    """Error and growth vs depth: one colour per family, one line style per regime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = dict(zip(REGIMES, ("o:", "s-")))
    colours = dict(zip(FAMILIES, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for regime in REGIMES:
        for family in FAMILIES:
            sel = [r for r in rows if r["family"] == family and r["regime"] == regime]
            if not sel:
                continue
            depths = [r["depth"] for r in sel]
            for ax, key in zip(axes, ("input_error", "growth")):
                values = [r[key] if math.isfinite(r[key]) else float("nan") for r in sel]
                ax.loglog(
                    depths,
                    values,
                    styles[regime],
                    color=colours[family],
                    label=f"{family} ({regime})",
                )
    axes[0].set(
        xlabel="depth (blocks)",
        ylabel="float32 relative error at input",
        title="reconstruction drift",
    )
    axes[1].set(xlabel="depth (blocks)", ylabel="‖Y_N‖ / ‖Y_0‖", title="forward growth")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def output_stem(out: str) -> str:
    """--out is a stem: "results/x.json" -> "results/x" (files become x.json and x.png)."""
    root, ext = os.path.splitext(out)
    return root if ext.lower() in (".json", ".png") else out


def print_table(rows):
    print(
        f"{'regime':<22}{'family':<12}{'h':>5}{'depth':>7}{'frozen':>9}"
        f"{'err@input':>12}{'worst err':>12}{'growth':>12}{'exact err':>12}"
    )
    for r in rows:
        h = "-" if r["h"] is None else f"{r['h']:g}"
        print(
            f"{r['regime']:<22}{r['family']:<12}{h:>5}{r['depth']:>7}"
            f"{r['frozen_statistic']:>9.3g}{r['input_error']:>12.2e}"
            f"{r['worst_error']:>12.2e}{r['growth']:>12.3g}"
            f"{r['exact_input_error']:>10.2g}{' (ovf)' if r['exact_overflow'] else ''}"
        )
    print(
        "frozen = worst block's h²‖K‖² (Verlet, leapfrog; stable ≤ 4), h‖W−Wᵀ‖ (midpoint; ≤ 1), "
        "‖W2‖‖W1‖ (RevNet branch Lipschitz bound)"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="depth 8 only (smoke run)")
    parser.add_argument(
        "--out", default=default_out("reconstruction_drift"), help="output stem (<out>.json, .png)"
    )
    parser.add_argument("--depths", type=int, nargs="*", help="override the depths")
    args = parser.parse_args(argv)
    out = output_stem(args.out)
    depths = QUICK_DEPTHS if args.quick else DEPTHS
    depths = tuple(args.depths) if args.depths else depths
    rows = [measure(f, d, r) for r in REGIMES for f in FAMILIES for d in depths]
    print_table(rows)
    setup = {
        "batch": BATCH,
        "size": SIZE,
        "width": WIDTH,
        "dtype": "float32",
        "smooth_perturbation": SMOOTH_PERTURBATION,
        "power_iterations": POWER_ITERATIONS,
        "stable_targets": {
            "verlet_leapfrog_h2_norm2": VERLET_MARGIN,
            "midpoint_h_norm": MIDPOINT_MARGIN,
            "revnet_branch_lipschitz": REVNET_BRANCH_LIPSCHITZ,
        },
        "devices": str(jax.devices()),
    }
    rows_json = [
        {k: _finite_or_none(v) if isinstance(v, float) else v for k, v in r.items()} for r in rows
    ]
    write_json(out + ".json", {"setup": setup, "rows": rows_json})
    plot(rows, out + ".png")
    print(f"wrote {out}.png")


if __name__ == "__main__":
    main()

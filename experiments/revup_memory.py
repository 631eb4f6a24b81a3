"""RevUp memory, speed and fixed-point cost vs depth.

RevUp ("Reversible Fixup Networks for Memory-Efficient Training", 2019) claims memory constant in
depth. For revup20/56/110 at CIFAR shape (32x32x3) this reports, per backprop mode
("reversible", "store", "remat"):

- compiled temporary bytes of one training step (loss + gradients + the spectral-norm state
  update), from `jax.jit(f).lower(...).compile().memory_analysis().temp_size_in_bytes` (exact,
  no run), at batch 128 for all modes and at batches 8 and 64 for "reversible";
- the step-time ratio against "store" (median of a few timed steps at a small batch);
- the mean number of fixed-point iterations per block that the reversible backward pass
  performs (`RevUp.fixed_point_trace`), at Fixup-init parameters perturbed so that g ≠ 0 (at
  Fixup init W2 = 0 and every solve takes one iteration), with converged power iterations.

Expected (structural, no paper numbers exist): reversible temp bytes flat in depth; store
growing linearly; remat in between. Usage::

    python experiments/revup_memory.py --quick          # < 1 min
    python experiments/revup_memory.py --memory-only    # no timing, no fixed-point trace
    python experiments/revup_memory.py --out results/revup_memory.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from revjax import models

MODES = ("reversible", "store", "remat")


def get_config(quick: bool) -> dict:
    """Full: revup20/56/110, batch 128 for memory, batch 16 for timing (3 timed steps)."""
    if quick:
        return dict(
            names=("revup20", "revup56"),
            memory_batch=128,
            reversible_batches=(8,),
            time_batch=4,
            time_steps=2,
            time_names=("revup20",),
        )
    return dict(
        names=("revup20", "revup56", "revup110"),
        memory_batch=128,
        reversible_batches=(8, 64),
        time_batch=16,
        time_steps=3,
        time_names=("revup20", "revup56", "revup110"),
    )


def perturbed(model, variables, x, scale=0.05, seed=0):
    """Parameters moved off Fixup init (g ≠ 0), power iterations re-converged (50 steps)."""
    leaves, treedef = jax.tree.flatten(variables["params"])
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    params = [a + scale * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]
    variables = {**variables, "params": treedef.unflatten(params)}
    _, stats = jax.jit(
        lambda v, x: model.clone(n_power_iterations=50).apply(
            v, x, train=True, mutable=["spectral_stats"]
        )
    )(variables, x)
    return {**variables, **stats}


def train_step_fn(model):
    def loss(params, stats, x, labels):
        logits, new_stats = model.apply(
            {"params": params, **stats}, x, train=True, mutable=["spectral_stats"]
        )
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1)), new_stats

    return jax.grad(loss, has_aux=True)


def temp_bytes(name, backprop, batch, variables):
    model = models.create(name, backprop=backprop)
    x = jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    stats = {"spectral_stats": variables["spectral_stats"]}
    compiled = jax.jit(train_step_fn(model)).lower(variables["params"], stats, x, labels).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def step_times(name, batch, steps, variables):
    x = jax.random.normal(jax.random.key(1), (batch, 32, 32, 3), jnp.float32)
    labels = jnp.arange(batch) % 10
    stats = {"spectral_stats": variables["spectral_stats"]}
    medians = {}
    for backprop in MODES:
        fn = jax.jit(train_step_fn(models.create(name, backprop=backprop)))
        jax.block_until_ready(fn(variables["params"], stats, x, labels))  # compile + warm-up
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            jax.block_until_ready(fn(variables["params"], stats, x, labels))
            times.append(time.perf_counter() - start)
        medians[backprop] = statistics.median(times)
    return {m: medians[m] / medians["store"] for m in MODES}


def mean_iterations(name, variables, batch=4):
    model = models.create(name)
    x = jax.random.normal(jax.random.key(2), (batch, 32, 32, 3), jnp.float32)
    trace = jax.jit(lambda v, x: model.apply(v, x, method="fixed_point_trace"))(variables, x)
    iters = np.concatenate([np.asarray(t.iterations) for t in trace if t is not None])
    converged = all(bool(np.all(t.converged)) for t in trace if t is not None)
    return float(iters.mean()), int(iters.max()), converged


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (< 1 min)")
    parser.add_argument("--memory-only", action="store_true", help="compile-only memory")
    parser.add_argument("--out", default="results/revup_memory.json")
    args = parser.parse_args()
    config = get_config(args.quick)
    rows = []
    for name in config["names"]:
        model = models.create(name)
        x0 = jnp.zeros((1, 32, 32, 3))
        variables = perturbed(model, model.init(jax.random.key(0), x0), x0)
        row = {"model": name}
        for backprop in MODES:
            row[f"temp_MiB_{backprop}"] = (
                temp_bytes(name, backprop, config["memory_batch"], variables) / 2**20
            )
        for batch in config["reversible_batches"]:
            row[f"temp_MiB_reversible_b{batch}"] = (
                temp_bytes(name, "reversible", batch, variables) / 2**20
            )
        if args.memory_only:
            rows.append(row)
            print(row, flush=True)
            continue
        if name in config["time_names"]:
            ratios = step_times(name, config["time_batch"], config["time_steps"], variables)
            row.update({f"time_ratio_{m}": r for m, r in ratios.items()})
        row["fp_iter_mean"], row["fp_iter_max"], row["fp_converged"] = mean_iterations(
            name, variables
        )
        rows.append(row)
        print(row, flush=True)
    header = ["model"] + [f"temp_MiB_reversible_b{b}" for b in config["reversible_batches"]]
    header += [f"temp_MiB_{m}" for m in MODES]
    header += [f"time_ratio_{m}" for m in MODES] + ["fp_iter_mean", "fp_iter_max", "fp_converged"]
    print("\n" + " | ".join(header))
    for row in rows:
        cells = []
        for key in header:
            value = row.get(key, "-")
            cells.append(f"{value:.2f}" if isinstance(value, float) else str(value))
        print(" | ".join(cells))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": config, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

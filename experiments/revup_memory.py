"""RevUp memory, speed and fixed-point cost vs depth.

RevUp ("Reversible Fixup Networks for Memory-Efficient Training", 2019) claims memory constant in
depth. For revup20/56/110 at CIFAR shape (32x32x3) this reports, per backprop mode
("reversible", "store", "remat"):

- compiled temporary bytes of one training step as `revjax.memory.model_step_memory` defines
  it (mean softmax cross-entropy, the spectral-norm vectors applied as mutable state,
  value_and_grad, then an SGD-with-momentum update with parameters and optimizer state
  donated), from XLA's memory analysis (exact, no run), at batch 128 for all modes and at
  batches 8 and 64 for "reversible";
- the step-time ratio against "store": the same compiled steps run round-robin in one process
  (`revjax.benchmark.interleaved_times`), the ratio being the median over rounds of
  t(mode) / t(store) within a round, at a small batch;
- the mean number of fixed-point iterations per block that the reversible backward pass
  performs (`RevUp.fixed_point_trace`), at Fixup-init parameters perturbed so that g ≠ 0 (at
  Fixup init W2 = 0 and every solve takes one iteration), with converged power iterations.

Expected (structural, no paper numbers exist): reversible temp bytes flat in depth; store
growing linearly; remat in between. Usage::

    python experiments/revup_memory.py --quick          # smoke run, about 30 s
    python experiments/revup_memory.py --memory-only    # no timing, no fixed-point trace
    python experiments/revup_memory.py --out experiments/results/revup_memory.json
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from result_files import default_out, write_json

from revjax import benchmark, memory, models

MODES = ("reversible", "store", "remat")
OPTIMIZER = optax.sgd(0.1, momentum=0.9)  # as in revjax/configs/cifar10_revup110.py


def get_config(quick: bool) -> dict:
    """Full: revup20/56/110, batch 128 for memory, batch 16 for timing (5 interleaved rounds)."""
    if quick:
        return dict(  # a smoke run: memory and the fixed-point trace
            names=("revup20",),
            memory_batch=8,
            reversible_batches=(4,),
            time_batch=2,
            time_rounds=2,
            time_names=(),  # the timing path compiles three more steps
        )
    return dict(
        names=("revup20", "revup56", "revup110"),
        memory_batch=128,
        reversible_batches=(8, 64),
        time_batch=16,
        time_rounds=5,
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


def temp_bytes(name, backprop, batch):
    """Compiled temp bytes of `name`'s training step (`revjax.memory.model_step_memory`)."""
    model = models.create(name, backprop=backprop)
    return memory.model_step_memory(model, (batch, 32, 32, 3), OPTIMIZER)["temp"]


def step_time_ratios(name, batch, rounds, variables):
    """{mode: t(mode) / t(store)}: the compiled training steps of every mode, interleaved."""
    params = variables["params"]
    x = jax.random.normal(jax.random.key(1), (batch, 32, 32, 3), jnp.float32)
    labels = jnp.arange(batch) % 10
    step_batch = (x, labels, {"spectral_stats": variables["spectral_stats"]})
    compiled = {
        mode: memory.compile_update_step(
            memory.model_loss(models.create(name, backprop=mode)), params, step_batch, OPTIMIZER
        )
        for mode in MODES
    }
    calls = benchmark.update_step_calls(compiled, params, OPTIMIZER.init(params), step_batch)
    summary = benchmark.summarize(benchmark.interleaved_times(calls, rounds), baseline="store")
    return {mode: summary[mode]["ratio_to_baseline"] for mode in MODES}


def mean_iterations(name, variables, batch=4):
    model = models.create(name)
    x = jax.random.normal(jax.random.key(2), (batch, 32, 32, 3), jnp.float32)
    trace = jax.jit(lambda v, x: model.apply(v, x, method="fixed_point_trace"))(variables, x)
    iters = np.concatenate([np.asarray(t.iterations) for t in trace if t is not None])
    converged = all(bool(np.all(t.converged)) for t in trace if t is not None)
    return float(iters.mean()), int(iters.max()), converged


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: revup20, small batch")
    parser.add_argument("--memory-only", action="store_true", help="compile-only memory")
    parser.add_argument("--out", default=default_out("revup_memory.json"))
    args = parser.parse_args()
    config = get_config(args.quick)
    rows = []
    for name in config["names"]:
        row = {"model": name}
        for backprop in MODES:
            row[f"temp_MiB_{backprop}"] = temp_bytes(name, backprop, config["memory_batch"]) / 2**20
        for batch in config["reversible_batches"]:
            row[f"temp_MiB_reversible_b{batch}"] = temp_bytes(name, "reversible", batch) / 2**20
        if args.memory_only:
            rows.append(row)
            print(row, flush=True)
            write_json(args.out, {"config": config, "rows": rows}, quiet=True)  # so far
            continue
        model = models.create(name)
        x0 = jnp.zeros((1, 32, 32, 3))
        variables = perturbed(model, model.init(jax.random.key(0), x0), x0)
        if name in config["time_names"]:
            ratios = step_time_ratios(name, config["time_batch"], config["time_rounds"], variables)
            row.update({f"time_ratio_{m}": r for m, r in ratios.items()})
        row["fp_iter_mean"], row["fp_iter_max"], row["fp_converged"] = mean_iterations(
            name, variables
        )
        rows.append(row)
        print(row, flush=True)
        write_json(args.out, {"config": config, "rows": rows}, quiet=True)  # so far
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
    print(f"wrote {args.out}")  # after every row, above


if __name__ == "__main__":
    main()

"""Sharded training steps vs the single-device step, run in a subprocess with 8 CPU devices.

`tests/test_sharding.py` runs this file with
`XLA_FLAGS=--xla_force_host_platform_device_count=8` (the flag must be set before JAX starts,
so it cannot share the pytest process) and checks the JSON it prints.

For each (model, mode) it trains 3 SGD-momentum steps from the same initial state:
- single device: plain `jax.jit` on device 0;
- sharded: the trainer's own shardings on a ("data", "space") mesh, `jit` with in/out
  shardings, the batch split over "data" (and one spatial axis over "space").
and reports the largest parameter difference relative to the parameter scale. Cases whose
name ends in "_f64" build the model in float64 (run with JAX_ENABLE_X64=1: sharded and single
device then agree to float64 round-off, so a real difference cannot hide in a tolerance).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from revjax import fft, models, tasks  # noqa: E402
from revjax.train import sharding, trainer  # noqa: E402

STEPS = 3

CASES = {
    # name: (registry model, overrides, input shape, num_classes[, task]); the task defaults
    # to segmentation for 5D inputs, classification otherwise.
    "revnet": ("revnet38", {"units": (1, 1, 1), "widths": (8, 16, 32)}, (8, 8, 8, 3), 4),
    "hamiltonian": (
        "hamiltonian74",
        {"units": (1, 1, 1), "widths": (8, 16, 32), "h": 0.1},
        (8, 8, 8, 3),
        4,
    ),
    "revup": ("revup20", {"units": (1, 1, 1)}, (8, 8, 8, 3), 4),
    "hyperbolic3d": (
        "hyperbolic3d",
        {"width": 4, "levels": 2, "units": 1, "num_classes": 3},
        (8, 4, 16, 8, 3),
        3,
    ),
    # Exact (fixed-point) arithmetic; run by tests/test_fixed_point_models.py, not by default.
    "hyperbolic3d_exact": (
        "hyperbolic3d",
        {"width": 4, "levels": 2, "units": 1, "num_classes": 3, "arithmetic": "exact"},
        (8, 4, 16, 8, 3),
        3,
    ),
    # Reversible transformers in float64 (tests/test_sharding.py runs them with x64 on).
    "rev_byte_lm_f64": (
        "rev_byte_lm",
        {"block": "leapfrog", "depth": 2, "width": 16, "num_heads": 2, "context": 8,
         "dropout": 0.1, "dtype": jnp.float64, "param_dtype": jnp.float64},
        (8, 8),
        256,
        "next_token",
    ),
    "rev_vit_f64": (
        "rev_vit",
        {"depth": 2, "width": 16, "num_heads": 2, "patch_size": 4, "num_classes": 4,
         "dtype": jnp.float64, "param_dtype": jnp.float64},
        (8, 8, 8, 3),
        4,
        "classification",
    ),
}  # fmt: skip

MODES = {
    # mode: (data, space, fsdp)
    "data": (8, 1, False),
    "fsdp": (8, 1, True),
    "spatial": (2, 4, False),
}


def make_batch(shape, num_classes, task):
    rng = np.random.default_rng(0)
    if task == "next_token":  # byte tokens, fed as the trainer feeds them (float32)
        image = rng.integers(0, num_classes, shape).astype(np.float32)
    else:
        image = rng.standard_normal(shape).astype(np.float32)
    label_shape = shape[:1] + tasks.get_task(task).label_shape(shape[1:])
    label = rng.integers(0, num_classes, label_shape).astype(np.int32)
    return {"image": image, "label": label}


def run_case(name: str, mode: str) -> dict:
    model_name, overrides, shape, num_classes, *task = CASES[name]
    segmentation = len(shape) == 5
    task = task[0] if task else ("segmentation" if segmentation else "classification")
    overrides = dict(overrides)
    if "num_classes" not in overrides and task != "next_token":
        overrides["num_classes"] = num_classes
    if name.endswith("_f64") and not jax.config.jax_enable_x64:
        raise SystemExit(f"case {name} needs JAX_ENABLE_X64=1")
    model = models.create(model_name, **overrides)
    tx = optax.sgd(0.05, momentum=0.9)
    step_fn = trainer.make_train_step(model, tx, optax.constant_schedule(0.05), task)
    state0 = trainer.create_state(model, tx, 0, shape[1:])
    batch = make_batch(shape, num_classes, task)

    single = jax.jit(step_fn)
    state = state0
    for _ in range(STEPS):
        state, _ = single(state, {k: jnp.asarray(v) for k, v in batch.items()})
    reference = jax.device_get(state["params"])

    data, space, fsdp = MODES[mode]
    mesh = sharding.make_mesh(data, space)
    spatial_axis = 2 if (space > 1 and segmentation) else None
    state_sh = sharding.state_shardings(mesh, state0, fsdp=fsdp, min_size=64)
    batch_sh = {
        "image": sharding.batch_sharding(mesh, len(shape), spatial_axis),
        "label": sharding.batch_sharding(
            mesh, batch["label"].ndim, spatial_axis if segmentation else None
        ),
    }
    sharded = jax.jit(
        step_fn,
        in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, sharding.replicated_sharding(mesh)),
    )
    state = jax.device_put(state0, state_sh)
    for _ in range(STEPS):
        state, _ = sharded(state, sharding.shard_batch(batch, mesh, spatial_axis))
    params = jax.device_get(state["params"])
    worst = 0.0
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):
        scale = max(float(np.max(np.abs(b))), 1e-6)
        worst = max(worst, float(np.max(np.abs(a - b))) / scale)
    sharded_leaves = sum(1 for s in jax.tree.leaves(state_sh) if any(p is not None for p in s.spec))
    return {"model": name, "mode": mode, "max_rel_diff": worst, "sharded_leaves": sharded_leaves}


def fft_sharded_case() -> dict:
    """An FFT depthwise convolution whose H axis is sharded over "space" equals the unsharded one
    (XLA gathers the transformed axis)."""
    mesh = sharding.make_mesh(2, 4)
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 4))
    k = jax.random.normal(jax.random.key(1), (3, 3, 4))
    reference = jax.jit(fft.depthwise_conv)(x, k)
    xs = jax.device_put(x, sharding.batch_sharding(mesh, 4, spatial_axis=1))
    out = jax.jit(fft.depthwise_conv)(xs, k)
    return {
        "model": "fft_depthwise",
        "mode": "spatial",
        "max_rel_diff": float(jnp.max(jnp.abs(out - reference)) / jnp.max(jnp.abs(reference))),
        "sharded_leaves": 1,
    }


def main(argv: list[str]) -> None:
    assert jax.device_count() == 8, jax.devices()
    defaults = [m for m in CASES if not m.endswith(("_exact", "_f64"))]
    requested = argv or [f"{m}:{mode}" for m in defaults for mode in ("data", "fsdp")] + [
        "hyperbolic3d:spatial"
    ]
    results = [fft_sharded_case()]
    for item in requested:
        name, mode = item.split(":")
        results.append(run_case(name, mode))
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])

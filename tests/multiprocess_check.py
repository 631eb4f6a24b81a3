"""One process of a multi-process job (started by `revjax.train.launch` in tests/test_sharding.py).

Initialises jax.distributed from the launcher's environment, builds a ("data", "space") mesh over
every process's CPU devices, feeds this process's slice of a global batch (`shard_batch`) and
computes, under jit, a data-parallel least-squares gradient in float64 (a cross-process
all-reduce). Prints one JSON line: process index/count, device counts, the gradient (which
the test compares with the single-process numpy value), the batch rows this process's
devices hold, and the error `check_process_rows` raises for a mesh in reversed process order.
"""

import json

from revjax.train import sharding

sharding.maybe_initialize_distributed()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

GLOBAL_BATCH, FEATURES = 16, 3


def global_data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(GLOBAL_BATCH, FEATURES)), rng.normal(size=(GLOBAL_BATCH,))


def main():
    x, y = global_data()
    per = GLOBAL_BATCH // jax.process_count()
    rows = slice(jax.process_index() * per, (jax.process_index() + 1) * per)
    mesh = sharding.make_mesh()
    batch = sharding.shard_batch({"x": x[rows], "y": y[rows]}, mesh)
    w = jnp.asarray([0.5, -1.0, 2.0])

    def loss(w, batch):
        return 0.5 * jnp.mean((batch["x"] @ w - batch["y"]) ** 2)

    grad = jax.jit(jax.grad(loss))(w, batch)
    sharding.check_process_rows(mesh, GLOBAL_BATCH)  # the rows this process fed: no error
    try:  # process 1's devices first: every process would feed rows its devices do not hold
        sharding.check_process_rows(sharding.make_mesh(devices=jax.devices()[::-1]), 16)
        swapped_mesh_error = ""
    except ValueError as error:
        swapped_mesh_error = str(error)
    print(
        json.dumps(
            {
                "process_index": jax.process_index(),
                "process_count": jax.process_count(),
                "device_count": jax.device_count(),
                "local_device_count": jax.local_device_count(),
                "grad": np.asarray(jax.device_get(grad)).tolist(),
                "rows": sharding.process_rows(mesh, GLOBAL_BATCH),
                "swapped_mesh_error": swapped_mesh_error,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()

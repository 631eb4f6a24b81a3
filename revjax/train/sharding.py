"""Minimal data parallelism: one mesh axis "data" over all devices, replicated train state.

A global batch (B, ...) is split along B over the devices (``NamedSharding(mesh,
P("data"))``); parameters, optimizer state and batch statistics are replicated
(``P()``), so the jitted train step's gradient mean becomes an all-reduce. Every host feeds
its own ``B / process_count`` examples (``revjax.data.make_dataset`` shards by process) and
``shard_batch`` assembles the global array from the per-host pieces.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS",
    "maybe_initialize_distributed",
    "is_multiprocess_env",
    "make_mesh",
    "check_batch_divisible",
    "batch_sharding",
    "replicated_sharding",
    "shard_batch",
]

DATA_AXIS = "data"


def is_multiprocess_env(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment describes a multi-process JAX job.

    True when ``JAX_COORDINATOR_ADDRESS`` is set, or under SLURM with ``SLURM_NTASKS > 1``,
    or with ``JAX_NUM_PROCESSES > 1``.
    """
    env = os.environ if environ is None else environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    for key in ("SLURM_NTASKS", "JAX_NUM_PROCESSES"):
        try:
            if int(env.get(key, "1")) > 1:
                return True
        except ValueError:
            pass
    return False


def maybe_initialize_distributed() -> bool:
    """Calls ``jax.distributed.initialize()`` iff ``is_multiprocess_env()``; returns whether.

    Must run before any other JAX call. JAX reads the coordinator, process count and id from
    the environment (explicit variables or the SLURM cluster detection).
    """
    if not is_multiprocess_env():
        return False
    jax.distributed.initialize()
    return True


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: all global devices)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def check_batch_divisible(global_batch_size: int, device_count: int) -> None:
    """Raises ValueError unless ``global_batch_size`` is a positive multiple of the devices."""
    if global_batch_size <= 0 or global_batch_size % device_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of the number "
            f"of devices ({device_count}) for data parallelism; e.g. use "
            f"{max(device_count, global_batch_size // device_count * device_count)}."
        )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``"data"``, other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Per-host numpy batch (B / hosts, ...) -> global jax arrays (B, ...) sharded on "data"."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }

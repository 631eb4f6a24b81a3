"""Device meshes and shardings: data parallel, FSDP, and spatial (domain) parallel.

Everything here is JAX's own SPMD machinery: a `jax.sharding.Mesh` with two axes,

    "data"   the batch is split over it (data parallelism; FSDP also splits parameters);
    "space"  one spatial axis of each example is split over it (domain parallelism for
             volumes and whole video clips that do not fit one device),

`NamedSharding`s for the batch and the train state, and `jax.jit` with in/out shardings. XLA
partitions the program: gradient all-reduces over "data", halo exchanges for convolutions and
the Haar transform at "space" shard boundaries, all-gathers for FSDP parameters. The reversible
engine (custom_vjp over scan/chain) needs nothing special: its forward and backward are
ordinary jitted programs.

The mesh axes are `AxisType.Auto` (GSPMD propagation): shapes reshaped by the Haar transform
and space-to-depth are partitioned by the compiler rather than rejected.

FFT-based operators (`revjax.fft`) transform whole spatial axes. When such an axis is sharded
over "space", XLA gathers it before the FFT: the result is exact (tested) but that operator's
memory is not divided by the number of devices. Spatial sharding pays for convolutional
(`revjax.conv`) networks such as the hyperbolic 3D network.

Multi-host: `maybe_initialize_distributed()` calls `jax.distributed.initialize()` when the
environment describes a multi-process job (SLURM with several tasks, or explicit
`JAX_COORDINATOR_ADDRESS`/`JAX_NUM_PROCESSES`, or a TPU pod slice's own metadata); each host
feeds its `B / process_count` examples and `shard_batch` assembles the global array.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS",
    "SPACE_AXIS",
    "maybe_initialize_distributed",
    "is_multiprocess_env",
    "make_mesh",
    "check_batch_divisible",
    "check_spatial_divisible",
    "batch_sharding",
    "replicated_sharding",
    "state_shardings",
    "shard_batch",
]

DATA_AXIS = "data"
SPACE_AXIS = "space"


def is_multiprocess_env(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment describes a multi-process JAX job.

    True when ``JAX_COORDINATOR_ADDRESS`` is set, or under SLURM with ``SLURM_NTASKS > 1``,
    or with ``JAX_NUM_PROCESSES > 1``, or on a multi-host TPU slice
    (``TPU_WORKER_HOSTNAMES`` lists more than one host).
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
    return len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


def maybe_initialize_distributed() -> bool:
    """Calls ``jax.distributed.initialize()`` iff ``is_multiprocess_env()``; returns whether.

    Must run before any other JAX call. JAX reads the coordinator, process count and id from
    the environment (explicit variables, SLURM or TPU cluster detection).
    """
    if not is_multiprocess_env():
        return False
    jax.distributed.initialize()
    return True


def make_mesh(data: int = -1, space: int = 1, devices: list | None = None) -> Mesh:
    """A ("data", "space") mesh over ``devices`` (default: all global devices).

    Args:
      data: size of the "data" axis; -1 = all devices not used by "space".
      space: size of the "space" axis (1 = no spatial sharding).
      devices: explicit device list (e.g. a subset, for scaling studies).
    """
    devices = jax.devices() if devices is None else list(devices)
    n = len(devices)
    if space < 1 or n % space:
        raise ValueError(
            f"mesh axis 'space' has size {space}, which does not divide the {n} devices"
        )
    if data == -1:
        data = n // space
    if data < 1 or data * space != n:
        raise ValueError(
            f"mesh shape (data={data}, space={space}) needs {data * space} devices but "
            f"{n} are available; choose sizes whose product is {n}"
        )
    grid = np.asarray(devices).reshape(data, space)
    return Mesh(grid, (DATA_AXIS, SPACE_AXIS), axis_types=(AxisType.Auto, AxisType.Auto))


def check_batch_divisible(global_batch_size: int, device_count: int) -> None:
    """Raises ValueError unless ``global_batch_size`` is a positive multiple of ``device_count``.

    ``device_count`` is the size of the "data" axis (all devices for pure data parallelism).
    """
    if global_batch_size <= 0 or global_batch_size % device_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of the number "
            f"of devices on mesh axis 'data' ({device_count}); e.g. use "
            f"{max(device_count, global_batch_size // device_count * device_count)}."
        )


def check_spatial_divisible(
    shape: tuple[int, ...], mesh: Mesh, spatial_axis: int, multiple: int = 1
) -> None:
    """The sharded spatial axis must split into equal shards whose size is a multiple of
    ``multiple`` (e.g. 2**levels, so Haar pairs never straddle a shard boundary)."""
    parts = mesh.shape[SPACE_AXIS]
    if parts == 1:
        return
    if not 0 < spatial_axis < len(shape) - 1:
        raise ValueError(
            f"spatial_axis={spatial_axis} is not a spatial axis of an input of rank "
            f"{len(shape)} (batch first, channels last)"
        )
    size = shape[spatial_axis]
    if size % (parts * multiple):
        raise ValueError(
            f"input axis {spatial_axis} has size {size}, which mesh axis 'space' "
            f"({parts} devices) cannot split into equal shards of a multiple of {multiple}"
        )


def _spec(ndim: int, spatial_axis: int | None) -> PartitionSpec:
    axes: list[Any] = [DATA_AXIS] + [None] * (ndim - 1)
    if spatial_axis is not None:
        axes[spatial_axis] = SPACE_AXIS
    return PartitionSpec(*axes)


def batch_sharding(mesh: Mesh, ndim: int = 1, spatial_axis: int | None = None) -> NamedSharding:
    """Batch axis over "data"; with ``spatial_axis``, that axis of each example over "space".

    ``ndim`` is the array rank (needed only with ``spatial_axis``); the same spatial index
    serves images (B, T, H, W, C) and their label maps (B, T, H, W).
    """
    if spatial_axis is None or mesh.shape[SPACE_AXIS] == 1:
        return NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    return NamedSharding(mesh, _spec(ndim, spatial_axis))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def _fsdp_spec(shape: tuple[int, ...], parts: int, min_size: int) -> PartitionSpec:
    """Shard the largest axis divisible by ``parts`` over "data"; small arrays replicated."""
    if parts == 1 or math.prod(shape) < min_size:
        return PartitionSpec()
    candidates = [i for i, s in enumerate(shape) if s % parts == 0]
    if not candidates:
        return PartitionSpec()
    axis = max(candidates, key=lambda i: shape[i])
    spec: list[Any] = [None] * len(shape)
    spec[axis] = DATA_AXIS
    return PartitionSpec(*spec)


def state_shardings(mesh: Mesh, state: Any, fsdp: bool = False, min_size: int = 2**12) -> Any:
    """Shardings for a train-state pytree (arrays or ShapeDtypeStructs).

    Replicated by default. With ``fsdp=True`` every array of at least ``min_size`` elements
    is split over "data" along its largest divisible axis (parameters and their optimizer
    moments alike); XLA all-gathers them where the step needs them whole and reduce-scatters
    their gradients.
    """
    replicated = replicated_sharding(mesh)
    if not fsdp:
        return jax.tree.map(lambda _: replicated, state)
    parts = mesh.shape[DATA_AXIS]
    return jax.tree.map(
        lambda leaf: NamedSharding(mesh, _fsdp_spec(tuple(np.shape(leaf)), parts, min_size)),
        state,
    )


def shard_batch(
    batch: dict[str, Any], mesh: Mesh, spatial_axis: int | None = None
) -> dict[str, jax.Array]:
    """Per-host numpy batch (B / hosts, ...) -> global jax arrays (B, ...) on the mesh."""
    return {
        k: jax.make_array_from_process_local_data(
            batch_sharding(mesh, np.ndim(v), spatial_axis if np.ndim(v) > 1 else None),
            np.asarray(v),
        )
        for k, v in batch.items()
    }

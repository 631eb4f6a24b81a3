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
environment describes a multi-process job (SLURM with several tasks, explicit
`JAX_COORDINATOR_ADDRESS`/`JAX_NUM_PROCESSES`/`JAX_PROCESS_ID`, or a TPU pod slice's own
metadata); process p feeds rows ``[p B / P, (p + 1) B / P)`` of every global batch (the
input pipeline, `revjax.data.make_dataset`, reads them from the global example stream that a
single process reads; `check_process_rows` checks the mesh puts them on p's devices) and
`shard_batch` assembles the global array. `python -m revjax.train.launch` starts N such
processes on one machine (CPU devices, gloo collectives) for testing what a multi-host job
does.
"""

from __future__ import annotations

import math
import os
import socket
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS",
    "SPACE_AXIS",
    "maybe_initialize_distributed",
    "distributed_settings",
    "wait_for_coordinator",
    "is_multiprocess_env",
    "make_mesh",
    "check_batch_divisible",
    "check_process_rows",
    "process_rows",
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


EXPLICIT_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
TIMEOUT_ENV = "REVJAX_DISTRIBUTED_TIMEOUT"
DEFAULT_TIMEOUT_S = 300


def _int_env(env, key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise ValueError(f"{key}={env[key]!r} is not an integer") from None


def distributed_settings(environ: dict[str, str] | None = None) -> dict[str, Any] | None:
    """Keyword arguments for `jax.distributed.initialize`, or None for a single process.

    Explicit launch (all three of ``JAX_COORDINATOR_ADDRESS=host:port``,
    ``JAX_NUM_PROCESSES=N``, ``JAX_PROCESS_ID=i``, as `revjax.train.launch` sets them): they are
    passed to `initialize` (JAX itself reads only the address from the environment). SLURM
    with several tasks or a multi-host TPU slice: {} plus the timeout, JAX detects the rest.
    ``REVJAX_DISTRIBUTED_TIMEOUT`` (seconds, default 300) bounds the wait for the coordinator
    and for all processes to join.

    Raises:
      ValueError: explicit variables incomplete (names the missing ones) or inconsistent
        (non-integers, N < 1, i outside [0, N), an address without a port).
    """
    env = os.environ if environ is None else environ
    timeout = _int_env(env, TIMEOUT_ENV) if env.get(TIMEOUT_ENV) else DEFAULT_TIMEOUT_S
    if timeout < 1:
        raise ValueError(f"{TIMEOUT_ENV} must be >= 1 second, got {timeout}")
    given = [k for k in EXPLICIT_ENV if env.get(k)]
    if given:
        missing = [k for k in EXPLICIT_ENV if not env.get(k)]
        if missing:
            raise ValueError(
                f"multi-process launch: {', '.join(given)} set but {', '.join(missing)} "
                "missing; set all of JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES, "
                "JAX_PROCESS_ID (or use `python -m revjax.train.launch`)"
            )
        address = env["JAX_COORDINATOR_ADDRESS"]
        num, pid = _int_env(env, "JAX_NUM_PROCESSES"), _int_env(env, "JAX_PROCESS_ID")
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"JAX_COORDINATOR_ADDRESS={address!r} must be host:port")
        if num < 1 or not 0 <= pid < num:
            raise ValueError(
                f"JAX_PROCESS_ID={pid} must lie in [0, JAX_NUM_PROCESSES={num}) and N >= 1"
            )
        return dict(
            coordinator_address=address,
            num_processes=num,
            process_id=pid,
            initialization_timeout=timeout,
        )
    if is_multiprocess_env(env):
        return dict(initialization_timeout=timeout)
    return None


def wait_for_coordinator(address: str, timeout: float, poll: float = 0.5) -> None:
    """Block until a TCP connection to the coordinator `host:port` succeeds, or raise.

    XLA's own failure to register with an absent coordinator aborts the process (SIGABRT, a C++
    stack trace); this check, run by every process but 0 before `jax.distributed.initialize`,
    turns it into a Python error naming the address, within `timeout` seconds.

    Raises:
      RuntimeError: not reachable within `timeout`.
    """
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=poll):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"coordinator {address} not reachable within {timeout} s ({error}); start "
                    "process 0 (the coordinator) on that host and port, or raise "
                    f"{TIMEOUT_ENV}"
                ) from None
            time.sleep(poll)


def maybe_initialize_distributed(environ: dict[str, str] | None = None) -> bool:
    """`jax.distributed.initialize(**distributed_settings())` for a multi-process job.

    Must run before any other JAX call. On the CPU backend the cross-process collectives are
    JAX's gloo implementation (``jax_cpu_collectives_implementation="gloo"``; the setting does
    not affect GPU/TPU backends). Returns whether a distributed runtime was started.

    Raises:
      ValueError: a malformed environment (see `distributed_settings`), before any waiting.
      RuntimeError: the coordinator was not reached, or not every process joined, within the
        timeout; the message names the address, the process and the timeout.
    """
    settings = distributed_settings(environ)
    if settings is None:
        return False
    if settings.get("process_id", 0) != 0:
        wait_for_coordinator(settings["coordinator_address"], settings["initialization_timeout"])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(**settings)
    except Exception as error:  # XlaRuntimeError (DEADLINE_EXCEEDED, UNAVAILABLE, ...)
        where = settings.get("coordinator_address", "the detected coordinator")
        who = settings.get("process_id", "?")
        raise RuntimeError(
            f"jax.distributed.initialize failed for process {who} with coordinator {where} "
            f"within {settings['initialization_timeout']} s: is the coordinator (process 0) "
            f"running and reachable, and did all processes start? ({error})"
        ) from error
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


def process_rows(mesh: Mesh, global_batch_size: int) -> list[tuple[int, int]]:
    """Sorted, merged ``[start, stop)`` row intervals of a (B, ...) batch sharded over "data"
    that this process's devices hold (`jax.make_array_from_process_local_data` fills them, in
    this order, from the process's local batch)."""
    sharding = batch_sharding(mesh)
    indices = sharding.addressable_devices_indices_map((global_batch_size,)).values()
    rows = sorted({s[0].indices(global_batch_size)[:2] for s in indices})
    merged: list[tuple[int, int]] = []
    for start, stop in rows:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(stop, merged[-1][1]))
        else:
            merged.append((start, stop))
    return merged


def check_process_rows(mesh: Mesh, global_batch_size: int) -> None:
    """The input pipeline (`revjax.data.make_dataset`) feeds process p the rows
    ``[p b, (p + 1) b)`` of every global batch (``b = B / process_count``); the mesh must put
    exactly those rows on p's devices, as a mesh over ``jax.devices()`` (ordered by process)
    does.

    Raises:
      ValueError: this process's devices hold other rows (a device order that interleaves
        processes along "data"), which would silently train on other global batches.
    """
    local = global_batch_size // jax.process_count()
    expected = [(jax.process_index() * local, (jax.process_index() + 1) * local)]
    held = process_rows(mesh, global_batch_size)
    if held != expected:
        raise ValueError(
            f"process {jax.process_index()}'s devices hold rows {held} of each global batch "
            f"of {global_batch_size}, but the input pipeline feeds it rows {expected}; build "
            "the mesh over jax.devices() in process order (revjax.train.sharding.make_mesh)"
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

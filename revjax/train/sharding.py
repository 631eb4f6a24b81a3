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
`JAX_COORDINATOR_ADDRESS`/`JAX_NUM_PROCESSES`/`JAX_PROCESS_ID`, or a TPU pod slice's own metadata);
process p feeds rows ``[p B / P, (p + 1) B / P)`` of every global batch (the input pipeline,
`revjax.data.make_dataset`, reads them from the global example stream that a single process reads;
`check_process_rows` checks the mesh puts them on p's devices) and `shard_batch` assembles the
global array. `python -m revjax.train.launch` starts N such processes on one machine (CPU devices,
gloo collectives) for testing what a multi-host job does.

Failure modes of a multi-process job, each a clear error in bounded time:

* coordinator unreachable: `wait_for_coordinator` / `maybe_initialize_distributed` raise
  within ``REVJAX_DISTRIBUTED_TIMEOUT`` seconds;
* processes launched with different configs: `check_same_across_processes` (called by the
  trainer before anything is compiled) raises naming each differing field and its values;
* a process dies (SIGKILL, OOM, node failure): a survivor blocked in a collective gets a connection
  error (`is_peer_failure`) and `exit_on_peer_failure` ends it with ``EXIT_PEER_LOST`` and a
  one-line message, skipping the distributed shutdown barrier that would wait for the dead process;
  a survivor not in a collective is terminated by JAX's coordination service once the dead process
  has missed heartbeats for ``REVJAX_HEARTBEAT_TIMEOUT`` seconds. Rerunning the same launch resumes
  every process from the last complete checkpoint."""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import time
from collections.abc import Iterator, Mapping
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
    "check_same_across_processes",
    "wait_for_all_processes",
    "ProcessesNotReadyError",
    "is_peer_failure",
    "exit_on_peer_failure",
    "EXIT_PEER_LOST",
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
    (``TPU_WORKER_HOSTNAMES`` lists more than one host)."""
    env = os.environ if environ is None else environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    for key in ("SLURM_NTASKS", "JAX_NUM_PROCESSES"):
        with contextlib.suppress(ValueError):
            if int(env.get(key, "1")) > 1:
                return True
    return len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


EXPLICIT_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
TIMEOUT_ENV = "REVJAX_DISTRIBUTED_TIMEOUT"
DEFAULT_TIMEOUT_S = 300
HEARTBEAT_ENV = "REVJAX_HEARTBEAT_TIMEOUT"
DEFAULT_HEARTBEAT_S = 60
SHUTDOWN_ENV = "REVJAX_SHUTDOWN_TIMEOUT"
DEFAULT_SHUTDOWN_S = 120
EXIT_PEER_LOST = 76  # another process of the job died; rerun the whole job to resume


def _int_env(env, key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise ValueError(f"{key}={env[key]!r} is not an integer") from None


def _seconds_env(env, key: str, default: int) -> int:
    value = _int_env(env, key) if env.get(key) else default
    if value < 1:
        raise ValueError(f"{key} must be >= 1 second, got {value}")
    return value


def distributed_settings(environ: dict[str, str] | None = None) -> dict[str, Any] | None:
    """Keyword arguments for `jax.distributed.initialize`, or None for a single process.

    Explicit launch (all three of ``JAX_COORDINATOR_ADDRESS=host:port``, ``JAX_NUM_PROCESSES=N``,
    ``JAX_PROCESS_ID=i``, as `revjax.train.launch` sets them): they are passed to `initialize` (JAX
    itself reads only the address from the environment). SLURM with several tasks or a multi-host
    TPU slice: only the timeouts, JAX detects the rest. Timeouts (seconds, from the environment):

    * ``REVJAX_DISTRIBUTED_TIMEOUT`` (default 300): the wait for the coordinator and for all
      processes to join (``initialization_timeout``);
    * ``REVJAX_HEARTBEAT_TIMEOUT`` (default 60; JAX's own is 100): a process silent that long
      is declared dead and the coordination service terminates the others
      (``heartbeat_timeout_seconds``);
    * ``REVJAX_SHUTDOWN_TIMEOUT`` (default 120; JAX's 300): the exit barrier's wait for the
      other processes (``shutdown_timeout_seconds``).

    Raises:
      ValueError: explicit variables incomplete (names the missing ones) or inconsistent
        (non-integers, N < 1, i outside [0, N), an address without a port), or a timeout
        that is not a positive integer.
    """
    env = os.environ if environ is None else environ
    timeout = _seconds_env(env, TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
    timeouts = dict(
        initialization_timeout=timeout,
        heartbeat_timeout_seconds=_seconds_env(env, HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S),
        shutdown_timeout_seconds=_seconds_env(env, SHUTDOWN_ENV, DEFAULT_SHUTDOWN_S),
    )
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
        return dict(coordinator_address=address, num_processes=num, process_id=pid, **timeouts)
    if is_multiprocess_env(env):
        return timeouts
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
                    f"process 0 (the coordinator) on that host and port, or raise {TIMEOUT_ENV}"
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


class ProcessesNotReadyError(RuntimeError):
    """Another process of the job did not reach a rendezvous within the timeout."""


def _distributed_client():
    """JAX's distributed-runtime client (its key-value store); the one orbax also uses."""
    from jax._src import distributed  # no public accessor in jax 0.10

    client = distributed.global_state.client
    if client is None:
        raise RuntimeError("jax.distributed is not initialized in this multi-process job")
    return client


def _differences(fields: Mapping[str, Any], others: Mapping[int, Mapping[str, Any]]) -> list[str]:
    """Lines "field: process 0 X, process 1 Y" for each field that is not equal everywhere."""
    everyone = {jax.process_index(): dict(fields), **{p: dict(f) for p, f in others.items()}}
    keys = sorted(set().union(*everyone.values()))
    lines = []
    for key in keys:
        values = {p: everyone[p].get(key, "<unset>") for p in sorted(everyone)}
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1:
            lines.append(f"{key}: " + ", ".join(f"process {p} {v!r}" for p, v in values.items()))
    return lines


def check_same_across_processes(
    fields: Mapping[str, Any], what: str = "run config", timeout_s: float | None = None
) -> None:
    """Every process of the job must hold equal ``fields`` (a flat {name: JSON value} dict).

    Each process publishes its fields (JSON) in the distributed runtime's key-value store under
    ``revjax/<what>/<process index>`` and reads every other process's (no compiled collective:
    it runs before anything is traced). A no-op in a single-process run.

    Args:
      fields: e.g. the flattened config and the workdir.
      what: names the key and the error.
      timeout_s: the wait for the other processes' values (default ``REVJAX_DISTRIBUTED_TIMEOUT``).

    Raises:
      ValueError: some field differs; the message names each such field with every
        process's value (the same message on every process).
      ProcessesNotReadyError: a process did not publish its values within ``timeout_s``.
    """
    if jax.process_count() == 1:
        return
    if timeout_s is None:
        timeout_s = _seconds_env(os.environ, TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
    client = _distributed_client()
    key = "revjax/" + what.replace(" ", "_") + "/{}"
    me = jax.process_index()
    client.key_value_set(key.format(me), json.dumps(dict(fields), sort_keys=True, default=str))
    others = {}
    for p in range(jax.process_count()):
        if p == me:
            continue
        try:
            text = client.blocking_key_value_get(key.format(p), int(timeout_s * 1000))
        except Exception as error:  # XlaRuntimeError DEADLINE_EXCEEDED
            raise ProcessesNotReadyError(
                f"process {p} did not publish its {what} within {timeout_s} s (did it start, "
                f"or did it fail before?): {str(error).splitlines()[0]}"
            ) from None
        others[p] = json.loads(text)
    lines = _differences(json.loads(json.dumps(dict(fields), default=str)), others)
    if lines:
        raise ValueError(
            f"the processes of this job were started with different {what}s; every process "
            "must run the same command:\n  " + "\n  ".join(lines)
        )


def wait_for_all_processes(name: str, timeout_s: float | None = None) -> None:
    """Blocks until every process of the job has called this with the same ``name`` (a
    coordination-service barrier; a no-op for one process).

    JAX's CPU (gloo) collectives give a process only 30 s to meet the others at a collective;
    processes that compile at different speeds meet here first, under ``timeout_s`` (default
    ``REVJAX_DISTRIBUTED_TIMEOUT``).

    Raises:
      ProcessesNotReadyError: not every process arrived within ``timeout_s``.
    """
    if jax.process_count() == 1:
        return
    if timeout_s is None:
        timeout_s = _seconds_env(os.environ, TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
    try:
        _distributed_client().wait_at_barrier(f"revjax/{name}", int(timeout_s * 1000))
    except Exception as error:  # XlaRuntimeError DEADLINE_EXCEEDED / barrier failed
        raise ProcessesNotReadyError(
            f"not every process reached {name!r} within {timeout_s} s (one stopped, or is far "
            f"behind; raise {TIMEOUT_ENV}): {str(error).splitlines()[0]}"
        ) from None


# Substrings of the errors a process gets when another process of the job has died: gloo's
# broken connection inside a collective (CPU), NCCL's, and the coordination service's.
PEER_FAILURE_MARKERS = (
    "Gloo",
    "Connection closed by peer",
    "Connection reset by peer",
    "NCCL",
    "heartbeat",
    "CoordinationService",
    "coordination service",
    "Barrier failed",
)


def is_peer_failure(error: BaseException) -> bool:
    """Whether ``error`` says another process of a multi-process job is gone."""
    text = f"{type(error).__name__}: {error}"
    return jax.process_count() > 1 and any(m in text for m in PEER_FAILURE_MARKERS)


@contextlib.contextmanager
def exit_on_peer_failure(resume_hint: str = "") -> Iterator[None]:
    """Ends this process with ``EXIT_PEER_LOST`` and one line on stderr when the body fails
    because another process died (`is_peer_failure`); other errors propagate unchanged.

    The exit skips Python's atexit handlers: JAX's distributed shutdown barrier would otherwise
    wait for the dead process until the heartbeat timeout and then abort with a C++ trace."""
    try:
        yield
    except Exception as error:
        if not is_peer_failure(error):
            raise
        first = next((ln.strip() for ln in str(error).splitlines() if ln.strip()), "")
        print(
            f"error: process {jax.process_index()} of {jax.process_count()}: another process "
            f"of this job stopped or fell behind ({type(error).__name__}: {first[:300]}); "
            f"stopping too. {resume_hint}".rstrip(),
            file=sys.stderr,
            flush=True,
        )
        sys.stdout.flush()
        os._exit(EXIT_PEER_LOST)


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

    ``device_count`` is the size of the "data" axis (all devices for pure data parallelism)."""
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
    """The input pipeline (`revjax.data.make_dataset`) feeds process p the rows ``[p b, (p + 1) b)``
    of every global batch (``b = B / process_count``); the mesh must put exactly those rows on p's
    devices, as a mesh over ``jax.devices()`` (ordered by process) does.

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


def batch_sharding(mesh: Mesh, ndim: int = 1, spatial_axis: int | None = None) -> NamedSharding:
    """Batch axis over "data"; with ``spatial_axis``, that axis of each example over "space".

    ``ndim`` is the array rank (needed only with ``spatial_axis``); the same spatial index
    serves images (B, T, H, W, C) and their label maps (B, T, H, W)."""
    if spatial_axis is None or mesh.shape[SPACE_AXIS] == 1:
        return NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    axes: list[Any] = [DATA_AXIS] + [None] * (ndim - 1)
    axes[spatial_axis] = SPACE_AXIS
    return NamedSharding(mesh, PartitionSpec(*axes))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def _fsdp_spec(shape: tuple[int, ...], parts: int, min_size: int) -> PartitionSpec:
    """Shard the largest axis divisible by ``parts`` over "data"; small arrays replicated."""
    candidates = [i for i, s in enumerate(shape) if s % parts == 0]
    if parts == 1 or math.prod(shape) < min_size or not candidates:
        return PartitionSpec()
    axis = max(candidates, key=lambda i: shape[i])
    spec: list[Any] = [None] * len(shape)
    spec[axis] = DATA_AXIS
    return PartitionSpec(*spec)


def state_shardings(mesh: Mesh, state: Any, fsdp: bool = False, min_size: int = 2**12) -> Any:
    """Shardings for a train-state pytree (arrays or ShapeDtypeStructs).

    Replicated by default. With ``fsdp=True`` every array of at least ``min_size`` elements is split
    over "data" along its largest divisible axis (parameters and their optimizer moments alike); XLA
    all-gathers them where the step needs them whole and reduce-scatters their gradients."""
    if not fsdp:
        return jax.tree.map(lambda _: replicated_sharding(mesh), state)
    parts = mesh.shape[DATA_AXIS]
    return jax.tree.map(
        lambda leaf: NamedSharding(mesh, _fsdp_spec(tuple(np.shape(leaf)), parts, min_size)), state
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

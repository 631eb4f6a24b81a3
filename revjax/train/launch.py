"""Start an N-process JAX job on this machine: what a multi-host launch does, on one host.

Each process gets ``JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT``, ``JAX_NUM_PROCESSES=N`` and
``JAX_PROCESS_ID=i`` (read by `revjax.train.sharding.maybe_initialize_distributed`) and, with
``--cpu-devices K``, ``JAX_PLATFORMS=cpu`` and ``--xla_force_host_platform_device_count=K``
(K host CPU devices per process; cross-process collectives over gloo). Usage::

    python -m revjax.train.launch --num-processes 2 --cpu-devices 2 -- \\
        python -m revjax.train --config=default:smoke --workdir=/tmp/mp

If any process exits with a non-zero status (or is killed), the launcher says which process
and how, terminates the others (SIGTERM, then SIGKILL after ``--grace`` seconds) and exits with
that status (a signal: 128 + its number, as a shell reports it); ``--timeout`` bounds the whole
job. A process's output lines are prefixed with ``[i]``. Rerunning the same command after such
a failure resumes the training run from its last complete checkpoint.

Quiet by default: processes get ``TF_CPP_MIN_LOG_LEVEL=1`` (XLA's C++ INFO lines off, warnings
and errors kept; a value already in the environment wins) and gloo's "[Gloo] Rank i is
connected to N peer ranks" lines (printed unconditionally by jaxlib's gloo, one per process)
are not relayed; ``--verbose`` relays everything. ``python -m revjax.train`` sets absl logging
to WARNING before ``jax.distributed.initialize``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["free_port", "process_env", "describe_status", "launch", "main", "is_noise"]

# Informational lines of a healthy start that the launcher does not relay (unless verbose).
NOISE = (re.compile(r"^\[Gloo\] Rank \d+ is connected to \d+ peer ranks\."),)


def is_noise(line: str) -> bool:
    """Whether `line` is a known informational line of a healthy start (never an error)."""
    return any(p.match(line) for p in NOISE)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for the coordinator)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(
    base: dict[str, str], process_id: int, num_processes: int, port: int, cpu_devices: int | None
) -> dict[str, str]:
    """The environment of process `process_id` of an N-process job coordinated on 127.0.0.1."""
    env = dict(base)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # C++ INFO off; warnings and errors kept
    env.update(
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_NUM_PROCESSES=str(num_processes),
        JAX_PROCESS_ID=str(process_id),
    )
    if cpu_devices:
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
        flags.append(f"--xla_force_host_platform_device_count={cpu_devices}")
        env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags))
    return env


def describe_status(status: int) -> str:
    """Says "exited with status 3" or "was killed by SIGKILL" (negative: a Popen signal)."""
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


def _relay(stream, prefix: str, out, verbose: bool = False) -> None:
    for line in iter(stream.readline, ""):
        if not verbose and is_noise(line):
            continue
        out.write(f"{prefix}{line}")
        out.flush()


def _stop(procs, grace: float, out) -> None:
    """SIGTERM to every running process, SIGKILL to those still running `grace` s later; says
    how each of them ended."""
    running = [i for i, p in enumerate(procs) if p.poll() is None]
    for i in running:
        procs[i].send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for i in running:
        try:
            procs[i].wait(timeout=max(0.0, deadline - time.monotonic()))
            out.write(f"launch: process {i} {describe_status(procs[i].returncode)}\n")
        except subprocess.TimeoutExpired:
            procs[i].kill()
            procs[i].wait()
            out.write(f"launch: process {i} still running {grace} s after SIGTERM; killed\n")


def launch(
    command: list[str],
    num_processes: int,
    *,
    cpu_devices: int | None = None,
    port: int | None = None,
    timeout: float | None = None,
    grace: float = 10.0,
    env: dict[str, str] | None = None,
    out=None,
    on_start: Callable[[list[subprocess.Popen]], None] | None = None,
    verbose: bool = False,
) -> int:
    """Run `command` as processes 0..N-1; returns 0 when all succeed, else the first failure's
    exit status (negative: killed by that signal; 124: the job exceeded `timeout`).

    `on_start(processes)`, if given, is called once all N processes have started (e.g. to watch or
    signal one of them). `verbose` relays the known informational lines (``is_noise``) too."""
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if not command:
        raise ValueError("no command to launch")
    out = sys.stdout if out is None else out
    port = free_port() if port is None else port
    base = dict(os.environ if env is None else env)
    procs, relays = [], []
    for i in range(num_processes):
        p = subprocess.Popen(
            command,
            env=process_env(base, i, num_processes, port, cpu_devices),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(p)
        t = threading.Thread(target=_relay, args=(p.stdout, f"[{i}] ", out, verbose), daemon=True)
        t.start()
        relays.append(t)
    if on_start is not None:
        on_start(procs)
    start, status = time.monotonic(), 0
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                index, status = failed[0]
                out.write(
                    f"launch: process {index} {describe_status(status)}; stopping the "
                    "other processes\n"
                )
                break
            if all(c == 0 for c in codes):
                break
            if timeout is not None and time.monotonic() - start > timeout:
                out.write(f"launch: job exceeded {timeout} s; stopping all processes\n")
                status = 124
                break
            time.sleep(0.1)
    finally:
        _stop(procs, grace, out)
        for p, t in zip(procs, relays):
            t.join(timeout=5)
            p.stdout.close()
    if status:
        out.write(
            f"launch: all processes stopped (status {status}); rerun the same command to resume "
            "from the last complete checkpoint\n"
        )
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-processes", "-n", type=int, required=True)
    parser.add_argument("--cpu-devices", type=int, default=None, help="host CPU devices each")
    parser.add_argument("--port", type=int, default=None, help="coordinator port (default: free)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds for the whole job")
    parser.add_argument("--grace", type=float, default=10.0, help="SIGTERM -> SIGKILL seconds")
    parser.add_argument("--verbose", action="store_true", help="relay gloo's info lines too")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- command ...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    status = launch(
        command,
        args.num_processes,
        cpu_devices=args.cpu_devices,
        port=args.port,
        timeout=args.timeout,
        grace=args.grace,
        verbose=args.verbose,
    )
    return 128 - status if status < 0 else status  # killed by signal s: 128 + s, as a shell


if __name__ == "__main__":
    sys.exit(main())

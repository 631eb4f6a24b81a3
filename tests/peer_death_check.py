"""One process of a 2-process job in which process 1 dies (tests/test_sharding.py).

Both processes run data-parallel all-reduces (gloo) in a loop under
`sharding.exit_on_peer_failure`; after 5 of them process 1 SIGKILLs itself. Process 0, blocked in
the next all-reduce, must leave on its own with `sharding.EXIT_PEER_LOST` and a one-line
message, not hang until the distributed shutdown barrier gives up.

With ``PEER_DEATH_IDLE=1`` process 0 instead sleeps outside any collective after the 5 steps
(as a process busy with I/O would): JAX's coordination service must end it once process 1 has
missed heartbeats for ``REVJAX_HEARTBEAT_TIMEOUT`` seconds.
"""

import os
import signal
import time

from revjax.train import sharding

sharding.maybe_initialize_distributed()

import jax  # noqa: E402
import numpy as np  # noqa: E402


def main():
    mesh = sharding.make_mesh()
    total = jax.jit(lambda x: x.sum())
    with sharding.exit_on_peer_failure("Rerun the job."):
        for step in range(100_000):
            x = sharding.shard_batch({"x": np.ones((jax.local_device_count(),), np.float32)}, mesh)
            assert float(total(x["x"])) == jax.device_count()
            if step == 5 and jax.process_index() == 1:
                print("process 1: SIGKILL", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.01)
            if step == 5 and os.environ.get("PEER_DEATH_IDLE") == "1":
                time.sleep(300)


if __name__ == "__main__":
    main()

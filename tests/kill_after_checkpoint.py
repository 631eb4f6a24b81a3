"""`python -m revjax.train` in which process 1 SIGKILLs itself once its checkpoint at step
``REVJAX_TEST_KILL_AFTER_STEP`` is written (tests/test_sharding.py: a process dying mid-run).

Arguments are those of ``python -m revjax.train``. Only this test wrapper kills; the trainer
is unchanged.
"""

import os
import signal
import sys

from revjax.train import __main__ as cli
from revjax.train import checkpointing

KILL_AFTER_STEP = int(os.environ["REVJAX_TEST_KILL_AFTER_STEP"])
_save = checkpointing.Checkpointer.save


def save_then_die(self, step, *args, **kwargs):
    """The original save; in process 1 at the chosen step, wait for it, then SIGKILL."""
    result = _save(self, step, *args, **kwargs)
    if step == KILL_AFTER_STEP and os.environ.get("JAX_PROCESS_ID") == "1":
        self.wait()
        print(f"process 1: SIGKILL after the checkpoint at step {step}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return result


checkpointing.Checkpointer.save = save_then_die

if __name__ == "__main__":
    sys.argv[0] = "revjax.train"
    cli.run()

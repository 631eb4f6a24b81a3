"""Training: ``python -m revjax.train --config=<name|path> --workdir=<dir>``.

Public API:

* ``train_and_evaluate(config, workdir) -> summary dict`` (``revjax.train.trainer``);
* ``load(workdir, step=None) -> (model, variables, config)`` of a trained run;
  ``predict(workdir, images)`` (logits) and ``evaluate(workdir, (images, labels))`` (the
  task's report) without the training data;
* ``make_train_step``, ``make_eval_step``, ``create_state``, ``build_model``;
* ``make_optimizer`` (``revjax.train.optim``); ``Checkpointer`` (``checkpointing``);
  ``make_mesh``, ``maybe_initialize_distributed`` (``sharding``); ``train_step_memory``
  (compiled memory of the trainer's step, ``revjax.memory``). Named configs are loaded with
  ``revjax.configs.load_config(name, arg)``."""

from revjax.train.checkpointing import Checkpointer, IncompatibleCheckpointError
from revjax.train.inference import evaluate, load, predict
from revjax.train.optim import make_optimizer
from revjax.train.sharding import make_mesh, maybe_initialize_distributed
from revjax.train.trainer import (
    NonFiniteLossError,
    ReconstructionDriftError,
    build_model,
    create_state,
    make_eval_step,
    make_train_step,
    train_and_evaluate,
    train_step_memory,
)

__all__ = [
    "Checkpointer",
    "IncompatibleCheckpointError",
    "NonFiniteLossError",
    "ReconstructionDriftError",
    "build_model",
    "create_state",
    "evaluate",
    "load",
    "make_eval_step",
    "make_optimizer",
    "make_mesh",
    "make_train_step",
    "maybe_initialize_distributed",
    "predict",
    "train_and_evaluate",
    "train_step_memory",
]

"""``load(workdir) -> (model, variables, config)``: a trained run, ready for inference.

>>> model, variables, config = load("workdir/default")          # doctest: +SKIP
>>> logits = model.apply(variables, images, train=False)        # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from revjax import data as data_lib

__all__ = ["load", "config_from_json"]


def _tuples(value: Any) -> Any:
    """JSON lists back to tuples (configs write tuples, e.g. ``widths``, as lists)."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def config_from_json(config: dict[str, Any]) -> ml_collections.ConfigDict:
    """ConfigDict of a config saved as JSON (``config.json`` or a checkpoint's item)."""
    return ml_collections.ConfigDict(_tuples(config))


def load(
    workdir: str | os.PathLike, step: int | None = None
) -> tuple[Any, dict[str, Any], ml_collections.ConfigDict]:
    """Loads the model, its variables and its config from a training workdir.

    Args:
      workdir: a ``python -m revjax.train`` / ``train_and_evaluate`` output directory.
      step: checkpoint step to load; None = the latest.

    Returns:
      (model, variables, config): the linen module built from the checkpoint's own config,
      ``{"params": ..., **other collections (e.g. "batch_stats")}`` for
      ``model.apply(variables, x, train=False)``, and that config. In-memory datasets
      (``revjax.data.register_arrays``) must be registered again before loading.

    Raises:
      FileNotFoundError: no checkpoint (or not ``step``) in ``workdir``.
    """
    from revjax.train import optim, trainer

    directory = Path(workdir).expanduser().absolute() / "checkpoints"
    manager = ocp.CheckpointManager(directory, item_names=("state", "data", "config"))
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {directory}; train first")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise FileNotFoundError(f"no checkpoint at step {step} in {directory}; have {steps}")
        saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        config = config_from_json(dict(saved["config"]))
        info = data_lib.dataset_info(config.dataset, **data_lib.dataset_kwargs(config))
        model = trainer.build_model(config, info)
        steps_per_epoch = max(info.num_train // config.global_batch_size, 1)
        tx, _ = optim.make_optimizer(config, steps_per_epoch, max(int(config.num_steps), 1))
        abstract = jax.eval_shape(
            lambda: trainer.create_state(model, tx, config.seed, info.image_shape)
        )
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )
    finally:
        manager.close()
    state = restored["state"]
    variables = {"params": state["params"], **state.get("model_state", {})}
    return model, variables, config

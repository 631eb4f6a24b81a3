"""Compiled memory of a training step, per backprop mode, without running it.

XLA's ``memory_analysis()`` of the compiled executable reports ``temp_size_in_bytes``: the
scratch memory the step needs beyond its arguments and outputs, i.e. mostly the activations
kept for the backward pass. Lowering from ``jax.ShapeDtypeStruct`` allocates nothing, so this
is exact and cheap even for models that would not fit.

>>> temp = train_step_memory(config, modes=("reversible", "store"))   # doctest: +SKIP
>>> temp["store"] / temp["reversible"]                                 # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "compiled_temp_bytes",
    "train_step_temp_bytes",
    "train_step_memory",
    "segmentation_step_memory",
]


def compiled_temp_bytes(compiled: Any) -> int:
    """``temp_size_in_bytes`` of a ``jax.stages.Compiled`` (0 if the backend reports none)."""
    analysis = compiled.memory_analysis()
    return int(getattr(analysis, "temp_size_in_bytes", 0) or 0) if analysis is not None else 0


def _abstract(tree: Any) -> Any:
    """Shapes, dtypes and (when present) shardings: a sharded step is measured per device."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            jnp.shape(x), x.dtype, sharding=getattr(x, "sharding", None)
        ),
        tree,
    )


def train_step_temp_bytes(step_fn: Callable, state: Any, batch: Any) -> int:
    """Temp bytes of ``jax.jit(step_fn, donate_argnums=0)`` compiled for (state, batch).

    Args:
      step_fn: ``(state, batch) -> (state, metrics)``.
      state, batch: arrays or ``jax.ShapeDtypeStruct`` pytrees (shapes, dtypes and shardings
        are used; with shardings the figure is per device).
    """
    lowered = jax.jit(step_fn, donate_argnums=0).lower(_abstract(state), _abstract(batch))
    return compiled_temp_bytes(lowered.compile())


def train_step_memory(
    config: Any, modes: Sequence[str] = ("reversible", "store", "remat")
) -> dict[str, int]:
    """{mode: compiled temp bytes of the train step} for ``config``'s model and batch.

    Builds the model with ``backprop=mode`` for each mode (the model must take ``backprop``);
    nothing is trained and no data is read.
    """
    from revjax import data as data_lib
    from revjax.train import optim, trainer

    info = data_lib.dataset_info(config.dataset, **dict(config.get("dataset_options", {}) or {}))
    steps_per_epoch = max(info.num_train // config.global_batch_size, 1)
    tx, schedule = optim.make_optimizer(config, steps_per_epoch, steps_per_epoch)
    batch = {
        "image": jax.ShapeDtypeStruct((config.global_batch_size, *info.image_shape), jnp.float32),
        "label": jax.ShapeDtypeStruct(
            (config.global_batch_size, *trainer._label_shape(info)), jnp.int32
        ),
    }
    out = {}
    for mode in modes:
        model = trainer.build_model(config, info, backprop=mode)
        state = jax.eval_shape(
            lambda m=model: trainer.create_state(m, tx, config.seed, info.image_shape)
        )
        step = trainer.make_train_step(model, tx, schedule, config.get("weight_smoothness", 0.0))
        out[mode] = train_step_temp_bytes(step, state, batch)
    return out


def segmentation_step_memory(model: Any, input_shape: Sequence[int]) -> dict[str, int]:
    """Bytes of one compiled training step, from XLA's memory analysis (compile only).

    The step is the gradient of the mean per-pixel softmax cross-entropy w.r.t. the
    parameters (no optimizer update), for a float32 input of `input_shape` (N, *S, c_in) and
    int32 labels (N, *S). All inputs are `jax.ShapeDtypeStruct`s: nothing is allocated or run.

    Returns:
      {"temp", "arguments", "outputs", "total"} in bytes; temp is XLA's scratch (activations
      kept for the backward pass and workspaces); total = arguments + outputs + temp.
    """
    shape = tuple(int(s) for s in input_shape)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    labels = jax.ShapeDtypeStruct(shape[:-1], jnp.int32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))

    def loss(v, u, y):
        logits = model.apply(v, u, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    stats = jax.jit(jax.grad(loss)).lower(variables, x, labels).compile().memory_analysis()
    out = {
        "temp": int(stats.temp_size_in_bytes),
        "arguments": int(stats.argument_size_in_bytes),
        "outputs": int(stats.output_size_in_bytes),
    }
    out["total"] = out["temp"] + out["arguments"] + out["outputs"]
    return out

"""Compiled memory of a training step, from XLA's memory analysis (compile only, nothing runs).

One definition of "a training step", shared by the trainer, the experiments and the tests: the
real optimizer update

    loss, g = value_and_grad(loss_fn)(params, batch)
    updates, opt_state = optimizer.update(g, opt_state, params)
    params = optax.apply_updates(params, updates)

jitted with params and optimizer state donated (as a training loop runs it). XLA's
`memory_analysis()` of the compiled executable reports `temp_size_in_bytes`: scratch memory
beyond the arguments and outputs, i.e. mostly the activations kept for the backward pass.
Lowering from `jax.ShapeDtypeStruct`s allocates nothing, so the figure is exact and cheap even
for models that would not fit.

>>> import jax.numpy as jnp, optax
>>> loss = lambda p, batch: jnp.sum((batch @ p) ** 2)
>>> stats = update_step_memory(loss, jnp.ones((4, 4)), jnp.ones((8, 4)), optax.sgd(0.1))
>>> sorted(stats)
['arguments', 'outputs', 'temp', 'total']
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from revjax import tasks

__all__ = [
    "abstract",
    "compile_update_step",
    "compiled_memory",
    "jitted_step_memory",
    "model_loss",
    "model_step_inputs",
    "model_step_memory",
    "model_update_step",
    "update_step",
    "update_step_memory",
    "update_step_temp_bytes",
]

PyTree = Any


def abstract(tree: PyTree) -> PyTree:
    """ShapeDtypeStructs of `tree`'s leaves, keeping shardings (a sharded step is per device)."""

    def leaf(x):
        return jax.ShapeDtypeStruct(jnp.shape(x), x.dtype, sharding=getattr(x, "sharding", None))

    return jax.tree.map(leaf, tree)


def compiled_memory(compiled: Any) -> dict[str, int]:
    """{"temp", "arguments", "outputs", "total"} bytes of a `jax.stages.Compiled` (0 if unknown).

    total = temp + arguments + outputs (donated buffers counted once, as arguments).
    """
    analysis = compiled.memory_analysis()  # None, or fields missing, where unknown
    fields = {"temp": "temp", "arguments": "argument", "outputs": "output"}
    out = {k: int(getattr(analysis, f"{f}_size_in_bytes", 0) or 0) for k, f in fields.items()}
    out["total"] = out["temp"] + out["arguments"] + out["outputs"]
    return out


def jitted_step_memory(
    step_fn: Callable[..., Any], *args: PyTree, donate_argnums: int | Sequence[int] = 0
) -> dict[str, int]:
    """`compiled_memory` of `jax.jit(step_fn, donate_argnums=...)` lowered at `args`.

    For a step the caller already has (e.g. a trainer's `(state, batch) -> (state, metrics)`,
    state donated). `args` may be arrays or ShapeDtypeStructs.
    """
    lowered = jax.jit(step_fn, donate_argnums=donate_argnums).lower(*map(abstract, args))
    return compiled_memory(lowered.compile())


def update_step(
    loss_fn: Callable[[PyTree, PyTree], jax.Array], optimizer: optax.GradientTransformation
) -> Callable[[PyTree, PyTree, PyTree], tuple[PyTree, PyTree, jax.Array]]:
    """(params, opt_state, batch) -> (params, opt_state, loss): one optimizer update."""

    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def compile_update_step(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    batch: PyTree,
    optimizer: optax.GradientTransformation,
) -> Any:
    """`jax.jit(update_step(loss_fn, optimizer), donate_argnums=(0, 1))`, compiled.

    Callable as `compiled(params, opt_state, batch) -> (params, opt_state, loss)` on arrays of
    the given shapes (the old params and opt_state are donated: thread the returned ones), so
    a benchmark can time exactly the executable whose memory it reports.
    """
    params = abstract(params)
    opt_state = jax.eval_shape(optimizer.init, params)
    step = jax.jit(update_step(loss_fn, optimizer), donate_argnums=(0, 1))
    return step.lower(params, opt_state, abstract(batch)).compile()


def update_step_memory(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    batch: PyTree,
    optimizer: optax.GradientTransformation,
) -> dict[str, int]:
    """Compiled bytes of one training step: `update_step(loss_fn, optimizer)`, donated.

    Args:
      loss_fn: (params, batch) -> scalar loss (e.g. a closure over `model.apply`).
      params: the differentiated pytree (arrays or ShapeDtypeStructs).
      batch: the step's data (arrays or ShapeDtypeStructs).
      optimizer: the optax transformation of the training loop (its state is a step argument).

    Returns:
      {"temp", "arguments", "outputs", "total"} in bytes.
    """
    return compiled_memory(compile_update_step(loss_fn, params, batch, optimizer))


def update_step_temp_bytes(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    batch: PyTree,
    optimizer: optax.GradientTransformation,
) -> int:
    """`update_step_memory(...)["temp"]`: the activation-dominated scratch of one training step."""
    return update_step_memory(loss_fn, params, batch, optimizer)["temp"]


def model_loss(
    model: Any, loss: tasks.Loss = tasks.softmax_xent
) -> Callable[[PyTree, PyTree], jax.Array]:
    """loss(params, (images, labels, model_state)) of a zoo model's training step.

    loss = mean_i loss(f_params(x_i), y_i) over every label entry (`revjax.tasks.training_loss`;
    default the trainer's softmax cross-entropy, `revjax.tasks.softmax_xent`, with integer
    labels of the logits' leading shape: classifiers (N,), segmenters (N, *S)). The model runs
    in training mode; its non-parameter collections (batch-norm averages, spectral-norm
    vectors) ride in the batch as `model_state`, are applied as mutable and not
    differentiated. A `functools.partial` of `(model, loss)`.
    """
    return functools.partial(_batch_loss, model, loss)


def _batch_loss(model: Any, loss: tasks.Loss, params: PyTree, batch: PyTree) -> jax.Array:
    images, targets, model_state = batch
    return tasks.training_loss(model, loss, params, model_state, images, targets)[0]


def model_step_inputs(
    model: Any, input_shape: Sequence[int], *, dtype: Any = jnp.float32
) -> tuple[PyTree, PyTree]:
    """(params, (images, labels, model_state)) as ShapeDtypeStructs for `model_loss(model)`.

    images: `input_shape` (N, *S, C) of `dtype`; labels: int32 of the logits' leading shape.
    Nothing is allocated (`jax.eval_shape`).
    """
    x = jax.ShapeDtypeStruct(tuple(int(d) for d in input_shape), dtype)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(x.shape, dtype), train=False)
    )
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros(x.shape, dtype)), variables)
    labels = jax.ShapeDtypeStruct(logits.shape[:-1], jnp.int32)
    return params, (x, labels, state)


def model_update_step(
    model: Any,
    input_shape: Sequence[int],
    optimizer: optax.GradientTransformation,
    *,
    dtype: Any = jnp.float32,
) -> tuple[Any, PyTree, PyTree]:
    """A zoo model's training step (`model_loss`), compiled: (compiled, params, batch).

    `compiled(params, opt_state, batch) -> (params, opt_state, loss)` (`compile_update_step`,
    params and opt_state donated), batch = (images, labels, model_state) as in
    `model_step_inputs`; `params` and `batch` are ShapeDtypeStructs (nothing allocated).
    """
    params, batch = model_step_inputs(model, input_shape, dtype=dtype)
    return compile_update_step(model_loss(model), params, batch, optimizer), params, batch


def model_step_memory(
    model: Any,
    input_shape: Sequence[int],
    optimizer: optax.GradientTransformation,
    *,
    dtype: Any = jnp.float32,
) -> dict[str, int]:
    """`update_step_memory` of a zoo model's training step (`model_loss`), for a batch of
    `input_shape` (N, *S, C). Nothing is allocated: shapes only.

    Returns:
      {"temp", "arguments", "outputs", "total"} bytes (per device for a sharded model).
    """
    params, batch = model_step_inputs(model, input_shape, dtype=dtype)
    return update_step_memory(model_loss(model), params, batch, optimizer)

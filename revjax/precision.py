"""Float32 gradients against a float64 reference: how far round-off moves a model's gradient.

Reversible backpropagation rebuilds activations from outputs, so its gradient carries the
reconstruction's round-off on top of the forward pass's own. The way to see whether that
matters is to compare both float32 gradients, reversible and stored, with the gradient of the
*same* parameters and inputs computed in float64 (stored activations, so no reconstruction):

    e_mode = ‖g_mode^f32 − g^f64‖ / ‖g^f64‖,     mode ∈ {reversible, store}.

`e_store` is the float32 forward pass's own error, set by the conditioning of the loss at that
point. At initialisation it can be percent-level: a kink (a ReLU, a batch statistic) within
round-off makes the gradient jump (measured: revnet110 at its defaults, a 6e-8 relative change
of its first block's parameters moves the float64 gradient by 1.3%; leapfrog62 on one of three
input batches, a 1e-6 relative change of the input moves it by 0.2%). A healthy reversible body
has `e_reversible` of the same order; reconstruction drift (Chang, Meng, Haber, Ruthotto,
Begert, Holtham 2018, arXiv:1709.03698, "Reversible architectures and stability") or a
recomputation that differs from the forward shows up as `e_reversible` far above `e_store`.

>>> import jax, jax.numpy as jnp
>>> from revjax import models, precision
>>> model = models.create("revnet_mini")
>>> x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
>>> variables = model.init(jax.random.key(1), x)
>>> result = precision.gradient_errors(model, variables, [(x, jnp.array([1, 2]))])
>>> sorted(result.errors[0])
['reversible', 'store']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from revjax.memory import compiled_memory

__all__ = ["GradientErrors", "gradient_errors", "relative_error"]

PyTree = Any


def relative_error(estimate: PyTree, truth: PyTree) -> float:
    """‖estimate − truth‖ / ‖truth‖ over all leaves, evaluated in float64 on the host."""
    num = den = 0.0
    for u, v in zip(jax.tree.leaves(estimate), jax.tree.leaves(truth), strict=True):
        u, v = jax.device_get(u).astype("float64"), jax.device_get(v).astype("float64")
        num += float(((u - v) ** 2).sum())
        den += float((v**2).sum())
    return (num / den) ** 0.5 if den > 0 else float(num > 0) * float("inf")


def _as_float64(tree: PyTree) -> PyTree:
    return jax.tree.map(
        lambda u: u.astype(jnp.float64) if jnp.issubdtype(u.dtype, jnp.floating) else u, tree
    )


def _cross_entropy_grad(model, variables):
    """Jitted (params, x, labels) -> gradient of the mean training-mode cross-entropy."""

    def loss(params, x, labels):
        mutable = [k for k in variables if k != "params"] or False
        out = model.apply({**variables, "params": params}, x, train=True, mutable=mutable)
        logits = out[0] if mutable else out
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return jax.jit(jax.grad(loss))


class GradientErrors(NamedTuple):
    """Result of `gradient_errors`.

    Attributes:
      errors: one {"reversible": e, "store": e} per batch (relative to float64).
      temp_bytes: {"reversible": n, "store": n}, the compiled float32 gradient's temporary memory
        (XLA memory analysis; the reversible one is below the stored one if the body reconstructs).
    """

    errors: list[dict]
    temp_bytes: dict


def gradient_errors(model, variables: PyTree, batches: Sequence[tuple]) -> GradientErrors:
    """Float32 gradients, reversible and stored, against float64 on each batch.

    Args:
      model: a zoo classifier or segmenter (a linen module with `backprop` and `dtype` fields).
      variables: its float32 variables.
      batches: (x, labels) pairs: float32 inputs, integer labels of the model's output shape.
        Each gradient is compiled once and evaluated on every batch.

    The gradient is that of the mean softmax cross-entropy in training mode (batch statistics
    as the trainer sees them). Needs `jax_enable_x64`. Near a kink (module docstring) the error
    jumps by orders of magnitude: compare the median over several batches rather than one.
    """
    if not jax.config.read("jax_enable_x64"):
        raise ValueError("gradient_errors needs float64: jax.config.update('jax_enable_x64', True)")
    x0, labels0 = batches[0]
    variables64 = _as_float64(variables)
    reference = _cross_entropy_grad(model.clone(dtype=jnp.float64, backprop="store"), variables64)
    compiled = {
        mode: _cross_entropy_grad(model.clone(backprop=mode), variables)
        .lower(variables["params"], x0, labels0)
        .compile()
        for mode in ("reversible", "store")
    }
    errors = []
    for x, labels in batches:
        truth = reference(variables64["params"], x.astype(jnp.float64), labels)
        errors.append({
            mode: relative_error(grad(variables["params"], x, labels), truth)
            for mode, grad in compiled.items()
        })  # fmt: skip
    temp_bytes = {mode: compiled_memory(c)["temp"] for mode, c in compiled.items()}
    return GradientErrors(errors, temp_bytes)

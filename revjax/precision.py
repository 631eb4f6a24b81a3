"""Float32 gradients against a float64 reference: how far round-off moves a model's gradient.

Reversible backpropagation rebuilds activations from outputs, so its gradient carries the
reconstruction's round-off on top of the forward pass's own. The way to see whether that
matters is to compare both float32 gradients, reversible and stored, with the gradient of the
*same* parameters and inputs computed in float64 (stored activations, so no reconstruction):

    e_mode = ‖g_mode^f32 − g^f64‖ / ‖g^f64‖,     mode ∈ {reversible, store}.

`e_store` is the float32 forward pass's own error, set by the conditioning of the loss at that
point (it can be percent-level even for a plain network: a kink of a ReLU or a batch-norm
statistic within round-off of changing). A healthy reversible body has `e_reversible` of the
same order; reconstruction drift (Chang, Meng, Haber, Ruthotto, Begert, Holtham 2018,
arXiv:1709.03698, "Reversible architectures and stability") or a recomputation that differs
from the forward shows up as `e_reversible` far above `e_store`.

>>> import jax, jax.numpy as jnp
>>> from revjax import models, precision
>>> model = models.create("revnet_mini")
>>> x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
>>> variables = model.init(jax.random.key(1), x)
>>> errors = precision.gradient_errors(model, variables, x, jnp.array([1, 2]))
>>> sorted(errors)
['reversible', 'store']
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = ["gradient_errors", "relative_error"]

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


def _cross_entropy_grad(model, variables, x, labels):
    def loss(params):
        mutable = [k for k in variables if k != "params"] or False
        out = model.apply({**variables, "params": params}, x, train=True, mutable=mutable)
        logits = out[0] if mutable else out
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return jax.jit(jax.grad(loss))(variables["params"])


def gradient_errors(model, variables: PyTree, x: jax.Array, labels: jax.Array) -> dict:
    """{"reversible": e, "store": e}: float32 training-mode gradients against float64.

    Args:
      model: a zoo classifier or segmenter (a linen module with `backprop` and `dtype` fields).
      variables: its float32 variables.
      x: an input batch (float32); labels: integer class labels of the model's output shape.

    The gradient is that of the mean softmax cross-entropy in training mode (batch statistics
    as the trainer sees them). Needs `jax_enable_x64`.
    """
    if not jax.config.read("jax_enable_x64"):
        raise ValueError("gradient_errors needs float64: jax.config.update('jax_enable_x64', True)")
    reference = _cross_entropy_grad(
        model.clone(dtype=jnp.float64, backprop="store"),
        _as_float64(variables),
        x.astype(jnp.float64),
        labels,
    )
    return {
        mode: relative_error(_cross_entropy_grad(model.clone(backprop=mode), variables, x, labels),
                             reference)
        for mode in ("reversible", "store")
    }

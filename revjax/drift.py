"""Reconstruction drift of a model's reversible body: measured inside `apply`, read by one call.

Reversible backprop is only as good as its reconstruction. In floating point
`(x + F(z)) − F(z) ≠ x`, and the rounding of every step is amplified by the rest of the
network; an unstable configuration (too large a step size, say) turns reconstructed inputs,
and with them the gradients, into noise while the loss still looks like a run that merely
trains badly. Every zoo model therefore reports its body's drift the same way:

    model.reconstruction_error(variables, x, train=False)  ->  scalar (or None)
    revjax.models.model_reconstruction_error(model, variables, x)  (the same, for any module)

the worst relative error ‖x̂ − x‖/‖x‖ over every reconstructed step input of the body, as the
reversible backward pass would see it (`revjax.engine.reconstruction_error`). "Any module"
includes those built with `revjax.nn` (e.g. `revjax.nn.CouplingStack`, whose `__call__` has no
`train` argument: see `model_reconstruction_error`).

Models implement it by calling `sow_reconstruction_error(self, layers, params, x)` next to their
`engine.apply`: when the caller asks for the "diagnostics" collection the body's drift is measured
(one extra forward with stored states and one reverse sweep) and sown; otherwise it costs nothing.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from revjax import engine

__all__ = [
    "DIAGNOSTICS",
    "sow_reconstruction_error",
    "model_reconstruction_error",
    "ReversibleModel",
]

DIAGNOSTICS = "diagnostics"
_NAME = "reconstruction_error"


def sow_reconstruction_error(
    module: nn.Module,
    layers: Sequence[engine.Layer],
    params: Sequence[Any],
    x: Any,
    rngs: Sequence[Any] | None = None,
) -> None:
    """Inside a model's `__call__`: sow the body's worst reconstruction error when asked for."""
    if module.is_initializing() or not module.is_mutable_collection(DIAGNOSTICS):
        return  # `init` makes every collection mutable; variables never hold diagnostics
    errors = engine.reconstruction_error(layers, params, x, rngs)
    worst = jnp.max(jnp.stack([jnp.max(e) for e in errors]))
    module.sow(DIAGNOSTICS, _NAME, worst)


def model_reconstruction_error(
    model: nn.Module, variables: Any, x: jax.Array, *, train: bool = False
) -> jax.Array | None:
    """Worst relative reconstruction error of `model`'s reversible body on the batch `x`.

    Args:
      model: a zoo model or any linen module whose body calls `sow_reconstruction_error`
        (e.g. `revjax.nn.CouplingStack`); unbound.
      variables: its variables ({"params", ...}).
      x: an input batch, as passed to `model.apply`.
      train: measure in training mode (batch statistics, advanced spectral-norm iterates: as
        the gradient sees them); the updated state is discarded (`variables` are not changed).
        Passed on only when `model.__call__` takes a `train` argument; a module without one
        (`CouplingStack`: deterministic by default) is measured as its `__call__` defaults.

    Returns:
      A float scalar, or None when the model has no reversible body (e.g. ResNet).
    """
    mutable = [DIAGNOSTICS]
    if train:  # training mode updates state (batch norm, spectral-norm iterates): discarded here
        mutable += [k for k in variables if k not in ("params", DIAGNOSTICS)]
    kwargs = {"train": train} if _takes(model, "train") else {}
    _, state = model.apply(variables, x, mutable=mutable, **kwargs)
    sown = jax.tree.leaves(state.get(DIAGNOSTICS, {}))
    return jnp.max(jnp.stack([jnp.asarray(v, jnp.float32) for v in sown])) if sown else None


def _takes(module: nn.Module, name: str) -> bool:
    """Whether `module.__call__` has a parameter `name` (by name, or through **kwargs)."""
    parameters = inspect.signature(type(module).__call__).parameters.values()
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


class ReversibleModel:
    """Mixin for reversible linen modules: `model.reconstruction_error(variables, x)`."""

    def reconstruction_error(self, variables: Any, x: jax.Array, *, train: bool = False):
        """Worst relative reconstruction error of the body (see `revjax.drift`)."""
        return model_reconstruction_error(self, variables, x, train=train)

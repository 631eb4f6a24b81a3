"""Model registry: `create(name, **overrides)` returns a Flax linen module; `names()` lists them.

Every model is called as `model.init(rng, x, train=False)` and
`model.apply(variables, x, train=...)` (with `train=True`, its state collections mutable:
`mutable=["batch_stats"]` with batch norm, `["spectral_stats"]` for RevUp), images NHWC
(videos NDHWC). Reversible models accept `backprop` in {"reversible", "store", "remat"};
classifiers accept `num_classes`.

Each paper's model module `revjax.models.<paper>` owns that paper's linen modules (the pure
layers, steps and parameter trees are in `revjax.families.<paper>`) and registers its
configurations with `@register("name")` on a factory `(**overrides) -> nn.Module`; the imports
at the bottom of this file make them available. `revjax.models.heads` (stem, classifier head)
and `revjax.models.resnet` (the ResNet baseline's modules, registered by `revjax.models.revnet`)
do not use the registry.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from revjax.drift import reconstruction_error

__all__ = [
    "register",
    "create",
    "names",
    "config_fields",
    "count_params",
    "summary",
    "reconstruction_error",
]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Decorator: register `factory(**overrides) -> nn.Module` under `name`."""

    def decorator(factory):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorator


def names() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(_REGISTRY)


def create(name: str, **overrides) -> nn.Module:
    """The registered model `name`, with its configuration fields overridden.

    Raises:
      ValueError: an unknown `name`, or an override that is not a field of the model (the
        message lists the valid fields and the closest matches).
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Valid names: {', '.join(names())}")
    factory = _REGISTRY[name]
    unknown = sorted(set(overrides) - set(config_fields(name)))
    if unknown:
        valid = config_fields(name)
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, valid, n=2)
            hints.append(f"{key!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)"
                                       if close else ""))
        raise ValueError(
            f"model {name!r} has no field(s) {', '.join(hints)}. "
            f"Valid fields: {', '.join(valid)}"
        )
    return factory(**overrides)


def config_fields(name: str) -> list[str]:
    """The fields `create(name, **overrides)` accepts: those of the linen module it builds."""
    model = _REGISTRY[name]()
    return sorted(f.name for f in dataclasses.fields(model) if f.name != "parent")


def count_params(variables) -> int:
    """Number of trainable scalars in variables["params"] (or a bare params tree)."""
    params = variables.get("params", variables) if isinstance(variables, dict) else variables
    return int(sum(math.prod(getattr(leaf, "shape", ())) for leaf in jax.tree.leaves(params)))


def summary(name_or_model, input_shape, **overrides) -> str:
    """One-line summary: name, parameter count (exact), input shape; shapes only, no compute."""
    model = create(name_or_model, **overrides) if isinstance(name_or_model, str) else name_or_model
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    variables = jax.eval_shape(
        lambda k: model.init(k, jnp.zeros(x.shape), train=False), jax.random.key(0)
    )
    label = name_or_model if isinstance(name_or_model, str) else type(model).__name__
    return f"{label}: {count_params(variables):,} parameters, input {tuple(input_shape)}"


# Family registrations (each import registers that family's models).
from revjax.models import (
    chang,  # noqa: E402,F401
    hyperbolic,  # noqa: E402,F401
    lean,  # noqa: E402,F401
    mini,  # noqa: E402,F401
    revnet,  # noqa: E402,F401
    revup,  # noqa: E402,F401
)

"""The model registry: a model registers itself where it is defined; `create` builds it by name.

    @register("revnet_mini", stages=True, renamed={"depth": "units (...)"})
    def revnet_mini(**overrides) -> RevNetMini: ...

    create("revnet_mini", units=(2,))   # -> a Flax linen module, validated on construction

A named configuration of a linen class needs no function of its own:
`register("revnet38", stages=True)(preset(RevNet, units=(3, 3, 3), widths=(32, 64, 112)))`.

`stages=True` declares a stack of stages, which speaks the zoo's shared vocabulary (`units`,
`widths` or a scalar `width`; tests check it). `create` answers a former field name in `renamed`
with its hint instead of a bare "no field". This module imports no model module, so every model
module can import it without a cycle (`revjax.models` imports them all).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "CheckedConfig",
    "register",
    "preset",
    "create",
    "names",
    "renamed_fields",
    "config_fields",
    "count_params",
    "summary",
]


class CheckedConfig:
    """Mixin for a model's linen module: its `check_config()` runs when it is constructed.

    A bad configuration is then a ValueError at `Model(...)` (and at `create`), before anything
    is traced. List it before `nn.Module`: `class RevNet(CheckedConfig, ReversibleModel,
    nn.Module)`, and define `check_config(self) -> None`.
    """

    def __post_init__(self):
        self.check_config()
        super().__post_init__()


class _Entry(NamedTuple):
    factory: Callable[..., Any]
    stages: bool
    renamed: Mapping[str, str]


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, *, stages: bool = False, renamed: Mapping[str, str] | None = None):
    """Decorator: register `factory(**overrides) -> nn.Module` (or a linen class) as `name`.

    Args:
      name: the model's name in `create` and in configs (`config.model`).
      stages: the model is a stack of stages with the shared `units`/`widths` vocabulary.
      renamed: {former field name: hint naming the field that replaced it} for this model.
    """

    def decorator(factory):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = _Entry(factory, bool(stages), dict(renamed or {}))
        return factory

    return decorator


def preset(cls: Callable[..., Any], **defaults) -> Callable[..., Any]:
    """A factory `(**overrides) -> cls(**{**defaults, **overrides})` for `register`."""

    def factory(**overrides):
        return cls(**{**defaults, **overrides})  # validated on construction (`check_config`)

    factory.__doc__ = f"{getattr(cls, '__name__', cls)} with {defaults} (any field overridable)."
    return factory


def names(*, stages: bool | None = None) -> list[str]:
    """Sorted names of the registered models (only those with/without stages if given)."""
    return sorted(n for n, e in _REGISTRY.items() if stages is None or e.stages == stages)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Valid names: {', '.join(names())}")
    return _REGISTRY[name]


def renamed_fields(name: str) -> dict[str, str]:
    """{former field name: hint} declared by model `name` at registration."""
    return dict(_entry(name).renamed)


def create(name: str, **overrides):
    """The registered model `name`, with its configuration fields overridden.

    Raises:
      ValueError: an unknown `name`, a former field name of this model (the message names the
        new field), or an override that is not a field of the model (the message lists the
        valid fields and the closest matches).
    """
    entry = _entry(name)
    valid = config_fields(name)
    unknown = sorted(set(overrides) - set(valid))
    renamed = [key for key in unknown if key in entry.renamed]
    if renamed:
        key = renamed[0]
        raise ValueError(f"model {name!r}: field {key!r} was renamed to {entry.renamed[key]}")
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, valid, n=2)
            hints.append(f"{key!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)"
                                       if close else ""))  # fmt: skip
        raise ValueError(
            f"model {name!r} has no field(s) {', '.join(hints)}. Valid fields: {', '.join(valid)}"
        )
    return entry.factory(**overrides)


def config_fields(name: str) -> list[str]:
    """The fields `create(name, **overrides)` accepts: those of the linen module it builds."""
    model = _entry(name).factory()
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

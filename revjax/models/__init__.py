"""Model registry: `create(name, **overrides)` returns a Flax linen module; `names()` lists them.

Every model is called as `model.init(rng, x, train=False)` and
`model.apply(variables, x, train=...)` (with `train=True`, its state collections mutable:
`mutable=["batch_stats"]` with batch norm, `["spectral_stats"]` for RevUp), images NHWC
(videos NDHWC). Reversible models accept `backprop` in {"reversible", "store", "remat"};
classifiers accept `num_classes`.

One vocabulary for the fields the families share (README, "Model zoo"): `widths` (channels per
stage), `units` (blocks per stage), `transition` ("stored" | "reversible"), `stem_kernel`,
`stem_strides`, `stem_pool`, `h`, `kernel_size`, `num_classes`, `backprop`, `dtype`; a former
name (`filters`, `stage_sizes`, `downsample`, ...) is answered with its new one
(`RENAMED_FIELDS`). One validation convention: every model checks its fields in
`__post_init__` (its `check_config()` method), so a bad configuration raises ValueError when
the module is constructed, before anything is traced.

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
    "RENAMED_FIELDS",
    "register",
    "create",
    "names",
    "config_fields",
    "count_params",
    "summary",
    "reconstruction_error",
    # The linen modules the registered names build.
    "ChangNet",
    "HyperbolicSegmenter",
    "LeanHamiltonian",
    "LeanResNet",
    "ResNet",
    "RevNet",
    "RevNetMini",
    "RevUp",
]

# Former field names -> the shared vocabulary (README, "Model zoo"). `create` answers an old name
# with this one-line hint instead of a bare "no field".
RENAMED_FIELDS: dict[str, str] = {
    "filters": "widths (one width per stage; the stem width is now `stem_width`, default "
    "widths[0], for RevNet/ResNet and widths[0] for Chang)",
    "channels": "widths (the state width 2c as a 1-tuple: channels=16 is widths=(32,))",
    "features": "width (the stem width c0; stage i runs at width * 2**i)",
    "stage_sizes": "units (blocks per stage)",
    "layers_per_level": "units (leapfrog steps per unit, int or one per level)",
    "depth": "units (blocks per stage, one entry per stage)",
    "steps_per_block": "units (steps per stage: steps_per_block=4, num_blocks=3 is "
    "units=(4, 4, 4))",
    "num_blocks": "units (one entry per stage: num_blocks=3 is units=(4, 4, 4))",
    "downsample": "transition",
    "coarsening": "transition",
    "stem_stride": "stem_strides",
    "stem_max_pool": "stem_pool",
    "stem_kernel_size": "stem_kernel",
}

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
      ValueError: an unknown `name`, a former field name (the message names the new field,
        see `RENAMED_FIELDS`), or an override that is not a field of the model (the message
        lists the valid fields and the closest matches).
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Valid names: {', '.join(names())}")
    factory = _REGISTRY[name]
    valid = config_fields(name)
    unknown = sorted(set(overrides) - set(valid))
    renamed = [key for key in unknown if key in RENAMED_FIELDS]
    if renamed:
        key = renamed[0]
        raise ValueError(f"model {name!r}: field {key!r} was renamed to {RENAMED_FIELDS[key]}")
    if unknown:
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
    transformer,  # noqa: E402,F401
)
from revjax.models.chang import ChangNet  # noqa: E402
from revjax.models.hyperbolic import HyperbolicSegmenter  # noqa: E402
from revjax.models.lean import LeanHamiltonian, LeanResNet  # noqa: E402
from revjax.models.mini import RevNetMini  # noqa: E402
from revjax.models.resnet import ResNet  # noqa: E402
from revjax.models.revnet import RevNet  # noqa: E402
from revjax.models.revup import RevUp  # noqa: E402

"""Models: `create(name, **overrides)` returns a Flax linen module; `names()` lists them.

The model contract. Every model is called as `model.init(rng, x, train=False)` and
`model.apply(variables, x, train=...)` (with `train=True`, its state collections mutable:
`mutable=["batch_stats"]` with batch norm, `["spectral_stats"]` for RevUp), images NHWC
(videos NDHWC). Reversible models accept `backprop` in {"reversible", "store", "remat"} and
report their body's drift (`model.reconstruction_error`, `revjax.drift`); classifiers accept
`num_classes`; models with exact arithmetic accept `arithmetic` ("float" | "exact") and
`frac_bits`, turned into one `revjax.arithmetic.Arithmetic` that builds every step. Every model
checks its fields at construction (its `check_config()` method, run by the `CheckedConfig`
mixin), so a bad configuration raises ValueError before anything is traced.

Registration. A model registers itself where it is defined, with one decorator on a factory
`(**overrides) -> nn.Module` (`revjax.models.registry.register`, re-exported here); every module
of this package is imported below, so nothing else needs editing. Models with stages declare
`stages=True` and speak one vocabulary (README, "Model zoo"): `widths` (channels per stage),
`units` (blocks per stage), `transition` ("stored" | "reversible"), `stem_kernel`,
`stem_strides`, `stem_pool`, `h`, `kernel_size`, `num_classes`, `backprop`, `dtype`; each declares
the field names it used before (`renamed=`), which `create` answers with the new name.

Where a paper's code lives. `revjax.models.<paper>` owns the paper's linen modules and
registrations. `revjax.families.<paper>` exists only when the paper has pure mathematics of its
own (steps, operators, parameter trees, regularisers: no flax); a paper whose blocks are Flax
modules (attention, LayerNorm, an MLP) has no family file: its model module runs the modules as
residual functions (`revjax.nn.residual_fn`) in steps built by the arithmetic
(`arith.additive_coupling(F, G)`). `revjax.models.heads` holds the shared stem and head.
"""

from __future__ import annotations

import importlib
import pkgutil

from revjax.drift import model_reconstruction_error
from revjax.models.registry import (
    CheckedConfig,
    config_fields,
    count_params,
    create,
    names,
    preset,
    register,
    renamed_fields,
    summary,
)

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
    "model_reconstruction_error",
    # The linen modules the registered names build.
    "ChangNet",
    "HyperbolicSegmenter",
    "LeanHamiltonian",
    "LeanResNet",
    "ResNet",
    "RevNet",
    "RevNetMini",
    "RevUp",
    "ByteLM",
    "ViT",
]

# Every model module registers its models when imported.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from revjax.models.chang import ChangNet  # noqa: E402
from revjax.models.hyperbolic import HyperbolicSegmenter  # noqa: E402
from revjax.models.lean import LeanHamiltonian, LeanResNet  # noqa: E402
from revjax.models.mini import RevNetMini  # noqa: E402
from revjax.models.resnet import ResNet  # noqa: E402
from revjax.models.revnet import RevNet  # noqa: E402
from revjax.models.revup import RevUp  # noqa: E402
from revjax.models.transformer import ByteLM, ViT  # noqa: E402

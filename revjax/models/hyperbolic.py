"""Hyperbolic segmentation networks: `hyperbolic2d` (images, NHWC) and `hyperbolic3d` (NDHWC).

The body is the fully reversible multilevel network of `revjax.families.hyperbolic` (zero
channel padding, zero-velocity start, leapfrog units of symmetric block-low-rank layers,
Haar down to level L and back up); the head is a 1x1 convolution of the final state Y_N to
per-pixel (per-voxel) class logits. The head is not invertible and runs under ordinary
autodiff; Y_{N−1} is discarded, so its cotangent starts at 0.

With `arithmetic="exact"` the body is built through `revjax.arithmetic.get("exact", frac_bits)`
and runs on int32 fixed-point states: the input is encoded, the reconstruction in the backward
pass is bit-exact at any depth, and the output Y_N is decoded (straight-through) before the
head. A fixed-point overflow anywhere in the body makes the logits NaN (so training stops with
a non-finite loss instead of going on with wrapped-around values);
`HyperbolicSegmenter.check_overflow` names the layer.

    x (N, *S, c_in) -> body -> (Y_{N−1}, Y_N) each (N, *S, width) -> logits (N, *S, classes)

>>> import jax, jax.numpy as jnp
>>> from revjax import models
>>> model = models.create("hyperbolic2d", num_classes=3, width=8, levels=2)
>>> x = jnp.zeros((1, 16, 16, 3))
>>> variables = model.init(jax.random.key(0), x, train=False)
>>> model.apply(variables, x, train=False).shape
(1, 16, 16, 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from revjax import arithmetic, engine
from revjax.arithmetic import DEFAULT_FRAC_BITS
from revjax.drift import ReversibleModel, sow_reconstruction_error
from revjax.families import hyperbolic
from revjax.models.heads import check_num_classes
from revjax.models.registry import CheckedConfig, preset, register

__all__ = ["HyperbolicSegmenter"]

# The fields passed on unchanged to `hyperbolic.make_config`.
_BODY_FIELDS = (
    "spatial_dims", "width", "levels", "units", "ranks", "h", "kernel_size", "norm", "use_bias",
    "transition", "damping",
)  # fmt: skip


class HyperbolicSegmenter(CheckedConfig, ReversibleModel, nn.Module):
    """Fully reversible multilevel hyperbolic network with a per-pixel 1x1-conv head.

    Attributes:
      spatial_dims: 2 (NHWC) or 3 (NDHWC).
      num_classes: logits per pixel/voxel (including background).
      levels: L Haar coarsenings; every spatial size must be divisible by 2**L.
      units: leapfrog steps per unit, int or one per level 0..L (a level below L is visited
        twice, on the way down and up, with units[l] steps each time).
      ranks: hidden channels r_l ≤ C_l = width·2^{d·l}, int or one per level; None: r_l = width.
      h: leapfrog step size.
      width: state channels at full resolution; the c_in input channels are zero-padded to it.
        A scalar, not per-stage `widths`: the Haar transform fixes C_l = width · 2^{d·l}.
      norm: "tv_norm" or "none".
      kernel_size: odd k of the k^d convolution K.
      use_bias: bias inside σ(N(K Y + b)).
      transition: "reversible" (fully reversible) or "stored" (block-reversible: the engine
        stores both states at every resolution change, the RevNet/Chang approach).
      backprop: "reversible" | "store" | "remat" (engine strategy for the body).
      damping: telegraph damping γ (0 = conservative leapfrog; must be 0 when exact).
      arithmetic: "float" or "exact" (int32 fixed-point states, bit-exact reconstruction).
      frac_bits: fractional bits of the exact fixed-point states.
      dtype: dtype of the parameters and of the computation (the input is cast to it).

    Parameters: params["unit{u}"] = {"kernel": (n_l, k.., C_l, r_l), "bias": (n_l, r_l)} for
    the 2L+1 units, params["head"] = 1x1 conv {"kernel": (width, classes), "bias": (classes,)}.
    """

    spatial_dims: int = 2
    num_classes: int = 2
    levels: int = 2
    units: int | Sequence[int] = 2
    ranks: int | Sequence[int] | None = None
    h: float = 0.5
    width: int = 8
    norm: str = "none"
    kernel_size: int = 3
    use_bias: bool = True
    transition: str = "reversible"
    backprop: str = "reversible"
    damping: float = 0.0
    arithmetic: str = "float"
    frac_bits: int = DEFAULT_FRAC_BITS
    dtype: Any = jnp.float32

    def check_config(self) -> None:
        """ValueError for a configuration that cannot be built (before any tracing).

        Every field is checked; the input's channel count (<= width) is checked at the call.
        """
        check_num_classes(self.num_classes)
        engine.check_backprop(self.backprop)
        hyperbolic.multilevel_layers(self.config(in_channels=1), self._arithmetic())

    def _arithmetic(self) -> arithmetic.Arithmetic:
        return arithmetic.get(self.arithmetic, self.frac_bits)

    def config(self, in_channels: int) -> hyperbolic.MultilevelConfig:
        """The validated body configuration for inputs with `in_channels` channels."""
        fields = {name: getattr(self, name) for name in _BODY_FIELDS}
        return hyperbolic.make_config(in_channels=in_channels, **fields)

    def check_overflow(self, variables, x: jax.Array) -> None:
        """Raise `fixed_point.FixedPointOverflowError` naming the layer (exact arithmetic only).

        Runs the body outside `jit`; use it when training stops on a non-finite loss.
        """
        arith = self._arithmetic()
        layers = hyperbolic.multilevel_layers(self.config(x.shape[-1]), arith)
        arith.check_overflow(layers, self.body_params(variables), x.astype(self.dtype))

    def body_params(self, variables) -> list[Any]:
        """The engine parameter list of the body from bound/unbound `variables`."""
        params = variables.get("params", variables)
        units = sorted((k for k in params if k.startswith("unit")), key=lambda k: int(k[4:]))
        out: list[Any] = [None]  # pad_channels_step; then per unit a duplicate_state or Haar step
        for name in units:
            out += [None, params[name]]
        return out

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits (N, *S, num_classes) for x (N, *S, c_in); `train` is accepted for the API."""
        del train  # no batch statistics or dropout
        if x.ndim not in (4, 5) or x.ndim != self.spatial_dims + 2:
            layout = {2: "NHWC", 3: "NDHWC"}.get(self.spatial_dims, "?")
            raise ValueError(
                f"hyperbolic{self.spatial_dims}d expects {self.spatial_dims + 2}-D {layout} "
                f"inputs, got shape {x.shape}"
            )
        config, arith = self.config(x.shape[-1]), self._arithmetic()
        hyperbolic.check_input(x.shape, config)
        layers = hyperbolic.multilevel_layers(config, arith)

        unit_params = {
            f"unit{u}": self.param(f"unit{u}", hyperbolic.init_unit_params, config, u, self.dtype)
            for u in range(len(hyperbolic.unit_levels(config.levels)))
        }
        params, observe = self.body_params(unit_params), partial(sow_reconstruction_error, self)
        state, _ = arith.run(
            layers, params, x.astype(self.dtype), backprop=self.backprop, observe=observe
        )
        # The head: a 1x1 convolution on the channel axis.
        head = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.dtype, name="head")
        return head(state[1])


RENAMED = {
    "layers_per_level": "units (leapfrog steps per unit, int or one per level)",
    "coarsening": "transition",
}


# 2-D segmentation (NHWC) and 3-D video/volume segmentation (NDHWC); rank = width.
_COMMON = dict(units=2, ranks=None, h=0.5)
register("hyperbolic2d", stages=True, renamed=RENAMED)(
    preset(HyperbolicSegmenter, spatial_dims=2, num_classes=2, levels=3, width=16, **_COMMON)
)
register("hyperbolic3d", stages=True, renamed=RENAMED)(
    preset(HyperbolicSegmenter, spatial_dims=3, num_classes=4, levels=2, width=8, **_COMMON)
)

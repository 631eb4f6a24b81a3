"""A small reversible classifier for tiny images (digits, smoke tests): ``revnet_mini``.

Architecture (NHWC)::

    x (N, H, W, C_in) -> Stem: conv3x3 -> BN -> ReLU            (N, H, W, 2c), stored
      -> CouplingStack: n = units[0] additive couplings          (N, H, W, 2c), reversible
           y1 = x1 + F(x2),  y2 = x2 + G(y1),  F, G: u -> K2 relu(K1 u) (3x3, c -> c)
      -> ClassifierHead: BN -> ReLU -> global mean -> dense       (N, num_classes)

Only the stem and head activations are stored; the coupling body is rebuilt from its output during
the backward pass (``backprop="reversible"``), so body activation memory does not grow with the
number of couplings. One stage, in the zoo's vocabulary: ``widths=(2c,)`` (the state width) and
``units=(n,)``. The residual convolutions use ``revjax.conv.conv`` (standard-layout VJPs).

>>> from revjax import models
>>> model = models.create("revnet_mini", units=(2,), widths=(16,))
>>> models.summary("revnet_mini", (1, 8, 8, 1), units=(2,), widths=(16,))  # doctest: +ELLIPSIS
'revnet_mini: ... parameters, input (1, 8, 8, 1)'
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from revjax import conv as conv_ops
from revjax import engine
from revjax.drift import ReversibleModel
from revjax.models.heads import ClassifierHead, Stem, check_num_classes, conv_init
from revjax.models.registry import CheckedConfig, register
from revjax.nn import CouplingStack

__all__ = ["ConvResidual", "RevNetMini", "revnet_mini"]


class ConvResidual(nn.Module):
    """v = K2 relu(K1 u + b1) + b2 with 3x3 kernels, (N, H, W, c) -> (N, H, W, c).

    The second kernel is initialised small (``out_scale``) so each coupling starts close to
    the identity, which keeps deep stacks well conditioned.
    """

    out_scale: float = 0.1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, u: jax.Array) -> jax.Array:
        c = u.shape[-1]
        k1 = self.param("conv1_kernel", conv_init(3, c), (3, 3, c, c), self.dtype)
        b1 = self.param("conv1_bias", nn.initializers.zeros, (c,), self.dtype)
        k2 = self.param("conv2_kernel", conv_init(3, c), (3, 3, c, c), self.dtype)
        b2 = self.param("conv2_bias", nn.initializers.zeros, (c,), self.dtype)
        h = nn.relu(conv_ops.conv(u, k1) + b1)
        return self.out_scale * conv_ops.conv(h, k2) + b2


class RevNetMini(CheckedConfig, ReversibleModel, nn.Module):
    """Stem -> `units[0]` reversible couplings of width `widths[0]` -> classifier head.

    Attributes:
      num_classes: output logits.
      widths: (2c,): the state width, even; each coupling half has c channels. One stage.
      units: (n,): number of coupling steps (one ``lax.scan``). One stage.
      backprop: "reversible" | "store" | "remat".
      dtype: parameter and compute dtype.
    """

    num_classes: int = 10
    widths: tuple[int, ...] = (32,)
    units: tuple[int, ...] = (4,)
    backprop: str = "reversible"
    dtype: jnp.dtype = jnp.float32

    def check_config(self) -> None:
        """ValueError for a configuration that cannot be built (before any tracing)."""
        check_num_classes(self.num_classes)
        engine.check_backprop(self.backprop)
        widths, units = tuple(self.widths), tuple(self.units)
        if len(widths) != 1 or len(units) != 1:
            raise ValueError(
                f"revnet_mini has one stage: widths and units are 1-tuples, got widths={widths}, "
                f"units={units}"
            )
        if int(widths[0]) < 2 or int(widths[0]) % 2:
            raise ValueError(f"widths[0] must be even and >= 2 (two halves), got {widths[0]}")
        if int(units[0]) < 1:
            raise ValueError(f"units[0] must be >= 1, got {units[0]}")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = jnp.asarray(x, self.dtype)
        x = Stem(self.widths[0], dtype=self.dtype)(x, train=train)
        residual = ConvResidual(dtype=self.dtype)
        x = CouplingStack(F=residual, G=residual, depth=self.units[0], backprop=self.backprop)(x)
        return ClassifierHead(self.num_classes, dtype=self.dtype)(x, train=train)


@register(
    "revnet_mini",
    stages=True,
    renamed={
        "channels": "widths (the state width 2c as a 1-tuple: channels=16 is widths=(32,))",
        "depth": "units (coupling steps as a 1-tuple: depth=4 is units=(4,))",
    },
)
def revnet_mini(**overrides) -> RevNetMini:
    """Small reversible classifier (defaults: widths (32,), units (4,), 10 classes)."""
    return RevNetMini(**overrides)

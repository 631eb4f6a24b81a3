"""A small reversible classifier for tiny images (digits, smoke tests): ``revnet_mini``.

Architecture (NHWC)::

    x (N, H, W, C_in) -> Stem: conv3x3 -> BN -> ReLU            (N, H, W, 2c), stored
      -> CouplingStack: `depth` additive couplings               (N, H, W, 2c), reversible
           y1 = x1 + F(x2),  y2 = x2 + G(y1),  F, G: u -> K2 relu(K1 u) (3x3, c -> c)
      -> ClassifierHead: BN -> ReLU -> global mean -> dense       (N, num_classes)

Only the stem and head activations are stored; the coupling body is rebuilt from its output
during the backward pass (``backprop="reversible"``), so body activation memory does not grow
with ``depth``. The residual convolutions use ``revjax.conv.conv`` (standard-layout VJPs).

>>> from revjax import models
>>> model = models.create("revnet_mini", depth=2, channels=8)
>>> models.summary("revnet_mini", (1, 8, 8, 1), depth=2, channels=8)  # doctest: +ELLIPSIS
'revnet_mini: ... parameters, input (1, 8, 8, 1)'
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from revjax import conv as conv_ops
from revjax.drift import ReversibleModel
from revjax.models import register
from revjax.models.heads import ClassifierHead, Stem, check_num_classes, conv_init
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


class RevNetMini(ReversibleModel, nn.Module):
    """Stem -> `depth` reversible couplings of width 2*`channels` -> classifier head.

    Attributes:
      num_classes: output logits.
      channels: width c of each coupling half (the state has 2c channels).
      depth: number of coupling steps (one ``lax.scan``).
      backprop: "reversible" | "store" | "remat".
      dtype: parameter and compute dtype.
    """

    num_classes: int = 10
    channels: int = 16
    depth: int = 4
    backprop: str = "reversible"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_num_classes(self.num_classes)
        x = jnp.asarray(x, self.dtype)
        x = Stem(2 * self.channels, dtype=self.dtype)(x, train=train)
        residual = ConvResidual(dtype=self.dtype)
        x = CouplingStack(F=residual, G=residual, depth=self.depth, backprop=self.backprop)(x)
        return ClassifierHead(self.num_classes, dtype=self.dtype)(x, train=train)


def _check(channels: int, depth: int) -> None:
    if int(channels) < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if int(depth) < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")


@register("revnet_mini")
def revnet_mini(**overrides) -> RevNetMini:
    """Small reversible classifier (defaults: 2x16 channels, 4 couplings, 10 classes)."""
    model = RevNetMini(**overrides)
    _check(model.channels, model.depth)
    return model

"""Pre-activation ResNet (He, Zhang, Ren, Sun 2016, arXiv:1603.05027) as in the RevNet reference
code: the baseline, as Flax linen modules. Its residual functions, units and shortcuts, with their
equations, are described in `revjax.families.resnet` (the pure parts); RevNet (Gomez, Ren,
Urtasun, Grosse 2017, arXiv:1707.04585, Sec. 3.1) runs the same functions on channel halves inside
additive couplings.

The very first unit of the network omits the leading BN-ReLU (the stem already ends with one).
Convolutions have no bias and use `revjax.conv.conv`; kernels are truncated normal with std
sqrt(2 / (k^2 C_out)); BN has eps 1e-3, momentum 0.9.

ResNet units are not invertible (x + r(x) with unconstrained r), so `ResNet` supports only
`backprop="store"` (plain autodiff) and `backprop="remat"` (`jax.checkpoint` per unit).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from revjax import conv as conv_ops
from revjax.families.resnet import (
    check_classifier_config,
    check_input_shape,
    pool_pad_shortcut,
    stage_widths,
)
from revjax.models.heads import ClassifierHead, Stem, batch_norm, conv_init
from revjax.models.registry import CheckedConfig

__all__ = [
    "Conv",
    "batch_norm",
    "BasicResidual",
    "BottleneckResidual",
    "residual_module",
    "stem_width_of",
    "ResNetUnit",
    "ResNet",
]


class Conv(nn.Module):
    """Bias-free k x k convolution y = K_s u via `revjax.conv.conv` ("SAME" zero padding).

    Attributes:
      features: C_out.
      kernel_size: k (odd).
      strides: s.
      dtype: parameter and compute dtype.

    Input (N, H, W, C_in) -> output (N, ceil(H/s), ceil(W/s), C_out); kernel (k, k, C_in, C_out).
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, u: jax.Array) -> jax.Array:
        k = self.kernel_size
        shape = (k, k, u.shape[-1], self.features)
        kernel = self.param("kernel", conv_init(k, self.features), shape, self.dtype)
        return conv_ops.conv(u, kernel, self.strides, "SAME")


def _pre_activation(module: nn.Module, u: jax.Array, train: bool) -> jax.Array:
    return nn.relu(batch_norm(module.dtype)(u, use_running_average=not train))


class BasicResidual(nn.Module):
    """r(u) = conv3x3(ReLU(BN(conv3x3_s(ReLU(BN(u)))))); (N, H, W, C_in) -> (N, H/s, W/s, C_out).

    Attributes:
      features: C_out.
      strides: s of the first convolution.
      preactivate: apply the leading BN-ReLU (False for the network's first unit).
      dtype: parameter and compute dtype.
    """

    features: int
    strides: int = 1
    preactivate: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, u: jax.Array, train: bool = False) -> jax.Array:
        h = _pre_activation(self, u, train) if self.preactivate else u
        h = Conv(self.features, 3, self.strides, self.dtype)(h)
        h = _pre_activation(self, h, train)
        return Conv(self.features, 3, 1, self.dtype)(h)


class BottleneckResidual(nn.Module):
    """r(u) = conv1x1(σ(BN(conv3x3(σ(BN(conv1x1_s(σ(BN(u))))))))), inner width C_out / 4.

    Attributes:
      features: C_out (a multiple of 4).
      strides: s of the first (1x1) convolution.
      preactivate: apply the leading BN-ReLU (False for the network's first unit).
      dtype: parameter and compute dtype.
    """

    features: int
    strides: int = 1
    preactivate: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, u: jax.Array, train: bool = False) -> jax.Array:
        inner = self.features // 4
        h = _pre_activation(self, u, train) if self.preactivate else u
        h = Conv(inner, 1, self.strides, self.dtype)(h)
        h = _pre_activation(self, h, train)
        h = Conv(inner, 3, 1, self.dtype)(h)
        h = _pre_activation(self, h, train)
        return Conv(self.features, 1, 1, self.dtype)(h)


def stem_width_of(model: nn.Module) -> int:
    """Channels out of a ResNet/RevNet stem: `model.stem_width`, or `model.widths[0]` if None."""
    return model.widths[0] if model.stem_width is None else model.stem_width


def residual_module(
    bottleneck: bool, features: int, strides: int = 1, preactivate: bool = True, dtype=jnp.float32
) -> nn.Module:
    """The basic or bottleneck residual function as an (unbound) linen module."""
    cls = BottleneckResidual if bottleneck else BasicResidual
    return cls(features=features, strides=strides, preactivate=preactivate, dtype=dtype)


class ResNetUnit(nn.Module):
    """x -> shortcut(x) + r(x); (N, H, W, C_in) -> (N, H/s, W/s, features).

    Attributes:
      features: C_out.
      strides: s.
      bottleneck: bottleneck or basic residual function.
      preactivate: leading BN-ReLU in r (False for the network's first unit).
      train: batch statistics (True) or running averages (False).
      dtype: parameter and compute dtype.
    """

    features: int
    strides: int = 1
    bottleneck: bool = False
    preactivate: bool = True
    train: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        r = residual_module(
            self.bottleneck, self.features, self.strides, self.preactivate, self.dtype
        )(x, self.train)
        changes = self.strides != 1 or self.features != x.shape[-1]
        if self.bottleneck and changes:
            shortcut = Conv(self.features, 1, self.strides, self.dtype, name="projection")(x)
        else:
            shortcut = pool_pad_shortcut(x, self.features, self.strides)
        return shortcut + r


class _ScannedUnit(nn.Module):
    """ResNetUnit with the (carry, x) -> (carry, None) signature `nn.scan` expects."""

    features: int
    bottleneck: bool
    train: bool
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, h, _):
        unit = ResNetUnit(self.features, 1, self.bottleneck, True, self.train, self.dtype)
        return unit(h), None


class ResNet(CheckedConfig, nn.Module):
    """Pre-activation CIFAR/ImageNet ResNet: Stem -> stages of ResNetUnits -> ClassifierHead.

    Stage s has `units[s]` units at width `widths[s]` (x4 for bottleneck units); its first unit
    applies `strides[s]` and the width change, the remaining `units[s] − 1` identical units run
    under `nn.scan` (parameters stacked on a leading axis; compile time independent of depth).

    Attributes:
      units: units per stage.
      widths: base width per stage (x4 for bottleneck stages).
      stem_width: channels out of the stem (None: widths[0]).
      strides: per-stage stride (1 or 2).
      bottleneck: bottleneck (3 convs) or basic (2 convs) units.
      num_classes: logits.
      backprop: "store" (plain autodiff) or "remat" (`jax.checkpoint` per unit); "reversible"
        is an error (a ResNet is not invertible).
      stem_kernel, stem_strides, stem_pool: the stem (CIFAR 3/1/False, ImageNet 7/2/True).
      dtype: parameter and compute dtype.

    Input (N, H, W, C) -> logits (N, num_classes).
    """

    units: Sequence[int] = (5, 5, 5)
    widths: Sequence[int] = (16, 32, 64)
    stem_width: int | None = None
    strides: Sequence[int] = (1, 2, 2)
    bottleneck: bool = False
    num_classes: int = 10
    backprop: str = "store"
    stem_kernel: int = 3
    stem_strides: int = 1
    stem_pool: bool = False
    dtype: jnp.dtype = jnp.float32

    def check_config(self) -> None:
        """ValueError for a configuration that cannot be built (before any tracing)."""
        if self.backprop == "reversible":
            raise ValueError(
                "ResNet is not invertible (its units are x + r(x) with unconstrained r), so "
                "backprop='reversible' is impossible; use 'store' or 'remat', or a RevNet "
                "(e.g. create('revnet110'))"
            )
        if self.backprop not in ("store", "remat"):
            raise ValueError(f"unknown backprop {self.backprop!r}; use 'store' or 'remat'")
        check_classifier_config(
            self.units, self.widths, self.strides, self.num_classes, self.bottleneck,
            stem_width_of(self),
        )  # fmt: skip

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_input_shape(x.shape, self.stem_strides, self.stem_pool, self.strides)
        widths = stage_widths(stem_width_of(self), self.widths, self.bottleneck)
        remat = self.backprop == "remat"
        unit_cls = nn.remat(ResNetUnit) if remat else ResNetUnit
        scanned_cls = nn.remat(_ScannedUnit, prevent_cse=False) if remat else _ScannedUnit
        h = Stem(widths[0], self.stem_kernel, self.stem_strides, self.stem_pool, self.dtype)(
            x.astype(self.dtype), train
        )
        for s, (n, stride) in enumerate(zip(self.units, self.strides)):
            width, name = widths[s + 1], f"stage{s + 1}"
            h = unit_cls(
                width, stride, self.bottleneck, s > 0, train, self.dtype, name=f"{name}_first"
            )(h)
            if n > 1:
                stack = nn.scan(
                    scanned_cls,
                    variable_axes={"params": 0, "batch_stats": 0},
                    split_rngs={"params": True},
                    length=n - 1,
                )
                h, _ = stack(width, self.bottleneck, train, self.dtype, name=f"{name}_rest")(
                    h, None
                )
        return ClassifierHead(self.num_classes, dtype=self.dtype)(h, train)

"""Pre-activation ResNet (He, Zhang, Ren, Sun 2016, "Identity Mappings in Deep Residual
Networks", arXiv:1603.05027) as in the RevNet reference code: the baseline, pure parts.

The residual functions are shared with the RevNet family (Gomez, Ren, Urtasun, Grosse 2017,
arXiv:1707.04585, Sec. 3.1), which runs the same functions on channel halves inside additive
couplings. Their linen modules (`BasicResidual`, `BottleneckResidual`, `ResNet`) live in
`revjax.models.resnet`; this module holds the parameter-free shortcuts, the stage widths and
the configuration checks.

Basic residual function (pre-activation), u: (N, H, W, C_in) -> (N, H/s, W/s, C_out)::

    r(u) = conv3x3(ReLU(BN(conv3x3_s(ReLU(BN(u))))))

Bottleneck (inner width C_out / 4)::

    r(u) = conv1x1(ReLU(BN(conv3x3(ReLU(BN(conv1x1_s(ReLU(BN(u)))))))))

A ResNet unit is x -> shortcut(x) + r(x), where the shortcut is the identity, or, when the
stride or width changes:

- basic: 2x2 average pool (stride 2 only) and symmetric zero padding of the channels
  (`pool_pad_shortcut`);
- bottleneck: a 1x1 projection convolution with the stride.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from revjax.transitions import check_halvable, pool_pad

__all__ = [
    "check_num_classes",
    "pad_channels",
    "pool_pad_shortcut",
    "stage_widths",
    "check_classifier_config",
    "check_input_shape",
]


def check_num_classes(num_classes: int) -> int:
    """`num_classes` as an int; ValueError unless it is >= 1."""
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return int(num_classes)


def pad_channels(u: jax.Array, out_channels: int) -> jax.Array:
    """(N, ..., C) -> (N, ..., out_channels): (out − C)/2 zero channels on each side."""
    pad = out_channels - u.shape[-1]
    if pad < 0 or pad % 2:
        raise ValueError(
            f"cannot pad {u.shape[-1]} channels to {out_channels} symmetrically (the "
            "difference must be even and >= 0)"
        )
    return jnp.pad(u, [(0, 0)] * (u.ndim - 1) + [(pad // 2, pad // 2)])


def pool_pad_shortcut(u: jax.Array, out_channels: int, strides: int) -> jax.Array:
    """Parameter-free shortcut of basic units: pool_pad (stride 2) or pad_channels (stride 1)."""
    if strides == 2:
        return pool_pad(u, out_channels)
    return pad_channels(u, out_channels) if out_channels != u.shape[-1] else u


def stage_widths(stem_width: int, widths: Sequence[int], bottleneck: bool) -> tuple[int, ...]:
    """(stem, stage 1, ...) channel counts: the stage `widths` are x4 for bottleneck nets."""
    scale = 4 if bottleneck else 1
    return (int(stem_width), *(int(w) * scale for w in widths))


def check_classifier_config(units, widths, strides, num_classes, bottleneck, stem_width) -> None:
    """ValueError for inconsistent stage lists, bad strides or widths, or num_classes < 1."""
    check_num_classes(num_classes)
    if not (len(units) == len(strides) == len(widths)) or not units:
        raise ValueError(
            f"need one entry per stage in units {tuple(units)}, strides {tuple(strides)} "
            f"and widths {tuple(widths)}"
        )
    if any(int(n) < 1 for n in units):
        raise ValueError(f"every stage needs >= 1 unit, got units={tuple(units)}")
    if any(s not in (1, 2) for s in strides):
        raise ValueError(f"strides must be 1 or 2, got {tuple(strides)}")
    channels = stage_widths(stem_width, widths, bottleneck)
    if any(w < 1 for w in channels):
        raise ValueError(
            f"widths and stem_width must be positive, got {tuple(widths)} and {stem_width}"
        )
    if bottleneck and any(w % 4 for w in channels[1:]):
        raise ValueError(f"bottleneck widths {channels[1:]} must be multiples of 4")


def check_input_shape(shape, stem_strides: int, stem_pool: bool, strides) -> None:
    """ValueError unless x is (N, H, W, C) and every stride-2 stage can halve H and W exactly."""
    if len(shape) != 4:
        raise ValueError(f"expected NHWC images (N, H, W, C), got shape {tuple(shape)}")
    spatial = list(shape[1:3])
    for _ in range(int(stem_strides == 2) + int(stem_pool)):
        spatial = [-(-s // 2) for s in spatial]
    for i, stride in enumerate(strides):
        if stride == 2:
            check_halvable((1, *spatial, 1), f"stage {i + 1} (stride 2) at {tuple(spatial)}")
            spatial = [s // 2 for s in spatial]

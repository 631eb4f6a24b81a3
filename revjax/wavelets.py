"""Orthonormal Haar wavelet coarsening in 2-D and 3-D (Lensink, Peters, Haber 2019,
arXiv:1912.12137).

One level of the Haar transform halves every spatial axis and multiplies the channels by
``2**d`` (``d`` = number of spatial axes). Along one axis, each consecutive pair
``(u, v) = (x[2i], x[2i+1])`` becomes::

    L  = (u + v) / √2,        u = (L + Hi) / √2,
    Hi = (u − v) / √2,        v = (L − Hi) / √2.

Applied along H and W (2-D) or D, H and W (3-D), this is an orthogonal map: the inverse is
the transpose, energy is preserved, and the VJP of :func:`haar_forward` is
:func:`haar_inverse` (and vice versa).

Shapes::

    2-D, NHWC:   (N, H, W, C)     -> (N, H/2, W/2, 4C)
    3-D, NDHWC:  (N, D, H, W, C)  -> (N, D/2, H/2, W/2, 8C)

Sub-band order (sub-band-major; each sub-band holds all ``C`` input channels in order)::

    2-D:  y[..., q·C + c],  q = 2·h + w          -> [LL, LH, HL, HH]
    3-D:  y[..., q·C + c],  q = 4·d + 2·h + w    -> [LLL, LLH, LHL, LHH, HLL, HLH, HHL, HHH]

where ``h``/``w``/``d`` is 0 for the low-pass (L) and 1 for the high-pass (Hi) filter along
the H/W/D axis. Letters are written in axis order: in 2-D the first letter is the H-axis
filter and the second the W-axis filter (so ``LH`` is low along H, high along W); in 3-D the
letters are (D, H, W) and the D-axis bit is the most significant. In PyWavelets' ``dwtn``
key notation (``a`` = L, ``d`` = Hi, one letter per axis in axis order) the order is
``aa, ad, da, dd`` and ``aaa, aad, ..., ddd``; in ``dwt2`` terms ``[cA, cV, cH, cD]``.

Implementation: one Haar level equals the i-RevNet space-to-depth ψ
(:func:`revjax.space_to_depth.space_to_depth`, whose channel index ``(2a + b)·C + c`` uses
the same bit order) followed by a Walsh–Hadamard transform of the ``2**d`` entries of each
block, scaled by ``2**(-d/2)``. Since the unscaled Hadamard matrix ``Ĥ`` satisfies
``Ĥ Ĥ = 2**d I``, forward and inverse share the same butterflies.

Scaled variant (``scaled=True``), only for reproducing Lensink's HyperNet: analysis filters
``[1, 1]/2`` and ``[1, −1]/2``, so ``forward = 2**(-d/2) × orthonormal`` (``1/2`` in 2-D,
``1/(2√2)`` in 3-D) and ``inverse = 2**(d/2) × orthonormal inverse``. It rescales the state
at every level; use the orthonormal default otherwise.

Spatial sizes must be even at every level; odd sizes raise ``ValueError`` (no silent
cropping). :func:`check_divisible` validates a multilevel network's input shape up front.

>>> import jax.numpy as jnp
>>> x = jnp.ones((1, 4, 4, 3))
>>> haar_forward(x).shape
(1, 2, 2, 12)
>>> bool(jnp.allclose(haar_inverse(haar_forward(x)), x))
True
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from revjax.space_to_depth import (
    channels_first_hint,
    depth_to_space,
    space_to_depth,
    spatial_axis_names,
)

__all__ = [
    "check_divisible",
    "haar_forward",
    "haar_forward_2d",
    "haar_forward_3d",
    "haar_inverse",
    "haar_inverse_2d",
    "haar_inverse_3d",
    "subband_names",
]


def subband_names(ndim: int) -> tuple[str, ...]:
    """Names of the sub-bands in channel order for an array of rank ``ndim`` (4 or 5).

    >>> subband_names(4)
    ('LL', 'LH', 'HL', 'HH')
    """
    num_axes = len(spatial_axis_names(ndim, caller="subband_names"))
    return tuple(
        "".join("LH"[(q >> (num_axes - 1 - k)) & 1] for k in range(num_axes))
        for q in range(2**num_axes)
    )


def check_divisible(shape: Sequence[int], levels: int) -> None:
    """Checks that ``levels`` Haar coarsenings of a channels-last ``shape`` are possible.

    Every spatial size must be divisible by ``2**levels``, i.e. even before each of the
    levels ``1, ..., levels``.

    Args:
        shape: ``(N, H, W, C)`` or ``(N, D, H, W, C)``.
        levels: number of coarsening levels (``>= 0``).

    Raises:
        ValueError: wrong rank, negative ``levels``, or a spatial size that becomes odd before
            some level; the message names the axis and the level.
    """
    names = spatial_axis_names(len(shape), caller="check_divisible")
    if not isinstance(levels, int) or levels < 0:
        raise ValueError(f"check_divisible: levels must be an int >= 0, got {levels!r}")
    for name, size in zip(names, shape[1:-1], strict=True):
        current = size
        for level in range(1, levels + 1):
            if current % 2:
                before = (
                    "at the input" if level == 1 else f"after {level - 1} level(s) of coarsening"
                )
                raise ValueError(
                    f"axis {name} has size {size}, which is not divisible by "
                    f"2**{levels} = {2**levels}: {before} it has size {current}, which is "
                    f"odd, so Haar level {level} of {levels} cannot halve it."
                    f"{channels_first_hint(shape)}"
                )
            current //= 2


def _check_rank(x: jax.Array, ndim: int, caller: str) -> None:
    layout = {4: "NHWC", 5: "NDHWC"}[ndim]
    if x.ndim != ndim:
        raise ValueError(f"{caller} expected an array of rank {ndim} ({layout}), got {x.ndim}")


def _check_floating(x: jax.Array, caller: str) -> None:
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        raise TypeError(f"{caller} needs a floating dtype, got {x.dtype}")


def _butterflies(y: jax.Array, num_axes: int, pair_fn, reverse: bool = False) -> jax.Array:
    """``pair_fn(u, v)`` along each size-2 axis of the blocks of ``2**num_axes`` sub-band channels
    of ``y`` ``(N, *spatial, 2**num_axes · C)`` (channel index ``q·C + c``), last axis first
    when ``reverse``; same shape as ``y``."""
    *leading, channels = y.shape
    z = y.reshape(*leading, *([2] * num_axes), channels // 2**num_axes)
    for k in reversed(range(num_axes)) if reverse else range(num_axes):
        u, v = (jax.lax.index_in_dim(z, i, len(leading) + k, keepdims=False) for i in (0, 1))
        z = jnp.stack(pair_fn(u, v), axis=len(leading) + k)
    return z.reshape(y.shape)


def _blockwise_hadamard(y: jax.Array, num_axes: int, scale: float) -> jax.Array:
    """``scale × Ĥ`` on each block of sub-band channels; ``Ĥ`` is the unscaled Walsh–Hadamard
    matrix (``Ĥ² = 2**d I``), one butterfly ``(u, v) -> (u + v, u − v)`` per spatial axis."""
    z = _butterflies(y, num_axes, lambda u, v: (u + v, u - v))
    return z * jnp.asarray(scale, dtype=z.dtype) if scale != 1.0 else z


def haar_forward(x: jax.Array, *, scaled: bool = False) -> jax.Array:
    """One level of the Haar transform, dispatching on rank (4: NHWC, 5: NDHWC).

    Args:
        x: ``(N, H, W, C)`` or ``(N, D, H, W, C)``, floating dtype, even spatial sizes.
        scaled: use HyperNet's ``[1, ±1]/2`` filters, i.e. ``2**(-d/2) ×`` the orthonormal map.

    Returns:
        ``(N, H/2, W/2, 4C)`` or ``(N, D/2, H/2, W/2, 8C)`` in the sub-band order of the
        module docstring, same dtype as ``x``.

    Raises:
        ValueError: wrong rank or an odd spatial size (checked from static shapes).
        TypeError: non-floating dtype.
    """
    x = jnp.asarray(x)
    names = spatial_axis_names(x.ndim, caller="haar_forward")
    for name, size in zip(names, x.shape[1:-1], strict=True):
        if size % 2:
            raise ValueError(
                f"haar_forward: axis {name} has size {size}, which is odd; Haar coarsening needs "
                f"even sizes (no silent cropping).{channels_first_hint(x.shape)}"
            )
    _check_floating(x, "haar_forward")
    num_axes = x.ndim - 2
    # Orthonormal: (1/√2)**d = 2**(-d/2); HyperNet: (1/2)**d.
    scale = 2.0 ** (-num_axes) if scaled else 2.0 ** (-num_axes / 2)
    return _blockwise_hadamard(space_to_depth(x, 2), num_axes, scale)


def haar_inverse(y: jax.Array, *, scaled: bool = False) -> jax.Array:
    """Exact inverse of :func:`haar_forward` (with the same ``scaled``).

    Args:
        y: ``(N, h, w, 4C)`` or ``(N, d, h, w, 8C)``, floating dtype.
        scaled: invert the HyperNet-scaled forward map instead of the orthonormal one.

    Returns:
        ``(N, 2h, 2w, C)`` or ``(N, 2d, 2h, 2w, C)``, same dtype as ``y``.

    Raises:
        ValueError: wrong rank, or a channel count not divisible by 4 (2-D) or 8 (3-D).
        TypeError: non-floating dtype.
    """
    y = jnp.asarray(y)
    spatial_axis_names(y.ndim, caller="haar_inverse")
    _check_floating(y, "haar_inverse")
    num_axes = y.ndim - 2
    if y.shape[-1] % 2**num_axes:
        raise ValueError(
            f"haar_inverse: channel axis has size {y.shape[-1]}, which is not divisible by "
            f"{2**num_axes} (the number of {num_axes}-D sub-bands)"
        )
    # Orthonormal: self-inverse, 2**(-d/2); HyperNet: Ĥ² = 2**d I, so the inverse needs 1.
    z = _blockwise_hadamard(y, num_axes, 1.0 if scaled else 2.0 ** (-num_axes / 2))
    return depth_to_space(z, 2)


def haar_forward_2d(x: jax.Array, *, scaled: bool = False) -> jax.Array:
    """2-D Haar level: ``(N, H, W, C) -> (N, H/2, W/2, 4C)``, bands ``[LL, LH, HL, HH]``."""
    _check_rank(jnp.asarray(x), 4, "haar_forward_2d")
    return haar_forward(x, scaled=scaled)


def haar_inverse_2d(y: jax.Array, *, scaled: bool = False) -> jax.Array:
    """Inverse of :func:`haar_forward_2d`: ``(N, h, w, 4C) -> (N, 2h, 2w, C)``."""
    _check_rank(jnp.asarray(y), 4, "haar_inverse_2d")
    return haar_inverse(y, scaled=scaled)


def haar_forward_3d(x: jax.Array, *, scaled: bool = False) -> jax.Array:
    """3-D Haar level: ``(N, D, H, W, C) -> (N, D/2, H/2, W/2, 8C)``, D bit most significant."""
    _check_rank(jnp.asarray(x), 5, "haar_forward_3d")
    return haar_forward(x, scaled=scaled)


def haar_inverse_3d(y: jax.Array, *, scaled: bool = False) -> jax.Array:
    """Inverse of :func:`haar_forward_3d`: ``(N, d, h, w, 8C) -> (N, 2d, 2h, 2w, C)``."""
    _check_rank(jnp.asarray(y), 5, "haar_inverse_3d")
    return haar_inverse(y, scaled=scaled)

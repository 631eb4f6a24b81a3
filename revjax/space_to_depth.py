"""i-RevNet invertible downsampling ψ (space-to-depth) and its inverse (Jacobsen, Smeulders, Oyallon
2018, i-RevNet, arXiv:1802.07088).

ψ moves each ``block × block`` (2-D) or ``block × block × block`` (3-D) spatial patch into
the channel axis. It is a pure permutation of the entries, so it preserves every norm and its
inverse is exact bitwise.

Shapes (``b = block``)::

    2-D, NHWC:   (N, H, W, C)     -> (N, H/b, W/b, b²·C)
    3-D, NDHWC:  (N, D, H, W, C)  -> (N, D/b, H/b, W/b, b³·C)

Channel order (offset-major, then the original channel; ``c`` is the input channel)::

    2-D:  y[n, i, j, (b·a + β)·C + c]              = x[n, b·i + a, b·j + β, c]
    3-D:  y[n, k, i, j, ((b·γ + a)·b + β)·C + c]   = x[n, b·k + γ, b·i + a, b·j + β, c]

For ``b = 2`` these are ``(2a + β)·C + c`` and ``(4γ + 2a + β)·C + c``: the offset along the
outermost spatial axis (D in 3-D, else H) is the most significant bit. The PyTorch i-RevNet
reference orders channels differently; that only matters when porting pretrained weights.

>>> import jax.numpy as jnp
>>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
>>> space_to_depth(x).shape
(1, 2, 2, 4)
>>> bool((depth_to_space(space_to_depth(x)) == x).all())
True
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

__all__ = ["channels_first_hint", "depth_to_space", "space_to_depth", "spatial_axis_names"]


def channels_first_hint(shape: Sequence[int]) -> str:
    """A hint for error messages when ``shape`` looks channels-first (NCHW / NCDHW).

    revjax is channels-last (NHWC / NDHWC). A shape whose axis 1 is small (1, 2, 3 or 4, like
    image channels) while its last axis is larger most likely came in as NCHW; the returned
    text says how to transpose it. Otherwise returns "".
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) in (4, 5) and shape[1] <= 4 and shape[-1] > shape[1]:
        order = (0, *range(2, len(shape)), 1)
        return (
            f" The input shape {shape} looks channels-first; revjax expects channels-last "
            f"(NHWC / NDHWC): transpose it with x.transpose{order}."
        )
    return ""


def spatial_axis_names(ndim: int, *, caller: str) -> tuple[str, ...]:
    """The spatial axis names of a channels-last array of rank ``ndim``.

    Args:
        ndim: 4 (NHWC: ``("H", "W")``) or 5 (NDHWC: ``("D", "H", "W")``).
        caller: name of the public function, used in the error message.

    Raises:
        ValueError: if ``ndim`` is neither 4 nor 5.
    """
    if ndim not in (4, 5):
        raise ValueError(
            f"{caller} expected an array of rank 4 (NHWC) or 5 (NDHWC), got rank {ndim}"
        )
    return ("H", "W") if ndim == 4 else ("D", "H", "W")


def _check_block(block: int) -> None:
    if not isinstance(block, int) or isinstance(block, bool) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")


def space_to_depth(x: jax.Array, block: int = 2) -> jax.Array:
    """i-RevNet downsampling ψ: moves ``block``-sized spatial patches into channels.

    ``y[n, i, j, (b·a + β)·C + c] = x[n, b·i + a, b·j + β, c]`` in 2-D, and the analogous
    order with the D offset most significant in 3-D (see the module docstring).

    Args:
        x: ``(N, H, W, C)`` or ``(N, D, H, W, C)``; every spatial size divisible by ``block``.
        block: patch edge length ``b``.

    Returns:
        ``(N, H/b, W/b, b²C)`` or ``(N, D/b, H/b, W/b, b³C)``, same dtype as ``x``.

    Raises:
        ValueError: wrong rank, or a spatial size not divisible by ``block``.
    """
    x = jnp.asarray(x)
    _check_block(block)
    names = spatial_axis_names(x.ndim, caller="space_to_depth")
    for name, size in zip(names, x.shape[1:-1], strict=True):
        if size % block:
            raise ValueError(
                f"space_to_depth: axis {name} has size {size}, which is not divisible by "
                f"block={block}; space-to-depth does not crop.{channels_first_hint(x.shape)}"
            )
    batch, *spatial, channels = x.shape
    d = len(spatial)
    # (N, s1/b, b, s2/b, b, ..., C): each spatial axis split into (coarse, offset).
    z = x.reshape(batch, *[n for size in spatial for n in (size // block, block)], channels)
    coarse_axes = [1 + 2 * k for k in range(d)]
    offset_axes = [2 + 2 * k for k in range(d)]
    z = z.transpose(0, *coarse_axes, *offset_axes, 2 * d + 1)
    return z.reshape(batch, *(size // block for size in spatial), block**d * channels)


def depth_to_space(y: jax.Array, block: int = 2) -> jax.Array:
    """Inverse of :func:`space_to_depth`: ``depth_to_space(space_to_depth(x, b), b) == x``.

    Args:
        y: ``(N, h, w, b²C)`` or ``(N, d, h, w, b³C)``.
        block: patch edge length ``b``.

    Returns:
        ``(N, b·h, b·w, C)`` or ``(N, b·d, b·h, b·w, C)``, same dtype as ``y``.

    Raises:
        ValueError: wrong rank, or a channel count not divisible by ``b²`` (``b³``).
    """
    y = jnp.asarray(y)
    _check_block(block)
    batch, *spatial, channels = y.shape
    spatial_axis_names(y.ndim, caller="depth_to_space")
    d = len(spatial)
    if channels % block**d:
        raise ValueError(
            f"depth_to_space: channel axis has size {channels}, which is not divisible by "
            f"block**{d}={block**d}"
        )
    out_channels = channels // block**d
    z = y.reshape(batch, *spatial, *([block] * d), out_channels)
    # (N, s1, ..., sd, b_1, ..., b_d, C) -> (N, s1, b_1, ..., sd, b_d, C).
    z = z.transpose(0, *[a for k in range(d) for a in (1 + k, 1 + d + k)], 2 * d + 1)
    return z.reshape(batch, *(size * block for size in spatial), out_channels)

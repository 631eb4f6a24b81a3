"""Resolution changes between stages: stored (non-invertible) or fully reversible.

Non-invertible (Gomez, Ren, Urtasun, Grosse 2017, arXiv:1707.04585, Sec. 3.1: strided layers discard
information, so their input is stored; Chang, Meng, Haber, Ruthotto, Begert, Holtham 2018,
arXiv:1709.03698 downsample by average pooling and zero-padded channels):

- `pool_pad(x, out_channels)`: 2x2 average pool, stride 2, then symmetric zero padding of the
  channel axis with (out − in)/2 on each side ("downsample by average pooling, increase filters
  by padding zeros"); `pool_pad_transition(out_channels)` applies it to every state.

Fully reversible (Jacobsen, Smeulders, Oyallon 2018, i-RevNet, arXiv:1802.07088; Haar wavelets as in
Lensink, Peters, Haber 2019, arXiv:1912.12137): `space_to_depth_step()` and `haar_step()` (with
`haar_inverse_step()` for refinement) apply an orthogonal resampling to every state; their
backward pass is the inverse map applied to the cotangent (Q^{-1} = Q^T), with no stored input.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from revjax import wavelets
from revjax.engine import InvertibleStep, Transition
from revjax.space_to_depth import channels_first_hint, depth_to_space, space_to_depth

__all__ = [
    "check_halvable",
    "pool_pad",
    "pool_pad_transition",
    "orthogonal_step",
    "zero_pad_channels_step",
    "space_to_depth_step",
    "haar_step",
    "haar_inverse_step",
]


def check_halvable(shape, where: str = "stride-2 transition") -> None:
    """Spatial axes (all but batch and channels) must be even to be halved exactly."""
    labels = ("D", "H", "W")[-(len(shape) - 2) :]
    for label, size in zip(labels, shape[1:-1]):
        if size % 2:
            raise ValueError(
                f"{where}: axis {label} has size {size}, which a stride-2 transition cannot "
                "halve exactly (no silent cropping); use even input sizes."
                f"{channels_first_hint(shape)}"
            )


def pool_pad(x: jax.Array, out_channels: int) -> jax.Array:
    """(N, *S, C) -> (N, *S/2, out_channels): average pool 2^d, then zero-pad channels evenly."""
    check_halvable(x.shape, "pool_pad")
    pad = out_channels - x.shape[-1]
    if pad < 0 or pad % 2:
        raise ValueError(
            f"pool_pad: cannot pad {x.shape[-1]} channels to {out_channels} symmetrically "
            "(the difference must be even and >= 0)"
        )
    spatial = x.shape[1:-1]
    blocks = x.reshape(x.shape[0], *[n for size in spatial for n in (size // 2, 2)], x.shape[-1])
    pooled = blocks.mean(axis=tuple(range(2, 2 * len(spatial) + 1, 2)))
    widths = [(0, 0)] * (pooled.ndim - 1) + [(pad // 2, pad // 2)]
    return jnp.pad(pooled, widths)


def pool_pad_transition(out_channels: int, name: str = "pool_pad") -> Transition:
    """`pool_pad` on every state of the pytree; parameter-free (params = None)."""

    def apply(params, x, rng=None):
        return jax.tree.map(lambda u: pool_pad(u, out_channels), x)

    return Transition(apply, name=name)


def orthogonal_step(
    forward_fn: Callable[[jax.Array], jax.Array],
    inverse_fn: Callable[[jax.Array], jax.Array],
    adjoint_fn: Callable[[jax.Array], jax.Array] | None = None,
    name: str = "orthogonal",
) -> InvertibleStep:
    """A fixed linear invertible map Q applied to every state leaf; params = None.

    Backward: x = Q^{-1} y and x̄ = Q^T ȳ (`adjoint_fn`, defaulting to Q^{-1} for orthogonal Q).
    """
    adjoint_fn = inverse_fn if adjoint_fn is None else adjoint_fn

    def forward(params, x, rng=None):
        return jax.tree.map(forward_fn, x)

    def inverse(params, y, rng=None):
        return jax.tree.map(inverse_fn, y)

    def backward(params, y, y_bar, rng=None):
        params_bar = jax.tree.map(jnp.zeros_like, params)
        return jax.tree.map(inverse_fn, y), params_bar, jax.tree.map(adjoint_fn, y_bar)

    return InvertibleStep(forward, inverse, backward, name=name)


def _zero_pad_maps(extra: int):
    """(pad, crop): append `extra` zero channels to an array, and drop them again."""
    if extra < 0:
        raise ValueError(f"cannot zero-pad by a negative number of channels ({extra})")

    def pad(u):
        return jnp.pad(u, [(0, 0)] * (u.ndim - 1) + [(0, extra)])

    def crop(u):
        return u[..., : u.shape[-1] - extra]

    return pad, crop


def zero_pad_channels_step(extra: int, name: str = "zero_pad_channels") -> InvertibleStep:
    """Injective i-RevNet "inj_pad": append `extra` zero channels to every state leaf.

    (N, ..., c) -> (N, ..., c + extra). The inverse (exact on the image) drops them; the
    adjoint of zero-padding is the same truncation, so the backward pass needs no storage.
    """
    return orthogonal_step(*_zero_pad_maps(extra), name=name)


def space_to_depth_step() -> InvertibleStep:
    """i-RevNet ψ on every state: (N, H, W, C) -> (N, H/2, W/2, 4C), a permutation."""
    return orthogonal_step(space_to_depth, depth_to_space, name="space_to_depth")


# Scaled Haar is s·Q with s = 2^{-d/2}: adjoint of forward = s Q^T = s² · inverse_scaled.
def _scaled_haar_forward_adjoint(y):
    return 2.0 ** -(y.ndim - 2) * wavelets.haar_inverse(y, scaled=True)


def _scaled_haar_inverse_adjoint(x):
    return 2.0 ** (x.ndim - 2) * wavelets.haar_forward(x, scaled=True)


def haar_step(scaled: bool = False) -> InvertibleStep:
    """Haar coarsening of every state (2D: channels x4, 3D: x8)."""
    return orthogonal_step(
        lambda x: wavelets.haar_forward(x, scaled=scaled),
        lambda y: wavelets.haar_inverse(y, scaled=scaled),
        _scaled_haar_forward_adjoint if scaled else None,
        name="haar",
    )


def haar_inverse_step(scaled: bool = False) -> InvertibleStep:
    """Haar refinement (synthesis) of every state: the inverse of `haar_step`."""
    return orthogonal_step(
        lambda y: wavelets.haar_inverse(y, scaled=scaled),
        lambda x: wavelets.haar_forward(x, scaled=scaled),
        _scaled_haar_inverse_adjoint if scaled else None,
        name="haar_inverse",
    )

"""Integer-to-integer Haar transform (lifting / S-transform) for exact fixed-point networks.

Along one axis, each pair ``(u, v) = (x[2i], x[2i+1])`` of integers becomes (lifting form of
the Haar transform: Sweldens (1996), "The lifting scheme", Appl. Comput. Harmon. Anal. 3:186;
Calderbank, Daubechies, Sweldens, Yeo (1998), "Wavelet transforms that map integers to
integers", Appl. Comput. Harmon. Anal. 5:332: the S-transform)::

    d = u − v,            v = s − ⌊d/2⌋,
    s = v + ⌊d/2⌋,        u = d + v.

Each lifting step adds a function of the *other* channel, so the map is a bijection of
integers (of int32 modulo 2³² even when it wraps): the round trip is bit-exact.

Scaling, compared with the orthonormal Haar of `revjax.wavelets` (L = (u+v)/√2,
Hi = (u−v)/√2): the real-valued map behind the lifting is ``s = (u+v)/2 = L/√2`` and
``d = u − v = √2·Hi``. It is not orthogonal (determinant 1, but it scales the low band by
1/√2 and the high band by √2 per axis): in 2-D the bands [LL, LH, HL, HH] are the orthonormal
ones times [1/2, 1, 1, 2], in 3-D times 2^{(#H − #L)/2} (1/(2√2) for LLL ... 2√2 for HHH).
The sub-band layout is that of `revjax.wavelets` (space-to-depth then butterflies, H-axis bit
before W-axis bit, D most significant in 3-D), so an exact multilevel network uses this in
place of the orthonormal Haar with channels multiplied by 2^d at each level.

Gradients follow the straight-through rule: the carrier ``g`` of a `Fixed` state goes through
the real-valued map above (s = (u+v)/2, d = u − v), whose transpose gives the backward pass
(ū = s̄/2 + d̄, v̄ = s̄/2 − d̄).

Shapes: (N, H, W, C) -> (N, H/2, W/2, 4C); (N, D, H, W, C) -> (N, D/2, H/2, W/2, 8C).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from revjax import fixed_point
from revjax.engine import InvertibleStep
from revjax.space_to_depth import depth_to_space, space_to_depth
from revjax.wavelets import _butterflies

__all__ = [
    "lifting_haar_forward",
    "lifting_haar_inverse",
    "real_haar_forward",
    "real_haar_inverse",
    "real_haar_forward_adjoint",
    "real_haar_inverse_adjoint",
    "exact_haar_step",
    "exact_haar_inverse_step",
]


def _check_int(x: jax.Array, caller: str) -> None:
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{caller} maps integers to integers; got dtype {x.dtype}")


def _check_channels(y: jax.Array, caller: str) -> int:
    num_axes = y.ndim - 2
    if num_axes not in (2, 3):
        raise ValueError(f"{caller} expects NHWC or NDHWC arrays, got rank {y.ndim}")
    if y.shape[-1] % 2**num_axes:
        raise ValueError(
            f"{caller}: channel axis has size {y.shape[-1]}, not divisible by {2**num_axes}"
        )
    return num_axes


def _check_input(x: jax.Array, caller: str) -> int:
    num_axes = x.ndim - 2
    if num_axes not in (2, 3):
        raise ValueError(f"{caller} expects NHWC or NDHWC arrays, got rank {x.ndim}")
    for size in x.shape[1:-1]:
        if size % 2:
            raise ValueError(f"{caller}: spatial size {size} is odd (no silent cropping)")
    return num_axes


def lifting_haar_forward(x: jax.Array) -> jax.Array:
    """Integer Haar level: (N, *S, C) int -> (N, *S/2, 2^d C) int, (s, d) per axis (module doc)."""
    x = jnp.asarray(x)
    _check_int(x, "lifting_haar_forward")
    num_axes = _check_input(x, "lifting_haar_forward")

    def pair(u, v):
        d = u - v
        return v + (d >> 1), d

    return _butterflies(space_to_depth(x, 2), num_axes, pair)


def lifting_haar_inverse(y: jax.Array) -> jax.Array:
    """Exact inverse of `lifting_haar_forward` (bit for bit, also modulo 2³²)."""
    y = jnp.asarray(y)
    _check_int(y, "lifting_haar_inverse")
    num_axes = _check_channels(y, "lifting_haar_inverse")

    def pair(s, d):
        v = s - (d >> 1)
        return d + v, v

    # Undo the axes in reverse order.
    return depth_to_space(_butterflies(y, num_axes, pair, reverse=True), 2)


def real_haar_forward(x: jax.Array) -> jax.Array:
    """The real-valued map the lifting rounds: s = (u+v)/2, d = u − v along every axis."""
    num_axes = _check_input(x, "real_haar_forward")
    return _butterflies(space_to_depth(x, 2), num_axes, lambda u, v: ((u + v) / 2, u - v))


def real_haar_inverse(y: jax.Array) -> jax.Array:
    """Inverse of `real_haar_forward`: v = s − d/2, u = s + d/2."""
    num_axes = _check_channels(y, "real_haar_inverse")
    z = _butterflies(y, num_axes, lambda s, d: (s + d / 2, s - d / 2))
    return depth_to_space(z, 2)


def real_haar_forward_adjoint(y_bar: jax.Array) -> jax.Array:
    """Transpose of `real_haar_forward`: ū = s̄/2 + d̄, v̄ = s̄/2 − d̄ (per axis)."""
    num_axes = _check_channels(y_bar, "real_haar_forward_adjoint")
    z = _butterflies(y_bar, num_axes, lambda s, d: (s / 2 + d, s / 2 - d))
    return depth_to_space(z, 2)


def real_haar_inverse_adjoint(x_bar: jax.Array) -> jax.Array:
    """Transpose of `real_haar_inverse`: s̄ = ū + v̄, d̄ = (ū − v̄)/2 (per axis)."""
    num_axes = _check_input(x_bar, "real_haar_inverse_adjoint")
    return _butterflies(space_to_depth(x_bar, 2), num_axes, lambda u, v: (u + v, (u - v) / 2))


def _overflow(q: jax.Array, growth: int) -> jax.Array:
    """Whether a lifting level can take q out of int32, growing it by at most `growth` per axis
    (float estimate): forward |d| ≤ 2·max|q|; inverse v = s − ⌊d/2⌋, u = d + v: ≤ 3·max|q|."""
    return fixed_point.out_of_range(
        jnp.max(jnp.abs(q.astype(jnp.float32))) * growth ** (q.ndim - 2)
    )


def exact_haar_step() -> InvertibleStep:
    """Integer Haar coarsening of every `Fixed` leaf (channels ×2^d); aux = overflow flag."""
    return fixed_point.exact_linear_step(
        lifting_haar_forward,
        lifting_haar_inverse,
        real_haar_forward_adjoint,
        "exact_haar",
        real_fns=(real_haar_forward, real_haar_inverse),
        overflow=lambda q: _overflow(q, 2),
    )


def exact_haar_inverse_step() -> InvertibleStep:
    """Integer Haar refinement (inverse of `exact_haar_step`) of every `Fixed` leaf."""
    return fixed_point.exact_linear_step(
        lifting_haar_inverse,
        lifting_haar_forward,
        real_haar_inverse_adjoint,
        "exact_haar_inverse",
        real_fns=(real_haar_inverse, real_haar_forward),
        overflow=lambda q: _overflow(q, 3),
    )

"""Soft spectral normalisation of convolutions by power iteration on the convolution operator.

For a stride-1 "SAME" convolution y = K x acting on inputs of one example's shape (H, W, C_in),
the quantity that bounds the Lipschitz constant of an i-ResNet branch is the *operator* norm
‖K‖₂ = max ‖K x‖/‖x‖ over inputs of that shape (Behrmann, Grathwohl, Chen, Duvenaud,
Jacobsen (2019) "Invertible Residual Networks", arXiv:1811.00995, Section 3, Lipschitz
constraint by spectral normalisation). It is estimated by power iteration on K^T K at the real
input shape::

    v ← K^T K v / ‖K^T K v‖        (n times; revjax.conv.conv / conv_transpose)
    u = K v / ‖K v‖                 (the matching left vector)
    σ̂ = ‖K v‖ = uᵀ K v              (a lower bound of ‖K‖₂, exact in the limit)

and the weight is softly normalised (i-ResNet reference, coefficient c ∈ (0, 1))::

    W̃ = W / max(1, σ̂ / c)          so that ‖K̃‖₂ ≈ min(‖K‖₂, c).

The reshaped (kh·kw·C_in, C_out) kernel matrix has a *different* norm for k > 1 (it is neither
an upper nor a lower bound in general); for 1x1 convs and dense layers both coincide, and dense
kernels (C_in, C_out) go through the same code as 1x1 convolutions.

The iteration vector v (shape (1, H, W, C_in): one input example) is persistent state: the
caller keeps it between training steps (e.g. in a Flax "spectral_stats" collection) and only
advances it during training. As in the PyTorch reference, no gradient flows through v
(`stop_gradient`); σ̂ is differentiated with respect to W only.

Two forms of the same estimate, with the same value and the same gradient ∂σ̂/∂K = u vᵀ:

- `operator_norm_estimate`: σ̂ = ‖K v‖. Its gradient needs K v, a feature-map-sized
  (1, H, W, C_out) residual per convolution, kept from the forward pass to the backward pass.
- `bilinear_norm_estimate`: σ̂ = uᵀ K v with u and v stopped *state* (`power_iteration_pair`
  keeps the left vector u = K v/‖K v‖ next to v). Its gradient is the correlation of the two
  state vectors, so nothing activation-sized is kept per convolution: what a deep network
  with one spectrally normalised convolution per block needs for memory flat in depth.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from revjax.conv import conv, conv_transpose

__all__ = [
    "check_coefficient",
    "as_conv_kernel",
    "init_power_vector",
    "power_iteration",
    "operator_norm_estimate",
    "left_vector",
    "power_iteration_pair",
    "bilinear_norm_estimate",
    "soft_normalise",
    "spectral_normalise",
    "reshaped_kernel_norm",
]


def check_coefficient(c: float) -> float:
    """The normalisation coefficient must satisfy 0 < c < 1 (Lip(g) < 1: Behrmann et al. 2019)."""
    c = float(c)
    if not 0.0 < c < 1.0:
        raise ValueError(
            f"spectral-norm coefficient c must lie in (0, 1) so that Lip(g) < 1 and the "
            f"fixed-point inverse exists; got c={c}"
        )
    return c


def as_conv_kernel(kernel: jax.Array) -> jax.Array:
    """A dense kernel (C_in, C_out) as a 1x1 conv kernel (1, 1, C_in, C_out); convs unchanged."""
    return kernel.reshape(1, 1, *kernel.shape) if kernel.ndim == 2 else kernel


def init_power_vector(key: jax.Array, input_shape, dtype=jnp.float32) -> jax.Array:
    """A random unit vector of one input example's shape (1, *spatial, C_in)."""
    v = jax.random.normal(key, (1, *tuple(input_shape)), dtype)
    return v / jnp.linalg.norm(v)


def _unit_or_keep(u: jax.Array, previous: jax.Array) -> jax.Array:
    """u/‖u‖, or `previous` when u = 0 (K v = 0, e.g. a zero-initialised Fixup kernel)."""
    norm = jnp.linalg.norm(u)
    return jnp.where(norm > 0, u / jnp.where(norm > 0, norm, 1.0), previous)


def power_iteration(kernel: jax.Array, v: jax.Array, num_iterations: int) -> jax.Array:
    """`num_iterations` steps of v ← K^T K v / ‖K^T K v‖ (stride 1, SAME); no gradient.

    Args:
      kernel: (kh, kw, C_in, C_out) conv kernel or (C_in, C_out) dense kernel.
      v: (1, H, W, C_in) unit vector (for dense kernels (1, 1, 1, C_in)).
      num_iterations: >= 0.

    Returns:
      The updated unit vector, same shape as v (unchanged where K^T K v = 0).
    """
    if num_iterations < 0:
        raise ValueError(f"num_iterations must be >= 0, got {num_iterations}")
    k = jax.lax.stop_gradient(as_conv_kernel(kernel))
    v = jax.lax.stop_gradient(v)

    def body(_, u):
        return _unit_or_keep(conv_transpose(conv(u, k), k), u)

    return jax.lax.fori_loop(0, num_iterations, body, v)


def operator_norm_estimate(kernel: jax.Array, v: jax.Array) -> jax.Array:
    """σ̂ = ‖K v‖ for a (stopped) unit vector v: a lower bound of ‖K‖₂, differentiable in W.

    The norm is "safe": its gradient at K v = 0 (a zero-initialised kernel) is 0, not NaN.
    """
    squared = jnp.sum(jnp.square(conv(jax.lax.stop_gradient(v), as_conv_kernel(kernel))))
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def left_vector(kernel: jax.Array, v: jax.Array, previous: jax.Array) -> jax.Array:
    """u = K v/‖K v‖ (no gradient), or `previous` where K v = 0.

    Args:
      kernel: (kh, kw, C_in, C_out) or (C_in, C_out).
      v: (1, H, W, C_in) unit vector.
      previous: (1, H, W, C_out) unit vector kept when K v = 0 (a zero Fixup kernel).
    """
    k = jax.lax.stop_gradient(as_conv_kernel(kernel))
    return _unit_or_keep(conv(jax.lax.stop_gradient(v), k), jax.lax.stop_gradient(previous))


def power_iteration_pair(
    kernel: jax.Array, u: jax.Array, v: jax.Array, num_iterations: int
) -> tuple[jax.Array, jax.Array]:
    """`num_iterations` steps v ← K^T K v/‖K^T K v‖, then u = K v/‖K v‖: (u, v), no gradient.

    With num_iterations = 0, (u, v) are returned unchanged (evaluation: the state is read only).

    Args:
      kernel: (kh, kw, C_in, C_out) or (C_in, C_out).
      u: (1, H, W, C_out) left vector (stride 1, SAME: the output has the input's spatial shape).
      v: (1, H, W, C_in) right vector.
      num_iterations: >= 0.
    """
    if num_iterations == 0:
        return jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
    v = power_iteration(kernel, v, num_iterations)
    return left_vector(kernel, v, u), v


def bilinear_norm_estimate(kernel: jax.Array, u: jax.Array, v: jax.Array) -> jax.Array:
    """σ̂ = uᵀ K v for stopped unit vectors u, v; ∂σ̂/∂K is the correlation of u and v.

    Equals ‖K v‖ (`operator_norm_estimate`) when u = K v/‖K v‖, with the same gradient, but
    the backward pass needs only u and v (state), not K v. |σ̂| ≤ ‖K‖₂ for any unit u, v.

    Args:
      kernel: (kh, kw, C_in, C_out) or (C_in, C_out).
      u: (1, H, W, C_out); v: (1, H, W, C_in).
    """
    u = jax.lax.stop_gradient(u)
    return jnp.sum(u * conv(jax.lax.stop_gradient(v), as_conv_kernel(kernel)))


def soft_normalise(kernel: jax.Array, sigma: jax.Array, c: float) -> jax.Array:
    """W̃ = W / max(1, σ̂/c): rescale only when the estimated norm exceeds c."""
    return kernel / jnp.maximum(1.0, sigma / c).astype(kernel.dtype)


def spectral_normalise(
    kernel: jax.Array, v: jax.Array, c: float, num_iterations: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Advance the power iteration, then softly normalise: (W̃, σ̂, v_new).

    Args:
      kernel: (kh, kw, C_in, C_out) or (C_in, C_out).
      v: (1, H, W, C_in) persistent unit vector at the real input shape.
      c: coefficient in (0, 1).
      num_iterations: power-iteration steps to take now (0 in evaluation).

    Returns:
      The normalised kernel (same shape as `kernel`), the estimate σ̂ (scalar), the new v.

    >>> import jax
    >>> w = jax.random.normal(jax.random.key(0), (3, 3, 2, 2))
    >>> v = init_power_vector(jax.random.key(1), (8, 8, 2))
    >>> w_tilde, sigma, v = spectral_normalise(w, v, 0.9, 50)
    """
    v = power_iteration(kernel, v, num_iterations)
    sigma = operator_norm_estimate(kernel, v)
    return soft_normalise(kernel, sigma, c), sigma, v


def reshaped_kernel_norm(kernel: jax.Array) -> jax.Array:
    """Largest singular value of the (kh·kw·C_in, C_out) reshaped kernel (NOT ‖K‖₂ for k > 1)."""
    k = as_conv_kernel(kernel)
    return jnp.linalg.norm(k.reshape(-1, k.shape[-1]), ord=2)

"""Additive and affine coupling steps (RevNet: Gomez, Ren, Urtasun, Grosse 2017, arXiv:1707.04585).

The state is a pair of halves (x1, x2). F and G are arbitrary pure functions
`(params, u, rng) -> v` (they need not be invertible); only the coupling is.

Additive (RevNet)::

    y1 = x1 + F(x2)            x2 = y2 - G(y1)
    y2 = x2 + G(y1)            x1 = y1 - F(x2)

Affine (two-sided; scales strictly positive)::

    (a, b) = F(x2);  y1 = x1 * exp(a) + b
    (c, d) = G(y1);  y2 = x2 * exp(c) + d
    log |det J| = sum(a) + sum(c)

Both come with fused backward rules that evaluate F and G once each while reconstructing
(the reconstruction of Gomez, Ren, Urtasun, Grosse 2017, arXiv:1707.04585, Sec. 3.2, Algorithm 1):
the VJP closure of `jax.vjp(G, y1)` both rebuilds x2 and pulls ȳ2 back.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from revjax.engine import InvertibleStep

__all__ = [
    "additive_coupling",
    "affine_coupling",
    "affine_log_det",
    "split_halves",
    "merge_halves",
    "bounded_log_scale",
]

ResidualFn = Callable[..., jax.Array]


def split_halves(x: jax.Array, axis: int = -1) -> tuple[jax.Array, jax.Array]:
    """(x1, x2): first and second half of the channel axis. Odd counts are an error."""
    size = x.shape[axis]
    if size % 2:
        raise ValueError(
            f"cannot split {size} channels into two equal halves for a coupling; use an even "
            "channel count (e.g. pad or widen the stem)"
        )
    return tuple(jnp.split(x, 2, axis=axis))


def merge_halves(halves: tuple[jax.Array, jax.Array], axis: int = -1) -> jax.Array:
    """Inverse of `split_halves`."""
    return jnp.concatenate(halves, axis=axis)


def _split_rng(rng):
    if rng is None:
        return None, None
    return tuple(jax.random.split(rng))


def additive_coupling(F: ResidualFn, G: ResidualFn, name: str = "additive_coupling"):
    """RevNet additive coupling with params {"F": θ_F, "G": θ_G}; state (x1, x2)."""

    def forward(params, x, rng=None):
        x1, x2 = x
        rf, rg = _split_rng(rng)
        y1 = x1 + F(params["F"], x2, rf)
        y2 = x2 + G(params["G"], y1, rg)
        return y1, y2

    def inverse(params, y, rng=None):
        y1, y2 = y
        rf, rg = _split_rng(rng)
        x2 = y2 - G(params["G"], y1, rg)
        x1 = y1 - F(params["F"], x2, rf)
        return x1, x2

    def backward(params, y, y_bar, rng=None):
        y1, y2 = y
        y1_bar, y2_bar = y_bar
        rf, rg = _split_rng(rng)
        g, g_pullback = jax.vjp(lambda p, u: G(p, u, rg), params["G"], y1)
        x2 = y2 - g
        g_params_bar, y1_from_g = g_pullback(y2_bar)
        y1_hat = y1_bar + y1_from_g
        f, f_pullback = jax.vjp(lambda p, u: F(p, u, rf), params["F"], x2)
        x1 = y1 - f
        f_params_bar, x2_from_f = f_pullback(y1_hat)
        return (x1, x2), {"F": f_params_bar, "G": g_params_bar}, (y1_hat, y2_bar + x2_from_f)

    return InvertibleStep(forward, inverse, backward, name=name)


def bounded_log_scale(raw: jax.Array, max_log_scale: float) -> jax.Array:
    """a = M tanh(raw / M): a smooth clamp, so exp(a) ∈ (e^-M, e^M) never reaches 0 or ∞."""
    return max_log_scale * jnp.tanh(raw / max_log_scale)


def _check_max_log_scale(max_log_scale: float) -> None:
    if not (jnp.isfinite(max_log_scale) and max_log_scale > 0):
        raise ValueError(
            f"max_log_scale must be finite and > 0 (got {max_log_scale}); otherwise the affine "
            "scale exp(a) can reach 0 or infinity and the coupling stops being invertible"
        )


def affine_coupling(
    F: ResidualFn, G: ResidualFn, *, max_log_scale: float = 2.0, name: str = "affine_coupling"
):
    """Two-sided affine coupling; F and G return (raw_log_scale, shift) of the other half's shape.

    The log-scale is clamped smoothly to (−max_log_scale, max_log_scale), so the scale is
    bounded away from zero; `max_log_scale` ≤ 0 or infinite is rejected.
    """
    _check_max_log_scale(max_log_scale)

    def scale_shift(fn, p, u, rng):
        raw, shift = fn(p, u, rng)
        return bounded_log_scale(raw, max_log_scale), shift

    def forward(params, x, rng=None):
        x1, x2 = x
        rf, rg = _split_rng(rng)
        a, b = scale_shift(F, params["F"], x2, rf)
        y1 = x1 * jnp.exp(a) + b
        c, d = scale_shift(G, params["G"], y1, rg)
        return y1, x2 * jnp.exp(c) + d

    def inverse(params, y, rng=None):
        y1, y2 = y
        rf, rg = _split_rng(rng)
        c, d = scale_shift(G, params["G"], y1, rg)
        x2 = (y2 - d) * jnp.exp(-c)
        a, b = scale_shift(F, params["F"], x2, rf)
        return (y1 - b) * jnp.exp(-a), x2

    def backward(params, y, y_bar, rng=None):
        y1, y2 = y
        y1_bar, y2_bar = y_bar
        rf, rg = _split_rng(rng)
        (c, d), g_pullback = jax.vjp(lambda p, u: scale_shift(G, p, u, rg), params["G"], y1)
        x2 = (y2 - d) * jnp.exp(-c)
        # y2 = x2 e^c + d:  x̄2 = ȳ2 e^c,  c̄ = ȳ2 x2 e^c = ȳ2 (y2 − d),  d̄ = ȳ2.
        g_params_bar, y1_from_g = g_pullback((y2_bar * (y2 - d), y2_bar))
        y1_hat = y1_bar + y1_from_g
        (a, b), f_pullback = jax.vjp(lambda p, u: scale_shift(F, p, u, rf), params["F"], x2)
        x1 = (y1 - b) * jnp.exp(-a)
        f_params_bar, x2_from_f = f_pullback((y1_hat * (y1 - b), y1_hat))
        x_bar = (y1_hat * jnp.exp(a), y2_bar * jnp.exp(c) + x2_from_f)
        return (x1, x2), {"F": f_params_bar, "G": g_params_bar}, x_bar

    return InvertibleStep(forward, inverse, backward, name=name)


def affine_log_det(F: ResidualFn, G: ResidualFn, *, max_log_scale: float = 2.0):
    """log |det ∂y/∂x| per example (summed over all but the leading axis) of `affine_coupling`."""
    _check_max_log_scale(max_log_scale)

    def log_det(params, x, rng=None):
        x1, x2 = x
        rf, rg = _split_rng(rng)
        raw_a, b = F(params["F"], x2, rf)
        a = bounded_log_scale(raw_a, max_log_scale)
        y1 = x1 * jnp.exp(a) + b
        c = bounded_log_scale(G(params["G"], y1, rg)[0], max_log_scale)
        return jnp.sum(a, axis=tuple(range(1, a.ndim))) + jnp.sum(c, axis=tuple(range(1, c.ndim)))

    return log_det

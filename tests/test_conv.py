"""The layout-friendly convolutions equal `lax.conv` and their VJPs equal autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from revjax.conv import conv, conv_transpose

CASES = [
    # (x shape, kernel shape, stride, padding)
    ((2, 7, 9, 3), (3, 3, 3, 4), 1, "SAME"),
    ((2, 8, 6, 3), (3, 3, 3, 5), 2, "SAME"),
    ((1, 9, 9, 2), (5, 5, 2, 3), 2, "VALID"),
    ((2, 8, 8, 4), (1, 1, 4, 6), 2, "SAME"),
    ((1, 4, 6, 5, 2), (3, 3, 3, 2, 3), 1, "SAME"),
    ((1, 6, 5, 4, 2), (3, 3, 3, 2, 2), 2, "SAME"),
]


def _reference(x, kernel, stride, padding):
    rank = kernel.ndim - 2
    dn = ("NHWC", "HWIO", "NHWC") if rank == 2 else ("NDHWC", "DHWIO", "NDHWC")
    return lax.conv_general_dilated(x, kernel, (stride,) * rank, padding, dimension_numbers=dn)


def _inputs(xs, ks, seed=0):
    kx, kk = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, xs), jax.random.normal(kk, ks) * 0.3


@pytest.mark.parametrize("xs,ks,stride,padding", CASES)
def test_conv_and_its_vjp_equal_lax_autodiff(xs, ks, stride, padding):
    """conv(x, W) == lax.conv(x, W) and its (x̄, W̄) equal lax.conv's autodiff, float64."""
    x, w = _inputs(xs, ks)
    y_ref, vjp_ref = jax.vjp(lambda x, w: _reference(x, w, stride, padding), x, w)
    y, vjp = jax.vjp(lambda x, w: conv(x, w, stride, padding), x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    g = jax.random.normal(jax.random.key(3), y.shape)
    for got, want in zip(vjp(g), vjp_ref(g)):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)
    check_grads(lambda x, w: conv(x, w, stride, padding), (x, w), order=2, modes=("rev",))


@pytest.mark.parametrize("xs,ks,stride,padding", CASES)
def test_conv_transpose_is_the_exact_adjoint(xs, ks, stride, padding):
    """⟨K x, y⟩ == ⟨x, K^T y⟩, and K^T's VJP equals autodiff of the linear transpose."""
    x, w = _inputs(xs, ks, seed=1)
    kx = conv(x, w, stride, padding)
    y = jax.random.normal(jax.random.key(2), kx.shape)
    kty = conv_transpose(y, w, stride, padding, in_spatial=xs[1:-1])
    assert kty.shape == x.shape
    np.testing.assert_allclose(jnp.vdot(kx, y), jnp.vdot(x, kty), rtol=1e-12)
    check_grads(
        lambda y, w: conv_transpose(y, w, stride, padding, in_spatial=xs[1:-1]),
        (y, w),
        order=2,
        modes=("rev",),
    )


def test_conv_float32_matches_lax():
    """float32 results agree with lax.conv to float32 precision."""
    x, w = _inputs((2, 8, 8, 4), (3, 3, 4, 4))
    x, w = x.astype(jnp.float32), w.astype(jnp.float32)
    y = conv(x, w)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, _reference(x, w, 1, "SAME"), rtol=1e-5, atol=1e-5)


def test_conv_rejects_bad_input():
    """Mismatched channels, dtypes and ranks are clear errors."""
    x = jnp.ones((1, 4, 4, 3))
    with pytest.raises(ValueError, match="channels"):
        conv(x, jnp.ones((3, 3, 2, 4)))
    with pytest.raises(ValueError, match="dtype"):
        conv(x, jnp.ones((3, 3, 3, 4), jnp.float32))
    with pytest.raises(ValueError, match="rank"):
        conv(jnp.ones((4, 4, 3)), jnp.ones((3, 3, 3, 4)))
    with pytest.raises(ValueError, match="in_spatial"):
        conv_transpose(jnp.ones((1, 2, 2, 4)), jnp.ones((3, 3, 3, 4)), stride=2)

"""Integer (lifting) Haar: bit-exact round trip, scaling vs the orthonormal Haar, exact steps."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from revjax import engine, integer_haar, wavelets
from revjax import fixed_point as fp


@pytest.mark.parametrize("shape", [(2, 4, 6, 3), (1, 4, 2, 4, 2)], ids=["2d", "3d"])
def test_lifting_round_trip_is_bit_exact_over_the_whole_int32_range(shape):
    q = jax.random.randint(jax.random.key(0), shape, -(2**31), 2**31 - 1, dtype=jnp.int32)
    y = integer_haar.lifting_haar_forward(q)
    assert y.dtype == jnp.int32 and y.shape[-1] == shape[-1] * 2 ** (len(shape) - 2)
    np.testing.assert_array_equal(integer_haar.lifting_haar_inverse(y), q)


def test_lifting_rounds_the_real_map_and_its_scaling_vs_orthonormal():
    """lifting ≈ real map (±1 per band); real map = orthonormal Haar × [1/2, 1, 1, 2] (2-D)."""
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 3), jnp.float64)
    q = jnp.round(x * 1000).astype(jnp.int32)
    lifted = integer_haar.lifting_haar_forward(q)
    real = integer_haar.real_haar_forward(q.astype(jnp.float64))
    assert float(jnp.max(jnp.abs(lifted - real))) <= 1.5
    ortho = wavelets.haar_forward(x)
    scale = jnp.repeat(jnp.array([0.5, 1.0, 1.0, 2.0]), 3)
    np.testing.assert_allclose(integer_haar.real_haar_forward(x), ortho * scale, atol=1e-12)
    np.testing.assert_allclose(
        integer_haar.real_haar_inverse(integer_haar.real_haar_forward(x)), x, atol=1e-12
    )


@pytest.mark.parametrize("shape", [(2, 4, 4, 3), (1, 2, 4, 2, 2)], ids=["2d", "3d"])
def test_real_adjoints_are_transposes(shape):
    k1, k2 = jax.random.split(jax.random.key(2))
    x = jax.random.normal(k1, shape, jnp.float64)
    y = jax.random.normal(k2, integer_haar.real_haar_forward(x).shape, jnp.float64)
    fwd, inv = integer_haar.real_haar_forward, integer_haar.real_haar_inverse
    np.testing.assert_allclose(
        jnp.vdot(fwd(x), y), jnp.vdot(x, integer_haar.real_haar_forward_adjoint(y)), rtol=1e-12
    )
    np.testing.assert_allclose(
        jnp.vdot(inv(y), x), jnp.vdot(y, integer_haar.real_haar_inverse_adjoint(x)), rtol=1e-12
    )


def test_lifting_needs_integers_and_even_sizes():
    with pytest.raises(TypeError, match="integers"):
        integer_haar.lifting_haar_forward(jnp.zeros((1, 2, 2, 1)))
    with pytest.raises(ValueError, match="odd"):
        integer_haar.lifting_haar_forward(jnp.zeros((1, 3, 2, 1), jnp.int32))


def _force(p, u, rng=None):
    return -jnp.tanh(u @ p) @ p.T


def test_exact_multilevel_stack_reconstructs_bit_exactly_and_gradients_match():
    """leapfrog -> integer Haar -> leapfrog -> integer Haar^-1 -> leapfrog: exact end to end.

    Float64 parameters and carrier, so that reversible == store is checked to round-off (the
    fixed-point states are the same in any float dtype).
    """
    c = 2
    step = fp.exact_leapfrog_step(_force, 0.3)
    layers = [
        fp.exact_duplicate_state(),
        engine.Scan(step),
        integer_haar.exact_haar_step(),
        engine.Scan(step),
        integer_haar.exact_haar_inverse_step(),
        engine.Scan(step),
    ]
    keys = jax.random.split(jax.random.key(3), 3)

    def w(key, ch):
        return jax.random.normal(key, (6, ch, ch), jnp.float64) / math.sqrt(ch)

    params = (None, w(keys[0], c), None, w(keys[1], 4 * c), None, w(keys[2], c))
    x0 = jax.random.normal(jax.random.key(4), (2, 4, 4, c), jnp.float64)
    x = fp.encode(x0)
    errors = jax.jit(lambda p, u: engine.reconstruction_error(layers, p, u))(params, x)
    assert max(float(jnp.max(e)) for e in errors) == 0.0
    y, aux = jax.jit(lambda p, u: engine.apply_with_aux(layers, p, u))(params, x)
    fp.check_overflow(layers, aux)
    inv = engine.invert(layers, params, y)
    for a, b in zip(jax.tree.leaves(inv), jax.tree.leaves(x)):
        np.testing.assert_array_equal(a, b)

    def loss(p, z, mode):
        return jnp.sum(jnp.sin(fp.decode(engine.apply(layers, p, fp.encode(z), backprop=mode))[1]))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
    g_rev, g_store = grad(params, x0, "reversible"), grad(params, x0, "store")
    for a, b in zip(jax.tree.leaves(g_rev), jax.tree.leaves(g_store)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)

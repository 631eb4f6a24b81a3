"""Exact (fixed-point) reversibility: bit-exact reconstruction at depth 1000, gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from revjax import engine, integrators
from revjax import fixed_point as fp
from revjax.arithmetic import exact_arithmetic

# Bit-exactness assumes the recomputed residual gives the same bits as the forward one: test
# it at the optimisation level users compile with (tests/conftest.py).
pytestmark = pytest.mark.full_optimization

DEPTH = 1000
WIDTH = 8


def _residual(dtype):
    """u -> tanh(u W) computed in `dtype` (float32 or bfloat16), params float32."""

    def fn(p, u, rng=None):
        return jnp.tanh(u.astype(dtype) @ p.astype(dtype))

    return fn


def _weights(key, depth=DEPTH, scale=1.0):
    return scale * jax.random.normal(key, (depth, WIDTH, WIDTH), jnp.float32) / math.sqrt(WIDTH)


def _case(kind, dtype, depth=DEPTH):
    """(layers, params, float input, encode) of an exact stack of `depth` steps."""
    res = _residual(dtype)
    w = _weights(jax.random.key(0), depth)
    x0 = jax.random.normal(jax.random.key(1), (4, WIDTH), jnp.float32)
    if kind in ("coupling", "verlet"):
        scaled = lambda p, u, r: 0.1 * res(p, u, r)  # noqa: E731
        make = fp.exact_additive_coupling if kind == "coupling" else fp.exact_verlet_step
        layers = [engine.Scan(make(scaled, scaled))]
        params = ({"F": w, "G": 0.5 * w},)

        def encode(z):
            return (fp.encode(z), fp.encode(0.5 * z))

    else:
        if kind == "leapfrog":
            step = fp.exact_leapfrog_step(res, 0.1)
        else:
            step = fp.exact_midpoint_step(res, 0.05)
        layers = [fp.exact_duplicate_state(), engine.Scan(step)]
        params = (None, w)
        encode = fp.encode
    return layers, params, x0, encode


def _float_case(kind, depth=DEPTH):
    """The same network in float32 arithmetic (for comparison)."""
    res = _residual(jnp.float32)
    w = _weights(jax.random.key(0), depth)
    x0 = jax.random.normal(jax.random.key(1), (4, WIDTH), jnp.float32)
    step = integrators.leapfrog_step(res, 0.1)
    return [integrators.duplicate_state(), engine.Scan(step)], (None, w), x0


def _bitwise_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb)
    )


KINDS = ("coupling", "verlet", "leapfrog", "midpoint")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("kind", KINDS)
def test_exact_reconstruction_at_depth_1000(kind, dtype):
    """reconstruction_error is exactly 0.0 at every step and `invert` returns x bit for bit."""
    layers, params, x0, encode = _case(kind, dtype)
    x = encode(x0)
    errors = engine.reconstruction_error(layers, params, x)
    assert max(float(jnp.max(e)) for e in errors) == 0.0
    y, aux = engine.apply_with_aux(layers, params, x)
    fp.check_overflow(layers, aux)  # no overflow in this regime
    assert _bitwise_equal(engine.invert(layers, params, y), x)
    # The state really moved (the test is not vacuous).
    assert float(jnp.max(jnp.abs(fp.decode(y)[1] - fp.decode(x)[1]))) > 1e-2


def test_float_leapfrog_drifts_where_exact_does_not():
    """The float32 network of the same depth does not reconstruct exactly (the motivation)."""
    layers, params, x0 = _float_case("leapfrog")
    errors = engine.reconstruction_error(layers, params, x0)
    assert max(float(jnp.max(e)) for e in errors) > 1e-6


def _flat_grads(tree):
    return jnp.concatenate(
        [
            jnp.ravel(leaf).astype(jnp.float32)
            for leaf in jax.tree.leaves(tree)
            if leaf.dtype != jax.dtypes.float0
        ]
    )


@pytest.mark.parametrize("kind", KINDS)
def test_reversible_gradients_equal_store_at_depth_1000(kind):
    """Gradients (params and input) of reversible and store backprop agree to 1e-6 relative."""
    layers, params, x0, encode = _case(kind, jnp.float32)

    def loss(p, z, mode):
        y = fp.decode(engine.apply(layers, p, encode(z), backprop=mode))
        return sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(y))

    g_rev = _flat_grads(jax.grad(loss, argnums=(0, 1))(params, x0, "reversible"))
    g_store = _flat_grads(jax.grad(loss, argnums=(0, 1))(params, x0, "store"))
    assert float(jnp.linalg.norm(g_store)) > 0
    rel = float(jnp.linalg.norm(g_rev - g_store) / jnp.linalg.norm(g_store))
    assert rel <= 1e-6


def test_straight_through_gradients_are_the_real_networks():
    """Shallow exact leapfrog: gradients match the float network's to the rounding (2^-20)."""
    layers, params, x0, encode = _case("leapfrog", jnp.float32, depth=5)
    f_layers, _, _ = _float_case("leapfrog", depth=5)

    def exact_loss(p):
        return jnp.sum(jnp.sin(fp.decode(engine.apply(layers, p, encode(x0)))[1]))

    def float_loss(p):
        return jnp.sum(jnp.sin(engine.apply(f_layers, p, x0)[1]))

    g_exact = jax.grad(exact_loss)(params)[1]
    g_float = jax.grad(float_loss)(params)[1]
    np.testing.assert_allclose(g_exact, g_float, rtol=1e-4, atol=1e-4)


def test_codec_round_trip_and_straight_through_vjp():
    x = jnp.array([0.0, 1.0, -2.5, 3.14159, 1e-9], jnp.float32)
    s = fp.encode(x, frac_bits=10)
    assert s.q.dtype == jnp.int32
    np.testing.assert_array_equal(s.q, np.round(np.asarray(x) * 1024).astype(np.int32))
    assert float(jnp.max(jnp.abs(fp.decode(s, frac_bits=10) - x))) <= 2.0**-11
    w = jnp.arange(5.0, dtype=jnp.float32)
    grad = jax.grad(lambda z: jnp.sum(w * fp.decode(fp.encode(z, 10), 10)))(x)
    np.testing.assert_array_equal(grad, w)


def test_bad_configuration_is_refused():
    res = _residual(jnp.float32)
    with pytest.raises(ValueError, match="cannot be damped"):
        fp.exact_leapfrog_step(res, 0.1, damping=0.5)
    with pytest.raises(ValueError, match="frac_bits"):
        fp.exact_midpoint_step(res, 0.1, frac_bits=31)
    with pytest.raises(TypeError, match="frac_bits"):
        fp.exact_additive_coupling(res, res, frac_bits=2.5)
    with pytest.raises(TypeError, match="floating"):
        fp.encode(jnp.arange(3))


def test_overflow_is_detected_and_names_the_layer():
    """A state that leaves |x| < 2^(31−f) is flagged; check_overflow names layer and remedy."""
    res = _residual(jnp.float32)
    step = fp.exact_leapfrog_step(res, 1.0, frac_bits=28)  # range |x| < 8
    layers = [fp.exact_duplicate_state(), engine.Scan(step, name="unit0")]
    w = _weights(jax.random.key(0), depth=50, scale=8.0)
    x = fp.encode(jnp.full((4, WIDTH), 1.0, jnp.float32), frac_bits=28)
    y, aux = engine.apply_with_aux(layers, (None, w), x)
    assert bool(fp.any_overflow(aux))
    with pytest.raises(fp.FixedPointOverflowError, match=r"unit0.*frac_bits=28.*fewer frac_bits"):
        fp.check_overflow(layers, aux, frac_bits=28)
    # Reconstruction is still exact (wrap-around is invertible), but the values are wrong.
    assert _bitwise_equal(engine.invert(layers, (None, w), y), x)
    # With the default 20 fractional bits the same input and a small step do not overflow.
    ok_layers = [fp.exact_duplicate_state(), engine.Scan(fp.exact_leapfrog_step(res, 0.1))]
    ones = fp.encode(jnp.ones((4, WIDTH), jnp.float32))
    _, aux = engine.apply_with_aux(ok_layers, (None, w / 8), ones)
    assert not bool(fp.any_overflow(aux))
    fp.check_overflow(ok_layers, aux)


def test_increment_out_of_range_and_nan_are_flagged():
    dq, _, bad = fp.quantize(jnp.array([1.0, 2.0**12]), frac_bits=20)
    assert bool(bad) and int(dq[1]) == 0
    assert bool(fp.quantize(jnp.array([jnp.nan]), frac_bits=20)[2])
    assert not bool(fp.quantize(jnp.array([1.0, -1000.0]), frac_bits=20)[2])


def test_exact_space_to_depth_and_padding_round_trip():
    x = fp.encode(jax.random.normal(jax.random.key(2), (2, 4, 4, 3), jnp.float32))
    exact = exact_arithmetic()
    layers = [exact.zero_pad_channels_step(1), exact.space_to_depth_step()]
    y = engine.apply(layers, (None, None), x)
    assert y.q.shape == (2, 2, 2, 16)
    assert _bitwise_equal(engine.invert(layers, (None, None), y), x)


def test_reconstruction_error_of_fixed_point_states_is_meaningful():
    """A step whose inverse is off by one grid unit reports error ≈ 2^-f·sqrt(n)/‖x‖ (int32
    squares in the engine's relative error used to wrap around)."""
    base = fp.exact_midpoint_step(_residual(jnp.float32), 0.05)

    def off_by_one(params, y, rng=None):
        prev, cur = base.inverse(params, y, rng)
        return fp.Fixed(prev.q + 1, prev.g), cur

    step = base._replace(inverse=off_by_one, backward=None)  # the backward pass uses inverse
    w = _weights(jax.random.key(0), depth=1)[0]
    x0 = 3.0 * jax.random.normal(jax.random.key(1), (4, WIDTH), jnp.float32)
    x = (fp.encode(x0), fp.encode(x0))
    (err,) = engine.reconstruction_error([step], (w,), x)
    expected = 2.0**-20 * math.sqrt(x0.size) / float(jnp.linalg.norm(jnp.stack([x0, x0])))
    np.testing.assert_allclose(float(err), expected, rtol=1e-3)

"""Arithmetic as a value (`revjax.arithmetic`): a family written once against the seam runs in
float and in exact fixed-point arithmetic, with no exact-specific code.

Identities checked: in exact arithmetic the reconstruction of a 1000-step body is bit-exact
(error exactly 0) and inverse(forward(x)) == x bit for bit for every step of the kit; in both
arithmetics reversible gradients equal stored-activation gradients (float64); a family that
builds its steps around the seam is caught.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from revjax import arithmetic, engine, integrators, transitions
from revjax.arithmetic import exact_arithmetic, float_arithmetic

ARITHMETICS = {"float": float_arithmetic(), "exact": exact_arithmetic(frac_bits=20)}
WIDTH = 4


def residual(p, u, rng=None):
    """A tiny residual function: 0.1·tanh(u W + b), u (N, WIDTH)."""
    return 0.1 * jnp.tanh(u @ p["w"] + p["b"])


def force(p, u, rng=None):
    """A conservative leapfrog force f(u) = −tanh(u W + b) Wᵀ, u (N, WIDTH)."""
    return -jnp.tanh(u @ p["w"] + p["b"]) @ p["w"].T


def toy_family(arith, depth):
    """A new family in three lines: a zero-velocity start, Verlet steps, then leapfrog steps."""
    verlet = engine.Scan(arith.verlet_step(residual, residual), name="toy_verlet")
    leapfrog = engine.Scan(arith.leapfrog_step(force, 0.5), name="toy_leapfrog")
    return [arith.duplicate_state(), verlet, leapfrog]


def toy_params(depth, seed=0):
    def mlp(k, n):
        return {"w": jax.random.normal(k, (n, WIDTH, WIDTH)) / WIDTH, "b": jnp.zeros((n, WIDTH))}

    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return [None, {"F": mlp(k1, depth // 2), "G": mlp(k2, depth // 2)}, mlp(k3, depth // 2)]


def _x(shape=(3, WIDTH), key=1):
    return jax.random.normal(jax.random.key(key), shape, jnp.float64)


def _grads(arith, layers, params, x, backprop):
    def loss(p, u):
        y, _ = arith.run(layers, p, u, backprop=backprop)
        return sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(y))

    return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)


def _assert_close(a, b, rtol):
    """‖a − b‖ ≤ rtol ‖b‖ over all leaves of the gradient pytrees."""
    a, b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(a) == len(b)
    diff = sum(float(jnp.sum(jnp.square(u - v))) for u, v in zip(a, b))
    norm = sum(float(jnp.sum(jnp.square(v))) for v in b)
    assert diff**0.5 <= rtol * norm**0.5, (diff**0.5 / norm**0.5, rtol)


@pytest.mark.full_optimization
def test_toy_family_reconstructs_bit_exactly_at_depth_1000_in_exact_arithmetic():
    """Exact: every reconstructed step input of a 1000-step body equals the forward's, bit for
    bit (error exactly 0.0); the same family in float drifts (error > 0), by round-off only."""
    params, x = toy_params(1000), _x()
    errors = {}
    for name, arith in ARITHMETICS.items():
        layers = toy_family(arith, 1000)
        run = jax.jit(lambda p, u, layers=layers: engine.reconstruction_error(layers, p, u))
        errors[name] = max(float(jnp.max(e)) for e in run(params, arith.encode(x)))
        y, _ = arith.run(layers, params, x)
        assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in y)  # no fixed-point overflow
    assert errors["exact"] == 0.0
    assert 0.0 < errors["float"] < 1e-6  # float64 round-off, amplified over 1000 steps


@pytest.mark.parametrize("name", ARITHMETICS)
def test_toy_family_reversible_gradients_equal_store(name):
    """d/dθ and d/dx of a 1000-step body: reversible backprop == stored activations (float64)."""
    arith = ARITHMETICS[name]
    layers, params, x = toy_family(arith, 1000), toy_params(1000), _x()
    reversible = _grads(arith, layers, params, x, "reversible")
    stored = _grads(arith, layers, params, x, "store")
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(stored)) > 0
    # exact: straight-through gradients along a bit-exact reconstruction; float: round-off
    # drift (1e-9 relative at the input, see above) shows in the 8th digit
    _assert_close(reversible, stored, rtol={"exact": 1e-12, "float": 1e-6}[name])


# --------------------------------------------------------------------------------------------
# Every step of the kit, in both arithmetics.


def _dense(key):
    return {"w": jax.random.normal(key, (WIDTH, WIDTH)) / WIDTH, "b": jnp.zeros(WIDTH)}


def _with_stats(p, u, rng=None):
    mean = jnp.mean(u, axis=0)
    return residual(p, u - mean), {"mean": mean}


def _pool(params, x, rng=None):
    return jax.tree.map(lambda u: transitions.pool_pad(u, u.shape[-1] + 2), x)


K1, K2 = jax.random.split(jax.random.key(5))
IMAGE = (2, 4, 4, 4)
KIT = {
    # name: (build(arith) -> layers, params, input shape, pair input?)
    "additive_coupling": (lambda a: [a.additive_coupling(residual, residual)],
                          [{"F": _dense(K1), "G": _dense(K2)}], (3, WIDTH), True),
    "additive_coupling_with_stats": (
        lambda a: [a.additive_coupling_with_stats(_with_stats, _with_stats, train=True)],
        [{"F": _dense(K1), "G": _dense(K2)}], (3, WIDTH), True),
    "verlet_step_with_stats": (
        lambda a: [a.verlet_step_with_stats(_with_stats, _with_stats, train=False)],
        [{"F": _dense(K1), "G": _dense(K2)}], (3, WIDTH), True),
    "midpoint_step": (lambda a: [a.midpoint_step(residual, 0.3)], [_dense(K1)], (3, WIDTH), True),
    "euler_start": (lambda a: [a.euler_start(residual, 0.3)], [_dense(K1)], (3, WIDTH), False),
    "linear_step": (lambda a: [a.linear_step(jnp.flip, jnp.flip)], [None], (3, WIDTH), False),
    "zero_pad_channels_step": (lambda a: [a.zero_pad_channels_step(2)], [None], IMAGE, False),
    "space_to_depth_step": (lambda a: [a.space_to_depth_step()], [None], IMAGE, False),
    "haar_step": (lambda a: [a.haar_step(), a.haar_inverse_step()], [None, None], IMAGE, False),
    "stored_transition": (
        lambda a: [a.duplicate_state(), a.stored_transition(engine.Transition(_pool))],
        [None, None], IMAGE, False),
}  # fmt: skip


def rogue_coupling(arith):
    """Breaks the seam: builds its Verlet step with `integrators` directly, not `arith`."""
    return [arith.duplicate_state(), integrators.verlet_step(residual, residual)]


def rogue_transition(arith):
    """Breaks the seam: a stored transition that is not passed through `arith`."""
    return [arith.duplicate_state(), engine.Transition(_pool), arith.zero_pad_channels_step(2)]


@pytest.mark.parametrize(
    "family,shape,params,match",
    [
        (rogue_coupling, (3, WIDTH), [None, {"F": _dense(K1), "G": _dense(K2)}], "Fixed"),
        (rogue_transition, IMAGE, [None, None, None], "outside the arithmetic"),
    ],
    ids=["coupling", "transition"],
)
def test_a_family_that_ignores_the_seam_fails_in_exact_arithmetic(family, shape, params, match):
    """Float cannot tell (a rogue family is a correct float family); exact arithmetic refuses
    it with a TypeError instead of returning values computed on the wrong kind of state: a
    residual function receives a `Fixed` state, or the body returns non-integer states."""
    x = _x(shape)
    y, _ = ARITHMETICS["float"].run(family(ARITHMETICS["float"]), params, x)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in y)
    with pytest.raises(TypeError, match=match):
        ARITHMETICS["exact"].run(family(ARITHMETICS["exact"]), params, x)


@pytest.mark.parametrize("arith_name", ARITHMETICS)
@pytest.mark.parametrize("step", KIT)
def test_every_step_of_the_kit_inverts_and_backpropagates(step, arith_name):
    """inverse(forward(x)) == x (bit for bit in exact arithmetic), and reversible == store."""
    arith = ARITHMETICS[arith_name]
    build, params, shape, pair = KIT[step]
    layers = build(arith)
    x = (_x(shape, 2), _x(shape, 3)) if pair else _x(shape, 2)
    if not any(isinstance(layer, engine.Transition) for layer in layers):
        state = arith.encode(x)
        back = engine.invert(layers, params, engine.apply(layers, params, state))
        for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state), strict=True):
            if arith_name == "exact":
                np.testing.assert_array_equal(a, b)
            else:
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    reversible = _grads(arith, layers, params, x, "reversible")
    _assert_close(reversible, _grads(arith, layers, params, x, "store"), rtol=1e-12)


def test_both_arithmetics_offer_the_same_kit():
    """One interface: the same constructors, and `get` turns a config's strings into values."""
    float_, exact = ARITHMETICS.values()
    assert type(float_) is type(exact) is arithmetic.Arithmetic
    assert all(callable(f) for f in exact[2:]) and all(callable(f) for f in float_[2:])
    assert arithmetic.get("float") is arithmetic.FLOAT
    assert arithmetic.get("exact", 12).frac_bits == 12
    assert arithmetic.get(exact) is exact


def test_get_rejects_bad_configurations_before_tracing():
    with pytest.raises(ValueError, match="unknown arithmetic 'integer'"):
        arithmetic.get("integer")
    with pytest.raises(ValueError, match="frac_bits"):
        arithmetic.get("exact", 31)
    with pytest.raises(ValueError, match=r"only \('float',\)\): no exact form"):
        arithmetic.get("exact", supported=("float",), why=": no exact form")
    with pytest.raises(ValueError, match="damping"):
        ARITHMETICS["exact"].leapfrog_step(residual, 0.5, damping=0.1)


def test_exact_run_reports_overflow_as_nan_and_check_overflow_names_the_layer():
    """A state leaving the fixed-point range makes the output NaN; `check_overflow` names it."""
    from revjax.fixed_point import FixedPointOverflowError

    arith = exact_arithmetic(frac_bits=30)  # range |x| < 2
    layers, params = toy_family(arith, 4), toy_params(4)
    x = 1.99 * jnp.ones((3, WIDTH), jnp.float64)
    y, _ = arith.run(layers, params, x)
    assert all(bool(jnp.all(jnp.isnan(leaf))) for leaf in y)
    with pytest.raises(FixedPointOverflowError, match="toy_verlet"):
        arith.check_overflow(layers, params, x)
    ARITHMETICS["float"].check_overflow(layers, params, x)  # a no-op in float

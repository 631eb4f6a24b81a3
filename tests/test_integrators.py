"""Two-state integrators, start rules and resampling steps: exact inverses and reversible VJPs."""

from functools import partial

import jax
import jax.numpy as jnp
import pytest

from revjax import engine, integrators, transitions
from revjax.conv import conv, conv_transpose

C = 4


def symmetric_force(p, u, rng):
    """f(u) = −K^T relu(K u + b): the symmetric (block-low-rank when r < C) layer."""
    return -conv_transpose(jax.nn.relu(conv(u, p["K"]) + p["b"]), p["K"])


def init_force(key, depth=None, rank=3, channels=C, scale=0.3):
    lead = () if depth is None else (depth,)
    return {
        "K": scale * jax.random.normal(key, lead + (3, 3, channels, rank)),
        "b": jnp.zeros(lead + (rank,)),
    }


def pair(key, shape=(2, 8, 8, C)):
    k1, k2 = jax.random.split(key)
    return jax.random.normal(k1, shape), jax.random.normal(k2, shape)


STEPS = {
    "leapfrog": integrators.leapfrog_step(symmetric_force, 0.5),
    "leapfrog_damped": integrators.leapfrog_step(symmetric_force, 0.5, damping=0.2),
    "midpoint": integrators.midpoint_step(symmetric_force, 0.2),
    "verlet": integrators.verlet_step(symmetric_force, symmetric_force),
}


def step_params(name, key, depth=None):
    if name == "verlet":
        kf, kg = jax.random.split(key)
        return {"F": init_force(kf, depth), "G": init_force(kg, depth)}
    return init_force(key, depth)


@pytest.mark.parametrize("name", sorted(STEPS))
def test_step_inverse_and_fused_backward(name):
    """inverse(forward(x)) == x (1e-13) and the fused backward equals inverse-then-vjp."""
    step = STEPS[name]
    params = step_params(name, jax.random.key(1))
    x = pair(jax.random.key(2))
    y = step.forward(params, x)
    assert float(engine._relative_error(step.inverse(params, y), x)) < 1e-13
    y_bar = pair(jax.random.key(3))
    fused = engine.step_backward(step, params, y, y_bar, None)
    generic = engine.step_backward(step._replace(backward=None), params, y, y_bar, None)
    for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(generic)):
        assert float(jnp.max(jnp.abs(a - b))) < 1e-11


def _network(name, start):
    """start step, Scan of 6 steps, Haar coarsening, Scan of 3 steps."""
    step = STEPS[name]
    layers = (start, engine.Scan(step), transitions.haar_step(), engine.Scan(step))
    keys = jax.random.split(jax.random.key(4), 3)
    start_params = init_force(keys[0]) if start.name == "euler_start" else None
    params = (
        start_params,
        step_params(name, keys[1], depth=6),
        None,
        jax.tree.map(lambda a: a, step_params(name, keys[2], depth=3)),
    )
    # after Haar the state has 4C channels: re-draw the second stack's kernels at that width
    if name == "verlet":
        # h is folded into F and G (official Hamiltonian code): keep the forces small
        params = (
            None,
            {"F": init_force(keys[1], 6, scale=0.1), "G": init_force(keys[0], 6, scale=0.1)},
            None,
            {
                "F": init_force(keys[2], 3, channels=4 * C, scale=0.1),
                "G": init_force(keys[1], 3, channels=4 * C, scale=0.1),
            },
        )
    else:
        params = params[:3] + (init_force(keys[2], 3, channels=4 * C),)
    return layers, params


@pytest.mark.parametrize(
    "name,start",
    [
        ("leapfrog", integrators.duplicate_state()),
        ("leapfrog", integrators.euler_start(symmetric_force, 0.125)),
        ("midpoint", integrators.euler_start(symmetric_force, 0.2)),
        ("verlet", None),
    ],
)
def test_multilevel_reversible_gradients_equal_store(name, start):
    """Start rule + stack + Haar + stack: reversible gradients == store to 1e-9 (float64)."""
    if start is None:  # Verlet acts on a channel split: start from a pair directly
        layers, params = _network(name, integrators.duplicate_state())
        layers, params = layers[1:], params[1:]
        x = pair(jax.random.key(5))
    else:
        layers, params = _network(name, start)
        x = jax.random.normal(jax.random.key(5), (2, 8, 8, C))

    def loss(mode):
        def f(params, x):
            y = engine.apply(layers, params, x, backprop=mode)
            return jnp.sum(jnp.sin(y[1])) + 0.3 * jnp.sum(y[0] ** 2)

        return f

    g_rev = jax.grad(loss("reversible"), argnums=(0, 1))(params, x)
    g_store = jax.grad(loss("store"), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(g_rev), jax.tree.leaves(g_store)):
        scale = max(float(jnp.max(jnp.abs(b))), 1e-30)
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-9 * scale
    y = engine.apply(layers, params, x)
    assert float(engine._relative_error(engine.invert(layers, params, y), x)) < 1e-12


def test_bad_step_sizes():
    """h <= 0, non-finite h, and damping that breaks invertibility are rejected."""
    for h in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="step size"):
            integrators.leapfrog_step(symmetric_force, h)
        with pytest.raises(ValueError, match="step size"):
            integrators.midpoint_step(symmetric_force, h)
    with pytest.raises(ValueError, match="damping"):
        integrators.leapfrog_step(symmetric_force, 1.0, damping=2.0)


def test_pool_pad_and_reversible_resampling():
    """pool_pad averages 2x2 and pads channels symmetrically; odd sizes are errors."""
    x = jnp.arange(2 * 4 * 4 * 2, dtype=jnp.float64).reshape(2, 4, 4, 2)
    y = transitions.pool_pad(x, 6)
    assert y.shape == (2, 2, 2, 6)
    assert jnp.allclose(y[..., 2:4], x.reshape(2, 2, 2, 2, 2, 2).mean((2, 4)))
    assert jnp.all(y[..., :2] == 0) and jnp.all(y[..., 4:] == 0)
    with pytest.raises(ValueError, match="cannot halve"):
        transitions.pool_pad(jnp.ones((1, 5, 4, 2)), 4)
    with pytest.raises(ValueError, match="symmetrically"):
        transitions.pool_pad(jnp.ones((1, 4, 4, 2)), 5)
    for step in (
        transitions.space_to_depth_step(),
        transitions.haar_step(),
        transitions.haar_step(scaled=True),
    ):
        u = pair(jax.random.key(0))
        v = step.forward(None, u)
        v_bar = pair(jax.random.key(1), v[0].shape)
        _, vjp = jax.vjp(partial(step.forward, None), u)
        x, _, x_bar = step.backward(None, v, v_bar)
        for a, b in zip(jax.tree.leaves((x, x_bar)), jax.tree.leaves((u, vjp(v_bar)[0]))):
            assert float(jnp.max(jnp.abs(a - b))) < 1e-12

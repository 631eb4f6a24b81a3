"""Flax modules over the engine: CouplingStack behaves like any Flax model."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from revjax.nn import CouplingStack


class ConvResidual(nn.Module):
    """relu(conv) -> dropout -> conv, float64 params."""

    @nn.compact
    def __call__(self, u):
        c = u.shape[-1]
        h = nn.relu(nn.Conv(c, (3, 3), param_dtype=jnp.float64, dtype=jnp.float64)(u))
        h = nn.Dropout(0.3, deterministic=not self.has_rng("dropout"))(h)
        return nn.Conv(c, (3, 3), param_dtype=jnp.float64, dtype=jnp.float64)(h)


class AffineResidual(nn.Module):
    @nn.compact
    def __call__(self, u):
        out = ConvResidual()(u)
        return 0.1 * out, out


def _model(coupling="additive", backprop="reversible", depth=3):
    res = ConvResidual() if coupling == "additive" else AffineResidual()
    return CouplingStack(F=res, G=res, depth=depth, coupling=coupling, backprop=backprop)


@pytest.mark.parametrize("coupling", ["additive", "affine"])
def test_coupling_stack_init_apply_and_gradients(coupling):
    """Stacked params live in variables['params']; reversible grads == store grads (x64),
    with dropout keys replayed exactly during reconstruction."""
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
    variables = _model(coupling).init(jax.random.key(1), x)
    kernels = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"]["F_blocks"])
        if "kernel" in jax.tree_util.keystr(path)
    ]
    assert kernels and all(k.shape == (3, 3, 3, 2, 2) for k in kernels)  # (depth, kh, kw, C/2, C/2)

    def loss(backprop):
        def f(params, x):
            y = _model(coupling, backprop).apply(
                {"params": params}, x, deterministic=False, rngs={"dropout": jax.random.key(5)}
            )
            return jnp.sum(jnp.sin(y))

        return f

    g_rev = jax.grad(loss("reversible"), argnums=(0, 1))(variables["params"], x)
    g_store = jax.grad(loss("store"), argnums=(0, 1))(variables["params"], x)
    for a, b in zip(jax.tree.leaves(g_rev), jax.tree.leaves(g_store)):
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-9 * max(float(jnp.max(jnp.abs(b))), 1e-30)


def test_coupling_stack_bad_config():
    """Odd channel counts, unknown coupling and unknown backprop are clear errors."""
    with pytest.raises(ValueError, match="equal halves"):
        _model().init(jax.random.key(0), jnp.ones((1, 4, 4, 3)))
    with pytest.raises(ValueError, match="unknown coupling"):
        _model(coupling="magic").init(jax.random.key(0), jnp.ones((1, 4, 4, 4)))
    with pytest.raises(ValueError, match="unknown backprop"):
        _model(backprop="magic").init(jax.random.key(0), jnp.ones((1, 4, 4, 4)))


class FlaxStyleDropoutResidual(nn.Module):
    """The usual Flax way: `deterministic` is a call argument handed to nn.Dropout."""

    @nn.compact
    def __call__(self, u, deterministic: bool = True):
        h = nn.Dense(u.shape[-1], param_dtype=jnp.float64)(u)
        return nn.Dropout(0.5)(h, deterministic=deterministic)


def test_coupling_stack_passes_deterministic_to_flax_style_residuals():
    """deterministic=False reaches F and G's Dropout (outputs vary with the dropout key);
    deterministic=True does not (no dropout rng is even needed); reversible == store."""
    res = FlaxStyleDropoutResidual()
    x = jax.random.normal(jax.random.key(0), (2, 6))
    model = CouplingStack(F=res, G=res, depth=2)
    variables = model.init(jax.random.key(1), x)
    det = model.apply(variables, x)
    assert jnp.allclose(det, model.apply(variables, x, deterministic=True))

    def train(key, backprop="reversible"):
        stack = CouplingStack(F=res, G=res, depth=2, backprop=backprop)
        return stack.apply(variables, x, deterministic=False, rngs={"dropout": key})

    a, b = train(jax.random.key(2)), train(jax.random.key(3))
    assert not jnp.allclose(a, det) and not jnp.allclose(a, b)

    def loss(params, backprop):
        y = CouplingStack(F=res, G=res, depth=2, backprop=backprop).apply(
            {"params": params}, x, deterministic=False, rngs={"dropout": jax.random.key(2)}
        )
        return jnp.sum(jnp.sin(y))

    g_rev = jax.grad(loss)(variables["params"], "reversible")
    g_store = jax.grad(loss)(variables["params"], "store")
    for u, v in zip(jax.tree.leaves(g_rev), jax.tree.leaves(g_store)):
        assert float(jnp.max(jnp.abs(u - v))) <= 1e-9 * max(float(jnp.max(jnp.abs(v))), 1e-30)

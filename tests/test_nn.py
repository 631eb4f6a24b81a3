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


class PlainResidual(nn.Module):
    """conv3x3 -> ReLU -> conv3x3 at Flax's defaults; `zero_last` zero-initialises the last
    conv (Fixup / SkipInit style: every step starts as the identity)."""

    zero_last: bool = False

    @nn.compact
    def __call__(self, u):
        c = u.shape[-1]
        last = nn.initializers.zeros if self.zero_last else nn.linear.default_kernel_init
        return nn.Conv(c, (3, 3), kernel_init=last)(nn.relu(nn.Conv(c, (3, 3))(u)))


def test_drift_guard_measures_a_coupling_stack():
    """`revjax.models.model_reconstruction_error` and the `reconstruction_error` method work on a
    user's CouplingStack (which has no `train` argument), in both modes, and agree with the
    engine's measurement of the same body; in float64 the error is round-off."""
    from revjax import engine, models
    from revjax.couplings import additive_coupling, split_halves
    from revjax.nn import residual_fn

    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
    model = _model(depth=3)
    variables = model.init(jax.random.key(1), x)
    error = models.model_reconstruction_error(model, variables, x)
    assert error is not None and error.shape == ()
    assert float(model.reconstruction_error(variables, x, train=True)) == float(error)
    f = residual_fn(ConvResidual())
    blocks = variables["params"]
    expected = engine.reconstruction_error(
        [engine.Scan(additive_coupling(f, f))],
        [{"F": blocks["F_blocks"], "G": blocks["G_blocks"]}],
        split_halves(x),
    )
    assert float(error) == pytest.approx(float(max(jnp.max(e) for e in expected)), rel=1e-6)
    assert 0 <= float(error) < 1e-12


@pytest.mark.parametrize("zero_last", [False, True])
def test_coupling_stack_drift_at_depth_32_float32(zero_last):
    """README's CouplingStack(F=Residual(), G=Residual(), depth=32) in float32. At Flax's
    default init the state grows ~100x and more and reversible gradients are percent-level off
    the stored ones: the guard reports an error far above the trainer's drift_rtol (1e-3).
    With the last conv of each residual zero-initialised (README's initialisation) the stack
    starts as the identity: no growth, no drift, reversible gradients equal stored ones."""
    from revjax import models

    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 16), jnp.float32)
    res = PlainResidual(zero_last=zero_last)
    stack = CouplingStack(F=res, G=res, depth=32)
    variables = stack.init(jax.random.key(0), x)
    growth = float(jnp.linalg.norm(stack.apply(variables, x)) / jnp.linalg.norm(x))
    error = float(models.model_reconstruction_error(stack, variables, x))

    def loss(params, backprop):
        return jnp.mean(stack.clone(backprop=backprop).apply({"params": params}, x) ** 2)

    g_rev = jax.grad(loss)(variables["params"], "reversible")
    g_store = jax.grad(loss)(variables["params"], "store")
    pairs = zip(jax.tree.leaves(g_rev), jax.tree.leaves(g_store))
    diff = sum(jnp.sum((a - b) ** 2) for a, b in pairs)
    scale = sum(jnp.sum(b**2) for b in jax.tree.leaves(g_store))
    grad_error = float(jnp.sqrt(diff / scale))
    if zero_last:
        assert growth == pytest.approx(1.0, abs=1e-6)
        assert error <= 1e-6 and grad_error <= 1e-6
    else:
        assert growth > 100 and grad_error > 1e-3
        assert error > 1e-3  # the guard sees what the gradients suffer

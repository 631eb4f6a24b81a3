"""Models with arithmetic="exact": hyperbolic2d/3d (and the low-cost Hamiltonian)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from revjax import engine, models
from revjax import fixed_point as fp
from revjax.families import hyperbolic


def _small_hyperbolic(**overrides):
    kw = dict(width=4, levels=1, units=2, num_classes=3, dtype=jnp.float64)
    kw.update(overrides)
    return models.create("hyperbolic2d", **kw)


def test_exact_hyperbolic_body_reconstructs_bit_exactly():
    config = hyperbolic.make_config(
        spatial_dims=2, in_channels=3, width=4, levels=1, units=2, ranks=None,
        h=0.5, arithmetic="exact",
    )  # fmt: skip
    layers = hyperbolic.multilevel_layers(config)
    params = hyperbolic.init_multilevel_params(jax.random.key(0), config, jnp.float32)
    x = fp.encode(jax.random.normal(jax.random.key(1), (2, 8, 8, 3), jnp.float32))
    errors = jax.jit(lambda p, u: engine.reconstruction_error(layers, p, u))(params, x)
    assert max(float(jnp.max(e)) for e in errors) == 0.0
    y = jax.jit(lambda p, u: engine.apply(layers, p, u))(params, x)
    inv = engine.invert(layers, params, y)
    for a, b in zip(jax.tree.leaves(inv), jax.tree.leaves(x)):
        np.testing.assert_array_equal(a, b)


def test_exact_hyperbolic_model_gradients_reversible_equal_store():
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 3), jnp.float64)
    labels = jax.random.randint(jax.random.key(3), (2, 8, 8), 0, 3)
    grads = {}
    for mode in ("reversible", "store"):
        model = _small_hyperbolic(arithmetic="exact", backprop=mode)
        variables = model.init(jax.random.key(0), x)

        def loss(v, model=model):
            logits = model.apply(v, x)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1))

        grads[mode] = jax.jit(jax.grad(loss))(variables)
    flat_r, flat_s = (jax.tree.leaves(grads[m]) for m in ("reversible", "store"))
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in flat_s)
    for a, b in zip(flat_r, flat_s):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_exact_model_overflow_poisons_logits_and_is_reported():
    model = _small_hyperbolic(arithmetic="exact", frac_bits=30, h=1.0)
    x = 1.5 * jnp.ones((1, 8, 8, 3), jnp.float64)
    variables = model.init(jax.random.key(0), x)
    assert bool(jnp.all(jnp.isnan(model.apply(variables, x))))
    with pytest.raises(fp.FixedPointOverflowError, match="frac_bits"):
        model.check_overflow(variables, x)
    fine = _small_hyperbolic(arithmetic="exact")
    assert bool(jnp.all(jnp.isfinite(fine.apply(variables, x))))
    fine.check_overflow(variables, x)


def test_exact_model_refuses_damping_and_unknown_arithmetic():
    x = jnp.ones((1, 8, 8, 3), jnp.float64)
    with pytest.raises(ValueError, match="damping"):
        _small_hyperbolic(arithmetic="exact", damping=0.1).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="arithmetic"):
        _small_hyperbolic(arithmetic="integer").init(jax.random.key(0), x)


def test_exact_lean_hamiltonian_gradients_reversible_equal_store_and_overflow():
    x = jax.random.normal(jax.random.key(5), (2, 8, 8, 3), jnp.float64)
    kw = dict(widths=(4, 8), units=(3, 3), num_classes=3, dtype=jnp.float64, arithmetic="exact")
    grads = {}
    for mode in ("reversible", "store"):
        model = models.create("lean_hamiltonian", backprop=mode, **kw)
        variables = model.init(jax.random.key(0), x)

        def loss(params, model=model, variables=variables):
            logits = model.apply({**variables, "params": params}, x, train=False)
            return jnp.sum(jnp.sin(logits))

        grads[mode] = jax.jit(jax.grad(loss))(variables["params"])
    flat_r, flat_s = (jax.tree.leaves(grads[m]) for m in ("reversible", "store"))
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in flat_s)
    for a, b in zip(flat_r, flat_s):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    tiny_range = models.create("lean_hamiltonian", frac_bits=30, **kw)
    logits = tiny_range.apply(variables, 100 * x, train=False)
    assert bool(jnp.all(jnp.isnan(logits)))
    with pytest.raises(ValueError, match="arithmetic"):
        models.create("lean_hamiltonian", arithmetic="int")


@pytest.mark.slow
def test_exact_hyperbolic3d_sharded_equals_single_device():
    """3 SGD steps of exact hyperbolic3d: data-parallel and spatially sharded (8 host devices)
    give the single-device parameters (the fixed-point trajectory is per-example)."""
    script = Path(__file__).with_name("sharded_training_check.py")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env.pop("JAX_ENABLE_X64", None)
    out = subprocess.run(
        [sys.executable, str(script), "hyperbolic3d_exact:data", "hyperbolic3d_exact:spatial"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    exact = [r for r in results if r["model"] == "hyperbolic3d_exact"]
    assert {r["mode"] for r in exact} == {"data", "spatial"}
    for r in exact:
        assert r["max_rel_diff"] < 1e-5, r

"""Models with arithmetic="exact": hyperbolic2d/3d, the low-cost Hamiltonian, RevNet, Chang et al.'s
networks (and RevUp's refusal)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from revjax import arithmetic, engine, models
from revjax import fixed_point as fp
from revjax.families import hyperbolic


def _small_hyperbolic(**overrides):
    kw = dict(width=4, levels=1, units=2, num_classes=3, dtype=jnp.float64)
    kw.update(overrides)
    return models.create("hyperbolic2d", **kw)


def test_exact_hyperbolic_body_reconstructs_bit_exactly():
    config = hyperbolic.make_config(
        spatial_dims=2, in_channels=3, width=4, levels=1, units=2, ranks=None, h=0.5
    )
    layers = hyperbolic.multilevel_layers(config, arithmetic.exact_arithmetic())
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


# --------------------------------------------------------------------------------------------
# RevNet and Chang et al. networks in exact arithmetic (batch norm inside the residuals).


def _train_grads(model, variables, x, weights):
    """(gradient of the params, updated batch_stats) of a train-mode step, jitted."""

    def loss(params):
        out, updates = model.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.sum(weights * jnp.tanh(out)), updates["batch_stats"]

    (_, stats), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    return grads, stats


@pytest.mark.slow  # 9-14 min each on the shared 2-core machine at load ~30 (~1 min idle)
@pytest.mark.parametrize("name", ["revnet38", "hamiltonian74"])
def test_exact_zoo_model_with_batch_norm_is_bit_exact_and_matches_store(name):
    """Train mode, BN inside F and G, at initialisation: the body's reconstruction error is
    exactly 0.0, and reversible backprop gives store's gradients and running averages (the
    reconstruction normalises with the forward's batch statistics, updated once). The default
    suite checks the same on small configurations (below)."""
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3), jnp.float64)
    weights = jax.random.normal(jax.random.key(2), (2, 10), jnp.float64)
    model = models.create(name, arithmetic="exact", dtype=jnp.float64)
    variables = model.init(jax.random.key(0), x)
    assert float(model.reconstruction_error(variables, x, train=True)) == 0.0
    g_rev, stats_rev = _train_grads(model, variables, x, weights)
    g_store, stats_store = _train_grads(model.clone(backprop="store"), variables, x, weights)
    assert float(engine._relative_error(g_rev, g_store)) < 1e-6
    assert float(engine._relative_error(stats_rev, stats_store)) < 1e-12
    moved = jax.tree.map(
        lambda a, b: float(jnp.max(jnp.abs(a - b))), stats_rev, variables["batch_stats"]
    )
    assert min(jax.tree.leaves(moved)) > 0  # every running average was updated, once


TINY_CHANG = [
    ("hamiltonian", "bn", "stored", None),
    pytest.param("hamiltonian", "bias", "reversible", None, marks=pytest.mark.slow),
    ("midpoint", "bias", "stored", None),
    ("leapfrog", "bias", "reversible", "second_order"),
    pytest.param("leapfrog", "bias", "stored", "zero_velocity", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("family,block,transition,start", TINY_CHANG)
def test_exact_chang_families_reconstruct_bit_exactly_and_match_store(
    family, block, transition, start
):
    widths = {"stored": (4, 8), "reversible": (4, 16)}[transition]
    x = jax.random.normal(jax.random.key(3), (2, 8, 8, 3), jnp.float64)
    weights = jax.random.normal(jax.random.key(4), (2, 3), jnp.float64)
    model = models.create(
        f"{family}62" if family != "hamiltonian" else "hamiltonian74",
        units=(3, 3), widths=widths, block=block, transition=transition, start=start,
        h=0.5, num_classes=3, arithmetic="exact", dtype=jnp.float64,
    )  # fmt: skip
    variables = model.init(jax.random.key(0), x)
    assert float(model.reconstruction_error(variables, x, train=True)) == 0.0
    g_rev, _ = _train_grads(model, variables, x, weights)
    g_store, _ = _train_grads(model.clone(backprop="store"), variables, x, weights)
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g_store)) > 0
    assert float(engine._relative_error(g_rev, g_store)) < 1e-12


def test_exact_small_revnet_with_stored_bn_transition_matches_store():
    """A small RevNet (stored transition block with BN between two exact stages), train mode:
    reconstruction exactly 0.0, reversible == store gradients and running averages."""
    x = jax.random.normal(jax.random.key(8), (2, 8, 8, 3), jnp.float64)
    weights = jax.random.normal(jax.random.key(9), (2, 3), jnp.float64)
    model = models.create(
        "revnet38", units=(2, 2), widths=(8, 16), strides=(1, 2), num_classes=3,
        arithmetic="exact", dtype=jnp.float64,
    )  # fmt: skip
    variables = model.init(jax.random.key(0), x)
    assert float(model.reconstruction_error(variables, x, train=True)) == 0.0
    g_rev, stats_rev = _train_grads(model, variables, x, weights)
    g_store, stats_store = _train_grads(model.clone(backprop="store"), variables, x, weights)
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g_store)) > 0
    assert float(engine._relative_error(g_rev, g_store)) < 1e-12
    assert float(engine._relative_error(stats_rev, stats_store)) < 1e-12


def test_exact_revnet_reversible_transitions_and_overflow():
    """RevNet with space-to-depth transitions (every body layer exact): bit-exact; a too
    small fixed-point range makes the logits NaN, and bad arithmetic is refused."""
    x = jax.random.normal(jax.random.key(5), (2, 8, 8, 3), jnp.float64)
    kw = dict(units=(2, 2), widths=(8, 32), strides=(1, 2), transition="reversible",
              num_classes=3, arithmetic="exact", dtype=jnp.float64)  # fmt: skip
    model = models.create("revnet38", **kw)
    variables = model.init(jax.random.key(0), x)
    assert float(model.reconstruction_error(variables, x, train=True)) == 0.0
    logits = model.apply(variables, x, train=False)
    assert bool(jnp.all(jnp.isfinite(logits)))
    tiny_range = models.create("revnet38", **{**kw, "frac_bits": 30})
    assert bool(jnp.all(jnp.isnan(tiny_range.apply(variables, 100 * x, train=False))))
    with pytest.raises(ValueError, match="arithmetic"):
        models.create("revnet38", arithmetic="int")
    with pytest.raises(ValueError, match="arithmetic"):
        models.create("hamiltonian74", arithmetic="int")
    with pytest.raises(ValueError, match="frac_bits"):
        models.create("hamiltonian74", arithmetic="exact", frac_bits=31)


def test_exact_coupling_with_stats_round_trip_and_aux():
    """The exact coupling with batch statistics: bitwise inverse, stats aux from the forward
    only (ExactAux), overflow flag."""

    def residual(variables, u, rng=None):
        mean = jnp.mean(u, axis=0)
        return jnp.tanh((u - mean) * variables["w"]), {"mean": mean}

    exact = arithmetic.exact_arithmetic()
    step = exact.additive_coupling_with_stats(residual, residual, train=True)
    params = {"F": {"w": jnp.float64(0.7)}, "G": {"w": jnp.float64(-1.3)}}
    x = fp.encode(tuple(jax.random.normal(jax.random.key(k), (4, 5), jnp.float64) for k in (6, 7)))
    y, aux = step.forward(params, x)
    assert isinstance(aux, fp.ExactAux) and not bool(aux.overflow)
    np.testing.assert_array_equal(aux.extra["F"]["mean"], jnp.mean(fp.real(x[1], 20), axis=0))
    for a, b in zip(jax.tree.leaves(step.inverse(params, y)), jax.tree.leaves(x)):
        np.testing.assert_array_equal(a, b)
    eval_step = exact.additive_coupling_with_stats(residual, residual, train=False)
    y_eval, flag = eval_step.forward(params, x)
    assert flag.dtype == jnp.bool_
    for a, b in zip(jax.tree.leaves(y_eval), jax.tree.leaves(y)):
        np.testing.assert_array_equal(a, b)


def test_revup_refuses_exact_arithmetic_at_construction():
    with pytest.raises(ValueError, match="fixed-point iteration"):
        models.create("revup20", arithmetic="exact")
    assert models.create("revup20").arithmetic == "float"

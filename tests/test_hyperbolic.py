"""Fully reversible multilevel hyperbolic networks
(Peters, Haber, Lensink 2019, arXiv:1912.12137): layer, body, models, memory."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from revjax import engine, models
from revjax.conv import conv, conv_transpose
from revjax.families import hyperbolic
from revjax.memory import model_step_memory

TINY = {
    2: dict(shape=(2, 8, 8, 3), width=4),
    3: dict(shape=(1, 4, 8, 8, 3), width=3),
}


def tiny_config(spatial_dims, **overrides):
    kwargs = dict(
        spatial_dims=spatial_dims,
        in_channels=3,
        width=TINY.get(spatial_dims, TINY[2])["width"],
        levels=2,
        units=2,
        ranks=(3, 5, 6),
        h=0.5,
    )
    kwargs.update(overrides)
    return hyperbolic.make_config(**kwargs)


def tiny_model(spatial_dims, **overrides):
    kwargs = dict(
        num_classes=3,
        width=TINY[spatial_dims]["width"],
        levels=2,
        units=2,
        ranks=(3, 5, 6),
        h=0.5,
        dtype=jnp.float64,
    )
    kwargs.update(overrides)
    return models.create(f"hyperbolic{spatial_dims}d", **kwargs)


def relative(a, b):
    return float(engine._relative_error(a, b))


# --------------------------------------------------------------------------------------------
# The symmetric block-low-rank layer.


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_low_rank_conv_adjoint(spatial_dims):
    """⟨K x, y⟩ = ⟨x, K^T y⟩ for a C -> r kernel (k^d, C, r), r < C, in 2-D and 3-D."""
    channels, rank = 5, 2
    spatial = (4, 6, 5)[-spatial_dims:]
    kx, ky, kk = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, *spatial, channels))
    y = jax.random.normal(ky, (2, *spatial, rank))
    kernel = jax.random.normal(kk, (3,) * spatial_dims + (channels, rank))
    lhs = jnp.vdot(conv(x, kernel), y)
    rhs = jnp.vdot(x, conv_transpose(y, kernel))
    assert abs(float(lhs - rhs)) <= 1e-12 * abs(float(lhs))


def test_tv_norm_formula():
    """N(x)_p = x_p / sqrt(Σ_c x_{p,c}² + 1e-5), so every pixel's channel vector has norm < 1."""
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 3))
    n = hyperbolic.tv_norm(x)
    expected = np.asarray(x) / np.sqrt(np.sum(np.asarray(x) ** 2, -1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(n, expected, rtol=1e-13)
    assert float(jnp.max(jnp.linalg.norm(n, axis=-1))) < 1.0


def test_unnormalised_force_has_symmetric_nsd_jacobian():
    """Without N, J_f = −K^T D K: ⟨J v, w⟩ = ⟨v, J w⟩ and ⟨J v, v⟩ ≤ 0.

    J^T is applied by reverse mode (conv carries a custom VJP); J^T symmetric ⇔ J symmetric.
    """
    force = hyperbolic.symmetric_force("none")
    keys = jax.random.split(jax.random.key(2), 4)
    params = {"kernel": jax.random.normal(keys[0], (3, 3, 4, 2)), "bias": jnp.full((2,), 0.1)}
    y, v, w = (jax.random.normal(k, (1, 6, 6, 4)) for k in keys[1:])

    _, pullback = jax.vjp(lambda u: force(params, u), y)
    jv, jw = pullback(v)[0], pullback(w)[0]
    assert abs(float(jnp.vdot(jv, w) - jnp.vdot(v, jw))) < 1e-10 * float(jnp.abs(jnp.vdot(jv, w)))
    assert float(jnp.vdot(jv, v)) <= 0.0


def _layer_asymmetry(norm):
    """max over random (v, w) of |⟨J v, w⟩ − ⟨v, J w⟩| / |⟨J v, w⟩| for the layer's J."""
    keys = jax.random.split(jax.random.key(5), 4)
    config = models.create("hyperbolic2d", dtype=jnp.float64, norm=norm).config(3)
    params = hyperbolic.init_unit_params(keys[0], config, 0, jnp.float64)
    params = jax.tree.map(lambda p: p[0], params)  # the first layer of unit 0
    params["bias"] = jnp.full_like(params["bias"], 0.1)
    force = hyperbolic.symmetric_force(config.norm)
    y, v, w = (jax.random.normal(k, (1, 8, 8, config.width), jnp.float64) for k in keys[1:])
    _, pullback = jax.vjp(lambda u: force(params, u), y)
    jv, jw = pullback(v)[0], pullback(w)[0]
    return abs(float(jnp.vdot(jv, w) - jnp.vdot(v, jw))) / abs(float(jnp.vdot(jv, w)))


def test_default_layer_of_registered_model_is_symmetric():
    """Paper 000's point: the default layer −K^T σ(K·) has a symmetric Jacobian (float64).

    Peters, Haber, Lensink (2019), arXiv:1912.12137, Section 3 ("symmetry by construction").
    HyperNet's tv_norm (selectable, `norm="tv_norm"`) breaks the symmetry, which this test
    shows is detectable.
    """
    assert models.create("hyperbolic2d").norm == "none"
    assert models.create("hyperbolic3d").norm == "none"
    assert _layer_asymmetry("none") < 1e-12
    assert _layer_asymmetry("tv_norm") > 1e-3


# --------------------------------------------------------------------------------------------
# The multilevel body: inverse, gradients, float32 drift.


@pytest.mark.parametrize("spatial_dims", [3])  # 2-D: test_model_body_inverts_with_model_params
def test_whole_network_inverse_float64(spatial_dims):
    """engine.invert(body, apply(body, x)) == x to 1e-12 (pad, leapfrog, Haar down and up)."""
    config = tiny_config(spatial_dims)
    layers = hyperbolic.multilevel_layers(config)
    params = hyperbolic.init_multilevel_params(jax.random.key(3), config, jnp.float64)
    x = jax.random.normal(jax.random.key(4), TINY[spatial_dims]["shape"], jnp.float64)
    y = jax.jit(lambda p, u: engine.apply(layers, p, u))(params, x)
    assert y[1].shape == x.shape[:-1] + (config.width,)
    x_hat = jax.jit(lambda p, v: engine.invert(layers, p, v))(params, y)
    assert relative(x_hat, x) < 1e-12


def test_body_layer_sequence():
    """2 levels: pad, duplicate, 5 units between haar, haar, haar⁻¹, haar⁻¹ (or 4 Transitions)."""
    layers = hyperbolic.multilevel_layers(tiny_config(2))
    names = [layer.name for layer in layers]
    assert names == [
        "pad_channels", "duplicate_state", "unit0_level0", "haar", "unit1_level1", "haar",
        "unit2_level2", "haar_inverse", "unit3_level1", "haar_inverse", "unit4_level0",
    ]  # fmt: skip
    stored = hyperbolic.multilevel_layers(tiny_config(2, transition="stored"))
    assert sum(isinstance(layer, engine.Transition) for layer in stored) == 4
    assert not any(isinstance(layer, engine.Transition) for layer in layers)


@pytest.mark.parametrize(
    "spatial_dims,transition", [(2, "reversible"), (2, "stored"), (3, "reversible")]
)
def test_model_gradients_reversible_equal_store(spatial_dims, transition):
    """∇ of a pixelwise loss through body + head: reversible == stored activations (rel 1e-9)."""
    model = tiny_model(spatial_dims, transition=transition)
    x = jax.random.normal(jax.random.key(5), TINY[spatial_dims]["shape"], jnp.float64)
    variables = model.init(jax.random.key(6), x)
    target = jax.random.normal(jax.random.key(7), x.shape[:-1] + (3,), jnp.float64)

    def grads(backprop):
        m = model.clone(backprop=backprop)

        def loss(v, u):
            return jnp.sum(jnp.sin(m.apply(v, u)) * target)

        return jax.jit(jax.grad(loss, argnums=(0, 1)))(variables, x)

    reversible, stored = grads("reversible"), grads("store")
    for a, b in zip(jax.tree.leaves(reversible), jax.tree.leaves(stored)):
        assert relative(a, b) < 1e-9
    # every unit and the input receive a nonzero gradient (the test can fail)
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(reversible))


@pytest.mark.parametrize("spatial_dims", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_float32_reconstruction_error_bounded(spatial_dims, record_property):
    """float32 down/up pass: worst relative reconstruction error of any step input < 1e-4."""
    config = tiny_config(spatial_dims)
    layers = hyperbolic.multilevel_layers(config)
    params = hyperbolic.init_multilevel_params(jax.random.key(8), config, jnp.float32)
    x = jax.random.normal(jax.random.key(9), TINY[spatial_dims]["shape"], jnp.float32)
    errors = jax.jit(lambda p, u: engine.reconstruction_error(layers, p, u))(params, x)
    worst = max(float(jnp.max(e)) for e in errors)
    round_trip = float(
        jax.jit(lambda p, u: engine._relative_error(
            engine.invert(layers, p, engine.apply(layers, p, u)), u))(params, x)
    )  # fmt: skip
    record_property("float32_reconstruction_error", worst)
    record_property("float32_round_trip_error", round_trip)
    print(f"{spatial_dims}-D float32: worst step error {worst:.2e}, round trip {round_trip:.2e}")
    assert worst < 1e-4 and round_trip < 1e-4
    assert worst > 0  # float32 drift is measured, not trivially zero


def test_model_body_inverts_with_model_params():
    """The model's own parameters drive an invertible body: invert(body(x)) == x (float64)."""
    model = tiny_model(2)
    x = jax.random.normal(jax.random.key(10), TINY[2]["shape"], jnp.float64)
    variables = model.init(jax.random.key(11), x)
    layers = hyperbolic.multilevel_layers(model.config(3))
    params = model.body_params(variables)
    y = jax.jit(lambda p, u: engine.apply(layers, p, u))(params, x)
    assert relative(jax.jit(lambda p, v: engine.invert(layers, p, v))(params, y), x) < 1e-12
    logits = jax.jit(model.apply)(variables, x)
    head = variables["params"]["head"]
    np.testing.assert_allclose(logits, y[1] @ head["kernel"] + head["bias"], rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Parameter counts.


def test_parameter_count_table_matches_formula():
    """Per level: k^d·C_l·r_l (low rank) vs k^d·C_l² (full), C_l = width·2^{d l}."""
    config = hyperbolic.make_config(
        spatial_dims=3, in_channels=3, width=3, levels=3, units=(1, 2, 3, 4),
        ranks=3, h=0.1,
    )  # fmt: skip
    rows = hyperbolic.parameter_count_table(config)
    for level, row in enumerate(rows):
        c = 3 * 8**level
        units = 1 if level == 3 else 2
        assert row["channels"] == c
        assert row["low_rank_per_layer"] == 27 * c * 3
        assert row["full_per_layer"] == 27 * c * c
        assert row["low_rank_total"] == units * (level + 1) * 27 * c * 3
        assert row["compression"] == c / 3
    # the paper's illustration: C = 3·8³ = 1536, r = 64
    assert hyperbolic.layer_param_count(3, 1536, 64) == 2_654_208
    assert hyperbolic.layer_param_count(3, 1536, None) == 63_700_992


def test_model_parameter_count_equals_table():
    """count_params(model) = Σ low-rank kernels + biases (n_l·r_l) + head (width·K + K)."""
    model = tiny_model(2)
    x = jnp.zeros(TINY[2]["shape"], jnp.float64)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    config = model.config(3)
    rows = hyperbolic.parameter_count_table(config)
    biases = sum(row["layers"] * row["rank"] for row in rows)
    head = config.width * 3 + 3
    assert models.count_params(variables) == sum(r["low_rank_total"] for r in rows) + biases + head


# --------------------------------------------------------------------------------------------
# Memory: the fully reversible body is flat in depth.


def test_reversible_memory_flat_in_depth():
    """Temp bytes of a training step: reversible constant in depth, store grows with depth."""
    shape = (1, 16, 16, 3)
    temps, param_bytes = {}, {}
    for backprop in ("reversible", "store"):
        for depth in (2, 6):
            model = tiny_model(2, units=depth, backprop=backprop, dtype=jnp.float32)
            temps[backprop, depth] = model_step_memory(model, shape, optax.adam(1e-3))["temp"]
            shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape, jnp.float32))
            param_bytes[depth] = sum(4 * a.size for a in jax.tree.leaves(shapes))
    # The update's temporaries include one parameter-sized gradient: activations are flat.
    gradient_growth = param_bytes[6] - param_bytes[2]
    assert temps["reversible", 6] - temps["reversible", 2] <= gradient_growth + 1024
    assert temps["store", 6] > 1.5 * temps["store", 2]


# --------------------------------------------------------------------------------------------
# Bad configuration and inputs: clear errors before tracing.


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(ranks=(5, 5, 5)), "rank 5 at level 0 is out of range"),
        (dict(ranks=(3, 0, 3)), "rank 0 at level 1"),
        (dict(ranks=(3, 3)), "one entry per level"),
        (dict(h=0.0), "step size h"),
        (dict(h=-1.0), "step size h"),
        (dict(width=2), "width must be >="),
        (dict(transition="pooled"), "unknown transition"),
        (dict(norm="batch"), "unknown norm"),
        (dict(units=0), "units must be >= 1"),
        (dict(kernel_size=2), "kernel_size must be odd"),
        (dict(spatial_dims=4), "spatial_dims must be 2 or 3"),
    ],
)
def test_bad_config(overrides, match):
    """Each invalid field raises a ValueError that names it."""
    with pytest.raises(ValueError, match=match):
        tiny_config(overrides.pop("spatial_dims", 2), **overrides)


@pytest.mark.parametrize(
    "spatial_dims,shape,match",
    [
        (2, (1, 8, 6, 3), "axis W has size 6"),
        (3, (1, 6, 8, 8, 3), "axis D has size 6"),
        (2, (1, 4, 8, 8, 3), "expects 4-D NHWC"),
        (3, (1, 8, 8, 3), "expects 5-D NDHWC"),
    ],
)
def test_bad_input_shape(spatial_dims, shape, match):
    """Indivisible sizes name the axis and level; 4-D vs 5-D mismatches name the layout."""
    model = tiny_model(spatial_dims)
    with pytest.raises(ValueError, match=match):
        model.init(jax.random.key(0), jnp.zeros(shape, jnp.float64))


def test_bad_model_fields():
    """Model fields are validated too: backprop mode, num_classes, rank."""
    x = jnp.zeros(TINY[2]["shape"], jnp.float64)
    for overrides, match in [
        (dict(backprop="magic"), "unknown backprop"),
        (dict(num_classes=0), "num_classes"),
        (dict(ranks=17), "out of range"),
    ]:
        with pytest.raises(ValueError, match=match):
            tiny_model(2, **overrides).init(jax.random.key(0), x)

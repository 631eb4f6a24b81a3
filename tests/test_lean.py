"""LeanResNet low-cost steps (Ephrath, Eliasof, Ruthotto, Haber, Treister 2019, arXiv:1805.07821):
parameter counts, identities, gradients, bad input."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax
from jax.test_util import check_grads

from revjax import engine, fft, models
from revjax.families import lean
from revjax.models import lean as lean_models
from revjax.models.heads import BN_EPSILON

C = 4
F64 = jnp.float64


def image(key=0, shape=(2, 8, 8, C), dtype=F64):
    return jax.random.normal(jax.random.key(key), shape, dtype)


def step_module(name, **kwargs):
    return lean_models.STEP_MODULES[name](dtype=F64, **kwargs)


def init_step(name, x, **kwargs):
    module = step_module(name, **kwargs)
    variables = module.init(jax.random.key(1), x)
    # Non-trivial BN statistics and a non-zero bias so that every path is exercised.
    variables = jax.tree_util.tree_map_with_path(
        lambda path, v: v + 0.1 if "bias" in jax.tree_util.keystr(path) else v, variables
    )
    return module, variables


@pytest.mark.parametrize("name", lean.STEP_TYPES)
def test_step_shape_and_param_count_formula(name):
    """Each step maps (N,H,W,c) -> (N,H,W,c) and has exactly step_param_count(step, c) params."""
    x = image()
    module, variables = init_step(name, x)
    y, _ = module.apply(variables, x, train=True, mutable=["batch_stats"])
    assert y.shape == x.shape and y.dtype == F64
    assert models.count_params(variables) == lean.step_param_count(name, C)
    m = 5
    _, variables5 = init_step(name, image(shape=(1, 8, 8, 3)), kernel_size=m)
    assert models.count_params(variables5) == lean.step_param_count(name, 3, m)


@pytest.mark.parametrize("name", lean.STEP_TYPES)
def test_step_gradients_match_finite_differences(name):
    """Reverse-mode gradients w.r.t. input and parameters match finite differences (x64)."""
    x = image(shape=(1, 6, 6, 3))
    module, variables = init_step(name, x)
    params, stats = variables["params"], variables["batch_stats"]

    def f(p, u):
        return module.apply({"params": p, "batch_stats": stats}, u, train=False)

    check_grads(f, (params, x), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kernel_shape", [(1, 1), (2, 2), (3, 3), (4, 4), (5, 3)])
def test_depthwise_zero_pad_equals_grouped_lax_conv(kernel_shape):
    """The sum over taps is lax's grouped "SAME" convolution, even kernels' padding included,
    and so are its gradients (float64)."""
    x = image(shape=(2, 7, 6, C))
    dw = jax.random.normal(jax.random.key(2), (*kernel_shape, C), F64)

    def grouped(x, dw):
        return lax.conv_general_dilated(
            x, dw[:, :, None, :], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=C,
        )  # fmt: skip

    np.testing.assert_allclose(
        lean.depthwise_zero_pad(x, dw), grouped(x, dw), rtol=1e-12, atol=1e-12
    )
    probe = jax.random.normal(jax.random.key(3), x.shape, F64)

    def grads(f):
        return jax.grad(lambda x, dw: jnp.sum(probe * f(x, dw)), (0, 1))(x, dw)

    for got, expected in zip(grads(lean.depthwise_zero_pad), grads(grouped), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_linear_mix_equals_masked_full_conv():
    """K_lm u = K_dw u + M_off u equals the full conv whose off-centre taps are diagonal."""
    x = image(shape=(2, 6, 6, C))
    dw = jax.random.normal(jax.random.key(2), (3, 3, C), F64)
    off = jax.random.normal(jax.random.key(3), (C, C - 1), F64)
    mix = lean.off_diagonal(off)
    assert np.all(np.diag(np.asarray(mix)) == 0)
    assert np.count_nonzero(np.asarray(mix)) == C * (C - 1)
    full = jnp.einsum("abc,cd->abcd", dw, jnp.eye(C, dtype=F64))
    full = full.at[1, 1].add(mix)
    expected = lax.conv_general_dilated(
        x, full, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    got = lean.depthwise_zero_pad(x, dw) + lean.channel_mix(x, mix)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_implicit_rd_step_solves_the_linear_system():
    """z = ImplicitRD(y) satisfies (I + h K_dwᵀK_dw) z = y + h σ(N(M y)), and ‖z‖ ≤ ‖rhs‖."""
    x = image()
    h = 0.7
    module, variables = init_step("implicit_rd", x, h=h)
    z = module.apply(variables, x)
    explicit = step_module("explicit_rd", h=h)
    # Explicit step at y = z gives z + h(σ(N(M z)) − KᵀK z); rebuild the reaction at x instead.
    p = variables["params"]
    reaction = (
        explicit.apply(variables, x)
        - x
        + h * fft.depthwise_conv_adjoint(fft.depthwise_conv(x, p["dw_kernel"]), p["dw_kernel"])
    )
    rhs = x + reaction
    lhs = z + h * fft.depthwise_conv_adjoint(fft.depthwise_conv(z, p["dw_kernel"]), p["dw_kernel"])
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10, atol=1e-10)
    assert float(jnp.linalg.norm(z)) <= float(jnp.linalg.norm(rhs))


@pytest.mark.parametrize("kind", lean.LOW_COST_OPERATORS)
def test_low_cost_operator_adjoint(kind):
    """<K u, v> = <u, Kᵀ v> for K = M∘K_dw and K = K_circ (odd spatial size)."""
    op, adjoint = lean.low_cost_operator(kind)
    params = lean.init_low_cost_force(jax.random.key(4), kind, C, dtype=F64)
    u, v = image(5, (2, 7, 6, C)), image(6, (2, 7, 6, C))
    lhs = jnp.vdot(op(params, u), v)
    rhs = jnp.vdot(u, adjoint(params, v))
    assert abs(float(lhs - rhs)) < 1e-12 * float(jnp.linalg.norm(u) * jnp.linalg.norm(v))


def test_circulant_force_stores_unscaled_stencils_and_applies_the_scaled_ones():
    """The circulant Hamiltonian force stores its ``K_circ`` weights at the depthwise std ``1/m``
    and applies ``circulant_stencils(w) = w / √c``, as the circular RD step does: stored at
    ``1/(m√c)``, Adam's per-weight steps would move the applied spectrum √c times faster."""
    c = 192
    params = lean.init_low_cost_force(jax.random.key(4), "circulant", c, dtype=F64)
    std = float(jnp.std(params["circ"]))
    assert 0.7 / 3 < std < 1.0 / 3, std  # truncated normal at 1/m = 1/3 (std x 0.88)
    op, _ = lean.low_cost_operator("circulant")
    u = image(5, (1, 5, 5, c))
    expected = fft.circulant_conv(u, params["circ"] / np.sqrt(c))
    np.testing.assert_allclose(op(params, u), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", lean.LOW_COST_OPERATORS)
def test_low_cost_hamiltonian_inverse_round_trip(kind):
    """invert(apply(x)) == x (1e-12) for a 3-step Scan of low-cost Hamiltonian steps."""
    step = lean.low_cost_hamiltonian_step(kind, h=0.5)
    keys = jax.random.split(jax.random.key(7), 6)
    params = {
        "F": jax.vmap(lambda k: lean.init_low_cost_force(k, kind, C, dtype=F64))(keys[:3]),
        "G": jax.vmap(lambda k: lean.init_low_cost_force(k, kind, C, dtype=F64))(keys[3:]),
    }
    x = (image(8), image(9))
    layers, stacked = [engine.Scan(step)], [params]
    y = engine.apply(layers, stacked, x)
    x_hat = engine.invert(layers, stacked, y)
    assert float(engine._relative_error(x_hat, x)) < 1e-12
    assert float(engine._relative_error(y, x)) > 1e-3  # the step is not the identity


@pytest.mark.parametrize("name", ["lean_hamiltonian", "lean_hamiltonian_circulant"])
def test_reversible_gradients_equal_stored(name):
    """jax.grad with backprop="reversible" equals backprop="store" (x64, rel. 1e-9)."""
    x = image(10, (2, 8, 8, 3))
    config = {"widths": (4, 8), "units": (2, 2), "dtype": F64}
    reversible = models.create(name, backprop="reversible", **config)
    stored = models.create(name, backprop="store", **config)
    variables = reversible.init(jax.random.key(11), x)
    labels = jnp.array([1, 3])

    def loss(model):
        def fn(params, u):
            logits = model.apply({**variables, "params": params}, u)
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(2), labels])

        return jax.grad(fn, argnums=(0, 1))(variables["params"], x)

    g_rev, g_store = loss(reversible), loss(stored)
    for a, b in zip(jax.tree.leaves(g_rev), jax.tree.leaves(g_store), strict=True):
        scale = max(float(jnp.max(jnp.abs(b))), 1e-300)
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-9 * scale


def test_registry_names_and_num_classes_override():
    """All 18 reference networks + 2 reversible ones are registered; num_classes sets the FC."""
    expected = {f"lean_{n}_{s}" for n in "abc" for s in lean.STEP_TYPES}
    assert expected | {"lean_hamiltonian", "lean_hamiltonian_circulant"} <= set(models.names())
    model = models.create("lean_b_mobilenet", num_classes=100)
    shapes = jax.eval_shape(
        lambda k: model.init(k, jnp.zeros((1, 96, 96, 3)), train=False), jax.random.key(0)
    )
    assert shapes["params"]["Dense_0"]["kernel"].shape == (384, 100)


def test_network_counts_closed_form():
    """Weights of net A (no BN) = stem + Σ_blocks (4 steps + connecting K_dw) + FC, any step."""
    for step in lean.STEP_TYPES:
        params = lean_models._abstract_params(models.create(f"lean_a_{step}"), 32)
        widths = (32, 64, 128)
        expected = 5 * 5 * 3 * 32 + 256 * 10 + 10
        expected += sum(4 * lean.step_param_count(step, c, with_bn=False) + 9 * c for c in widths)
        assert lean_models.count_weights(params) == expected, step
        bn = 2 * 32 + sum(
            4 * (lean.step_param_count(step, c) - lean.step_param_count(step, c, with_bn=False))
            + 4 * c
            for c in widths
        )
        assert lean_models.count_weights(params, include_batch_norm=True) == expected + bn, step


def test_parameter_table_against_paper_table2():
    """Table 2 counts are reproduced (rounded or truncated) except the documented entries.

    Documented: LinearMix (we drop the duplicated centre tap; keeping it matches the paper)
    and ResNet B on CIFAR-100 (paper prints 3.4M < its own CIFAR-10 3.5M).
    """
    rows = lean_models.parameter_table()
    assert len(rows) == 24
    mismatches = {(r["name"], r["num_classes"]) for r in rows if not r["matches"]}
    linear_mix = {(f"lean_{n}_linear_mix", k) for n, k in [("a", 10), ("b", 10), ("b", 100)]}
    assert mismatches == linear_mix | {("lean_c_linear_mix", 100), ("lean_b_resnet", 100)}
    for r in rows:
        if "linear_mix" in r["name"]:
            assert r["note"].endswith("(matches)")


# --------------------------------------------------------------------------- bad input


def test_kernel_larger_than_image_raises():
    """A 9x9 stencil on an 8x8 image is rejected by every step (from revjax.fft for RD)."""
    x = image()
    for name in lean.STEP_TYPES:
        with pytest.raises(ValueError, match="larger than the image"):
            step_module(name, kernel_size=9).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="larger than the image"):
        fft.depthwise_conv(x, jnp.ones((9, 9, C), F64))


def test_kernel_channel_mismatch_raises():
    """Parameters for c channels applied to c' ≠ c channels raise (flax shape check / fft)."""
    module, variables = init_step("explicit_rd", image())
    with pytest.raises(flax.errors.ScopeParamShapeError):
        module.apply(variables, image(shape=(2, 8, 8, C + 1)))
    force = lean.low_cost_force("dw_mix", 1.0)
    params = lean.init_low_cost_force(jax.random.key(0), "dw_mix", C + 1, dtype=F64)
    params["mix"] = jnp.zeros((C, C), F64)
    with pytest.raises(ValueError, match="channels"):
        force(params, image())


def test_negative_step_size_raises():
    """h < 0 is rejected by the RD steps, the networks and the reversible force."""
    for name in ("explicit_rd", "implicit_rd", "circular_rd"):
        with pytest.raises(ValueError, match="h"):
            step_module(name, h=-0.1).init(jax.random.key(0), image())
    with pytest.raises(ValueError, match="h"):
        models.create("lean_a_implicit_rd", h=-1.0)
    with pytest.raises(ValueError, match="h"):
        lean.low_cost_force("circulant", -1.0)


def test_dtype_mismatch_raises():
    """float32 parameters with a float64 input raise instead of promoting silently."""
    for name in lean.STEP_TYPES:
        with pytest.raises(ValueError, match="dtype mismatch"):
            lean_models.STEP_MODULES[name](dtype=jnp.float32).init(jax.random.key(0), image())
    params = lean.init_low_cost_force(jax.random.key(0), "circulant", C, dtype=jnp.float32)
    with pytest.raises(ValueError, match="dtype mismatch"):
        lean.low_cost_force("circulant", 1.0)(params, image())


def test_bad_network_config_raises():
    """num_classes < 1, unknown step/operator and odd images are clear ValueErrors."""
    with pytest.raises(ValueError, match="num_classes"):
        models.create("lean_a_explicit_rd", num_classes=0)
    with pytest.raises(ValueError, match="num_classes"):
        models.create("lean_hamiltonian", num_classes=0)
    with pytest.raises(ValueError, match="operator"):
        models.create("lean_hamiltonian", operator="full")
    with pytest.raises(ValueError, match="step type"):
        models.create("lean_a_resnet", step="dense")
    with pytest.raises(ValueError, match="odd"):
        lean_models.ConnectingLayer(dtype=F64).init(jax.random.key(0), image(shape=(1, 7, 8, C)))


@pytest.mark.slow
@pytest.mark.parametrize("step", lean.STEP_TYPES)
def test_reference_network_trains_one_step(step):
    """A shrunken net (1 block, c₀=4) runs in train mode; the loss gradient is finite."""
    model = models.create(f"lean_a_{step}", width=4, units=(4,), dtype=F64)
    x = image(12, (2, 8, 8, 3))
    variables = model.init(jax.random.key(0), x)

    def loss(params):
        logits, _ = model.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.sum(jax.nn.log_softmax(logits)[:, 0])

    grads = jax.grad(loss)(variables["params"])
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def _diffusion_lambda_max(step_params, size: int) -> float:
    """``λ_max(KᵀK)`` of one RD step's diffusion operator on ``size x size`` images."""
    if "circ_kernel" in step_params:
        stencils = lean.circulant_stencils(step_params["circ_kernel"])
        spectrum = fft.circulant_spectrum(stencils, (size, size))
    else:
        spectrum = fft.depthwise_spectrum(step_params["dw_kernel"], (size, size))
    return float(jnp.max(jnp.abs(spectrum) ** 2))


@pytest.mark.parametrize("step", ("explicit_rd", "circular_rd"))
@pytest.mark.parametrize("channels", (48, 192))
def test_explicit_rd_steps_are_stable_at_init(step, channels):
    """An explicit RD step at the widths of LeanResNet B (48, 96, 192), default ``h`` and
    initialisation satisfies ``h λ_max(KᵀK) ≤ 2`` (the diffusion stability bound; with the
    circulant stencils at std 1/m, ``h λ_max`` was 34 to 159 in B, so high-frequency modes grew
    33x to 158x per step)."""
    module = lean_models.STEP_MODULES[step](dtype=jnp.float32)
    x = jnp.zeros((1, 8, 8, channels), jnp.float32)
    init = jax.jit(module.init)
    for seed in range(2):
        params = init(jax.random.key(seed), x)["params"]
        h_lambda = module.h * _diffusion_lambda_max(params, 8)
        assert h_lambda <= 2.0, (step, channels, seed, h_lambda)


def test_circular_rd_applies_the_scaled_stencils():
    """CircularRDStep is ``y + h(σ(N(M y)) − K_circᵀK_circ y)`` with ``K_circ`` built from
    ``circulant_stencils(circ_kernel) = circ_kernel / √c``, the stencils the stability tests
    inspect."""
    x = image(13)
    module, variables = init_step("circular_rd", x)
    p = variables["params"]
    stencils = lean.circulant_stencils(p["circ_kernel"])
    np.testing.assert_allclose(stencils, p["circ_kernel"] / np.sqrt(C), rtol=1e-15)
    bn = variables["batch_stats"]["bn"]
    pre = lean.channel_mix(x, p["mix"])
    reaction = jax.nn.relu(
        (pre - bn["mean"]) / jnp.sqrt(bn["var"] + BN_EPSILON) * p["bn"]["scale"] + p["bn"]["bias"]
    )
    diffusion = fft.circulant_conv_adjoint(fft.circulant_conv(x, stencils), stencils)
    expected = x + module.h * (reaction - diffusion)
    np.testing.assert_allclose(module.apply(variables, x), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("channels", (48, 192))
def test_circular_rd_stays_stable_after_one_adam_step(channels):
    """One Adam step at the paper's learning rate 1e-2 (Ephrath et al. 2019, Sec. 4) along the
    direction that grows ``K_circ``'s constant mode fastest (every stored weight up by the
    learning rate) keeps ``h λ_max(K_circᵀK_circ) ≤ 2``.

    With the stencils stored at std ``1/(m√c)`` and applied unscaled, that step raised the mode's
    root ``|F₃(K_circ e₁)|`` by ``lr c m²`` (4.3 / 17 at c = 48 / 192): ``h λ_max`` = 3.2 / 31
    after the step, and in training LeanResNet B's circular steps reached ``h λ_max`` = 26 to 266
    after 30 steps."""
    module = lean_models.STEP_MODULES["circular_rd"](dtype=jnp.float32)
    x = jnp.zeros((1, 8, 8, channels), jnp.float32)
    params = jax.jit(module.init)(jax.random.key(0), x)["params"]
    optimizer = optax.adam(1e-2)
    descent = jax.tree.map(jnp.ones_like, params)  # gradient -1: Adam adds +lr to every weight
    updates, _ = optimizer.update(jax.tree.map(jnp.negative, descent), optimizer.init(params))
    stepped = optax.apply_updates(params, updates)
    h_lambda = module.h * _diffusion_lambda_max(stepped, 8)
    assert h_lambda <= 2.0, (channels, h_lambda)

"""RevUp: spectral normalisation, fixed-point inverse, reversible gradients, batch independence."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from revjax import models, spectral_norm
from revjax.conv import conv
from revjax.families import revup

C = 0.9


def operator_matrix(kernel, spatial):
    """Dense matrix of x -> conv(x, kernel) on one example of shape (*spatial, C_in)."""
    kernel = spectral_norm.as_conv_kernel(kernel)
    shape = (1, *spatial, kernel.shape[2])
    jac = jax.jacobian(lambda u: conv(u, kernel))(jnp.zeros(shape, kernel.dtype))
    return np.asarray(jac).reshape(-1, int(np.prod(shape)))


def true_norm(kernel, spatial):
    return float(np.linalg.norm(operator_matrix(kernel, spatial), 2))


def random_branch(key, channels=2, hidden=3, spatial=(5, 5), scale_raw=3.0):
    """Fixup branch with non-zero random W1, W2 (norms > c) normalised by 200 power iterations."""
    k1, k2, k3, k4, k5, k6 = jax.random.split(key, 6)
    raw = {
        "w1": jax.random.normal(k1, (3, 3, channels, hidden), jnp.float64),
        "w2": jax.random.normal(k2, (3, 3, hidden, channels), jnp.float64),
        "scale_raw": jnp.asarray(scale_raw),
        "b1a": jnp.asarray(0.1),
        "b1b": jnp.asarray(-0.2),
        "b2a": jnp.asarray(0.3),
        "b2b": jnp.asarray(0.05),
    }
    stats = {
        "v1": spectral_norm.init_power_vector(k3, (*spatial, channels), jnp.float64),
        "v2": spectral_norm.init_power_vector(k4, (*spatial, hidden), jnp.float64),
        "u1": spectral_norm.init_power_vector(k5, (*spatial, hidden), jnp.float64),
        "u2": spectral_norm.init_power_vector(k6, (*spatial, channels), jnp.float64),
    }
    params, _ = revup.normalise_branch(raw, stats, C, 200)
    return params


def lipschitz_bound(params, spatial):
    """|s|·‖W1‖₂·‖W2‖₂ with exact operator norms (dense matrices): an upper bound of Lip(g)."""
    return (
        abs(float(params["scale"]))
        * true_norm(params["w1"], spatial)
        * true_norm(params["w2"], spatial)
    )


def jacobian_norm(g, params, x):
    """Largest singular value of J_g(x) (frozen ReLU masks), from the dense Jacobian."""
    jac = jax.jacobian(lambda u: g(params, u))(x)
    return float(np.linalg.norm(np.asarray(jac).reshape(x.size, x.size), 2))


def tiny_model(**overrides):
    config = dict(
        units=(2, 2),
        widths=(2, 4),
        num_classes=3,
        dtype=jnp.float64,
        n_power_iterations=100,
    )
    config.update(overrides)
    return models.create("revup20", **config)


def jit_apply(model):
    """model.apply under jit (train, mutable and method static)."""
    return jax.jit(model.apply, static_argnames=("train", "mutable", "method"))


def perturbed_variables(model, x, key, scale=0.5):
    """Variables with random (non-Fixup, g ≠ 0) parameters and converged power iterations."""
    variables = model.init(jax.random.key(0), x)
    leaves, treedef = jax.tree.flatten(variables["params"])
    keys = jax.random.split(key, len(leaves))
    params = treedef.unflatten(
        [a + scale * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]
    )
    _, stats = jit_apply(model)(
        {**variables, "params": params}, x, train=True, mutable=("spectral_stats",)
    )
    return {"params": params, **stats}


# --------------------------------------------------------------------------------------------
# Spectral normalisation.


def test_power_iteration_finds_the_conv_operator_norm():
    """σ̂ = ‖K v‖ → σ_max(K) (dense Jacobian); ‖K̃‖₂ ≤ c; the reshaped-kernel norm differs."""
    spatial = (6, 6)
    kernel = jax.random.normal(jax.random.key(0), (3, 3, 3, 2), jnp.float64)
    v = spectral_norm.init_power_vector(jax.random.key(1), (*spatial, 3), jnp.float64)
    exact = true_norm(kernel, spatial)
    errors = []
    for n in (1, 10, 3000):
        normalised, sigma, _ = spectral_norm.spectral_normalise(kernel, v, C, n)
        assert float(sigma) <= exact * (1 + 1e-12)  # power iteration gives a lower bound
        errors.append(exact - float(sigma))
    assert errors[0] > errors[1] > errors[2] and errors[2] <= 1e-5 * exact
    assert true_norm(normalised, spatial) <= C * (1 + 1e-5)
    reshaped = float(spectral_norm.reshaped_kernel_norm(kernel))
    assert abs(reshaped - exact) / exact > 0.05  # why the operator (not the kernel) matters


def test_power_iteration_is_exact_for_dense_kernels_and_keeps_small_kernels():
    """Dense (C_in, C_out) kernels go through the 1x1 path: σ̂ = σ_max(W); W̃ = W if σ < c."""
    w = jax.random.normal(jax.random.key(2), (5, 4), jnp.float64)
    v = spectral_norm.init_power_vector(jax.random.key(3), (1, 1, 5), jnp.float64)
    _, sigma, _ = spectral_norm.spectral_normalise(w, v, C, 300)
    np.testing.assert_allclose(float(sigma), np.linalg.norm(np.asarray(w), 2), rtol=1e-10)
    small = 0.5 * C * w / np.linalg.norm(np.asarray(w), 2)
    kept, _, _ = spectral_norm.spectral_normalise(small, v, C, 300)
    np.testing.assert_array_equal(kept, small)


def test_zero_kernel_keeps_a_unit_power_vector():
    """K = 0 (Fixup's W2 at init): v stays the previous unit vector (no 0/0), σ̂ = 0."""
    v = spectral_norm.init_power_vector(jax.random.key(0), (4, 4, 2), jnp.float64)
    out = spectral_norm.power_iteration(jnp.zeros((3, 3, 2, 2), jnp.float64), v, 3)
    np.testing.assert_array_equal(out, v)


# --------------------------------------------------------------------------------------------
# The invertible residual step.


def test_branch_is_a_contraction_and_fixed_point_converges_at_the_predicted_rate():
    """Lip(g) ≤ |s|‖W1‖‖W2‖ < 1; J_g norm below it; d_{k+1} ≤ L d_k; x + g(x) = y."""
    spatial = (5, 5)
    g = revup.fixup_branch
    for seed in range(3):
        params = random_branch(jax.random.key(seed), spatial=spatial)
        bound = lipschitz_bound(params, spatial)
        assert bound < C * (1 + 1e-8)
        x = jax.random.normal(jax.random.key(10 + seed), (1, *spatial, 2), jnp.float64)
        assert jacobian_norm(g, params, x) <= bound * (1 + 1e-8)
    y = jax.random.normal(jax.random.key(20), (3, *spatial, 2), jnp.float64)
    residuals = np.asarray(revup.fixed_point_residuals(g, params, y, 30))
    above_roundoff = residuals[:-1] > 1e-10
    ratios = residuals[1:][above_roundoff] / residuals[:-1][above_roundoff]
    assert ratios.size > 5 and np.all(ratios <= bound * (1 + 1e-6))
    assert residuals[-1] < 1e-3 * residuals[0]  # it really contracts
    x, info = revup.fixed_point_inverse(g, params, y, max_iter=500, tol=1e-13)
    assert bool(info.converged) and 1 < int(info.iterations) < 500
    assert float(info.residual) <= 1e-13
    np.testing.assert_allclose(x + g(params, x), y, atol=1e-11)


@pytest.mark.parametrize(
    "transition, stem",
    [pytest.param("reversible", "pad", marks=pytest.mark.slow), ("stored", "conv")],
    ids=["psi", "stored"],
)
def test_reversible_gradients_equal_stored_gradients(transition, stem):
    """grad(reversible) = grad(store) to 1e-9 (tol 1e-13), to ~tol at the default tol 1e-5."""
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 2), jnp.float64)
    grads = {}
    variables = perturbed_variables(
        tiny_model(transition=transition, stem=stem), x, jax.random.key(7)
    )
    cases = [("store", 1e-13), ("reversible", 1e-13)]
    cases += [("reversible", 1e-5)] if transition == "reversible" else []
    for backprop, tol in cases:
        model = tiny_model(
            backprop=backprop, transition=transition, stem=stem, tol=tol, max_iter=1000
        )

        def loss(params, x, model=model, variables=variables):
            logits = model.apply({**variables, "params": params}, x, train=False)
            return jnp.sum(jnp.sin(logits))

        grads[backprop, tol] = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], x)
    reference = jax.tree.leaves(grads["store", 1e-13])
    for tol, rtol in [(1e-13, 1e-9), (1e-5, 1e-3)]:
        if ("reversible", tol) not in grads:
            continue
        for a, b in zip(jax.tree.leaves(grads["reversible", tol]), reference):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.max(np.abs(b)))
    trace = jit_apply(model)(variables, x, method="fixed_point_trace")
    infos = [t for t in trace if t is not None]
    assert infos and all(bool(np.all(t.converged)) for t in infos)
    assert max(int(np.max(t.iterations)) for t in infos) > 1  # g ≠ 0: a real solve


def test_outputs_do_not_depend_on_the_mini_batch():
    """logits(x_0 alone) = logits(batch of 64)[0], in evaluation and training (stats updated)."""
    model = tiny_model(n_power_iterations=1, units=(1, 1))
    batch = jax.random.normal(jax.random.key(3), (64, 8, 8, 3), jnp.float64)
    variables = perturbed_variables(model, batch[:1], jax.random.key(4))
    apply = jit_apply(model)
    alone = apply(variables, batch[:1])
    together = apply(variables, batch)
    np.testing.assert_allclose(alone[0], together[0], rtol=1e-12, atol=1e-14)
    alone_t, stats_a = apply(variables, batch[:1], train=True, mutable=("spectral_stats",))
    together_t, stats_b = apply(variables, batch, train=True, mutable=("spectral_stats",))
    np.testing.assert_allclose(alone_t[0], together_t[0], rtol=1e-12, atol=1e-14)
    for a, b in zip(jax.tree.leaves(stats_a), jax.tree.leaves(stats_b)):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(alone[0], alone[0] * 0)  # the perturbed model is not trivial


def test_training_mode_without_a_mutable_state_collection_is_an_error():
    """train=True advances the power iteration; if "spectral_stats" is not mutable (README's
    `mutable=["batch_stats"]`, or no `mutable`) the update would be dropped silently: a clear
    ValueError instead. Mutable, the state advances; train=False reads it as stored."""
    model = tiny_model(units=(1, 1), n_power_iterations=1)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3), jnp.float64)
    variables = perturbed_variables(model, x, jax.random.key(4))
    for mutable in (["batch_stats"], False):
        with pytest.raises(ValueError, match=r"spectral_stats.*not mutable"):
            model.apply(variables, x, train=True, mutable=mutable)
    logits, updates = model.apply(variables, x, train=True, mutable=["spectral_stats"])
    moved = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(variables["spectral_stats"]))
    ]
    assert any(moved)
    np.testing.assert_array_equal(model.apply(variables, x, train=False), model.apply(variables, x))
    assert logits.shape == (2, 3)
    # The drift diagnostic in training mode passes the state collection itself.
    assert float(model.reconstruction_error(variables, x, train=True)) < 1e-4  # tol 1e-5


def test_fixup_init_is_the_identity_with_zero_logits():
    """At Fixup init W2 = 0 ⇒ g ≡ 0 (one fixed-point iteration), s = 1, logits = 0."""
    model = tiny_model(units=(1, 1), n_power_iterations=1)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3), jnp.float64)
    variables = model.init(jax.random.key(1), x)
    np.testing.assert_array_equal(model.apply(variables, x), 0.0)
    scale = revup.fixup_scale(variables["params"]["stage0"]["scale_raw"], model.c)
    np.testing.assert_allclose(scale, 1.0, rtol=1e-12)
    for info in filter(None, model.apply(variables, x, method="fixed_point_trace")):
        np.testing.assert_array_equal(info.iterations, 1)


def test_training_decreases_the_loss_and_keeps_blocks_contractive():
    """20 Adam steps on CIFAR-shaped random data lower the loss; afterwards Lip(g) < 1."""
    model = models.create(
        "revup20",
        units=(1, 1),
        widths=(4, 8),
        dtype=jnp.float32,
        tol=1e-4,
        transition="reversible",
    )
    x = jax.random.normal(jax.random.key(0), (8, 32, 32, 3), jnp.float32)
    labels = jnp.arange(8) % 10
    variables = model.init(jax.random.key(1), x)
    opt = optax.adam(2e-3)  # a step must not outrun 5 power iterations
    params, stats = variables["params"], {"spectral_stats": variables["spectral_stats"]}
    opt_state = opt.init(params)

    @jax.jit
    def step(params, stats, opt_state):
        def loss_fn(p):
            logits, new_stats = model.apply(
                {"params": p, **stats}, x, train=True, mutable=["spectral_stats"]
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, new_stats

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss

    losses = []
    for _ in range(20):
        params, stats, opt_state, loss = step(params, stats, opt_state)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.95 * losses[0], losses
    # After training: every block's normalised branch, as the next training step uses it (the
    # power iteration first catches up with the last update), is a contraction. σ is
    # re-estimated at the real input shape by 300 fresh power iterations, so |s|·σ1·σ2 ≥ Lip(g).
    _, stats = model.apply({"params": params, **stats}, x, train=True, mutable=["spectral_stats"])
    g = revup.fixup_branch
    sigma = jax.jit(spectral_norm.spectral_normalise, static_argnums=(2, 3))
    for s, spatial in enumerate([(32, 32), (16, 16)]):
        raw = jax.tree.map(lambda a: a[0].astype(jnp.float64), params[f"stage{s}"])
        st = jax.tree.map(lambda a: a[0].astype(jnp.float64), stats["spectral_stats"][f"stage{s}"])
        branch, _ = revup.normalise_branch(raw, st, model.c, 0)
        sigmas = []
        for w in ("w1", "w2"):
            v = spectral_norm.init_power_vector(
                jax.random.key(s), (*spatial, branch[w].shape[2]), jnp.float64
            )
            sigmas.append(float(sigma(branch[w], v, C, 300)[1]))
        assert abs(float(branch["scale"])) * np.prod(sigmas) < 1.0
        x_small = jax.random.normal(jax.random.key(s), (1, 4, 4, raw["w1"].shape[2]), jnp.float64)
        assert jacobian_norm(g, branch, x_small) < 1.0


# --------------------------------------------------------------------------------------------
# Configuration errors and non-convergence.


@pytest.mark.parametrize("c", [1.0, 1.5, 0.0, -0.1])
def test_bad_coefficient_is_rejected(c):
    """c ∉ (0, 1) cannot give a contraction: ValueError (also from the model, before tracing)."""
    with pytest.raises(ValueError, match="coefficient"):
        spectral_norm.check_coefficient(c)
    with pytest.raises(ValueError, match="coefficient"):
        tiny_model(c=c).init(jax.random.key(0), jnp.zeros((1, 8, 8, 2)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_iter=0), "max_iter"),
        (dict(max_iter=2.5), "max_iter"),
        (dict(tol=0.0), "tol"),
        (dict(tol=-1e-3), "tol"),
        (dict(on_nonconvergence="ignore"), "on_nonconvergence"),
    ],
)
def test_bad_fixed_point_config_is_rejected(kwargs, match):
    """max_iter ≥ 1 integer, tol > 0, policy in {error, flag}: ValueError otherwise."""
    config = dict(max_iter=10, tol=1e-6, on_nonconvergence="error") | kwargs
    with pytest.raises(ValueError, match=match):
        revup.invertible_residual_step(revup.fixup_branch, **config)


def _nonconvergent_grad(policy):
    params = random_branch(jax.random.key(0), spatial=(4, 4))
    step = revup.invertible_residual_step(
        revup.fixup_branch, max_iter=1, tol=1e-12, on_nonconvergence=policy
    )
    from revjax import engine

    def loss(p, x):
        return jnp.sum(engine.apply([step], [p], x) ** 2)

    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 2), jnp.float64)
    _, info = revup.fixed_point_inverse(
        revup.fixup_branch, params, x + revup.fixup_branch(params, x), max_iter=1, tol=1e-12
    )
    assert not bool(info.converged) and int(info.iterations) == 1
    return jax.block_until_ready(jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x))


def test_nonconvergence_error_policy_raises_a_clear_error():
    """Policy "error": grad under jit raises, naming the fixed-point non-convergence."""
    with pytest.raises(Exception, match="fixed-point inverse did not converge"):
        _nonconvergent_grad("error")


def test_nonconvergence_flag_policy_warns_and_returns_finite_gradients():
    """Policy "flag": a FixedPointWarning is emitted and the (approximate) gradient returned."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grads = _nonconvergent_grad("flag")
    assert any(issubclass(w.category, revup.FixedPointWarning) for w in caught)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(grads))


def test_registered_models_have_the_expected_depths():
    """revup20/56/110 have [n,n,n] blocks (n = 3, 9, 18); revup_imagenet 4 stages (shapes only)."""
    for name, n in [("revup20", 3), ("revup56", 9), ("revup110", 18)]:
        for transition in ("reversible", "stored"):
            model = models.create(name, transition=transition)
            shapes = jax.eval_shape(
                lambda k, m=model: m.init(k, jnp.zeros((2, 32, 32, 3))), jax.random.key(0)
            )
            blocks = sum(
                v["w1"].shape[0] for k, v in shapes["params"].items() if k.startswith("stage")
            )
            blocks += sum(1 for k in shapes["params"] if k.startswith("down"))
            assert blocks == 3 * n
    model = models.create("revup_imagenet", num_classes=5)
    logits = jax.eval_shape(
        lambda k: model.init_with_output(k, jnp.zeros((1, 64, 64, 3)))[0], jax.random.key(0)
    )
    assert logits.shape == (1, 5)


# --------------------------------------------------------------------------------------------
# Defaults: parameters of the Fixup ResNet, memory flat in depth, revup110 healthy at init.


def _param_count(model, shape=(1, 32, 32, 3)):
    shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros(shape)), jax.random.key(0))
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes["params"]))


def test_default_revup_has_exactly_the_fixup_resnet_parameters():
    """RevUp adds no parameters: revup20 = FixupResNet-20 (268,393); ψ costs 1,012,201."""
    assert models.create("revup20").transition == "stored"
    assert _param_count(models.create("revup20")) == 268_393
    assert _param_count(models.create("revup110")) == 1_720_138
    assert _param_count(models.create("revup20", transition="reversible")) == 1_012_201


def _train_step_temp_bytes(model, batch, spatial):
    def loss(params, stats, x):
        logits, new_stats = model.apply(
            {"params": params, **stats}, x, train=True, mutable=["spectral_stats"]
        )
        return jnp.sum(logits**2), new_stats

    x = jax.ShapeDtypeStruct((batch, *spatial, 3), jnp.float32)
    variables = jax.eval_shape(
        lambda k: model.init(k, jnp.zeros((1, *spatial, 3))), jax.random.key(0)
    )
    stats = {"spectral_stats": variables["spectral_stats"]}
    grad = jax.grad(loss, has_aux=True)
    compiled = jax.jit(grad).lower(variables["params"], stats, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize(
    "transition, batches", [("stored", (8, 32)), ("reversible", (8,))], ids=["stored", "psi"]
)
def test_reversible_training_step_memory_is_flat_in_depth(transition, batches):
    """XLA's compiled temp bytes of a training step (power iteration, spectral normalisation,
    gradients) are the same (within 5%) for 2 and 8 blocks per stage under backprop="reversible"
    at each batch size, while "store" grows. No per-block activation of the norm estimate
    σ̂ = uᵀKv and no depth-stacked normalised weights are kept."""
    spatial, config = (16, 16), dict(widths=(4, 8, 16), transition=transition)
    for batch in batches:
        rev = [
            _train_step_temp_bytes(
                models.create("revup20", units=(n,) * 3, **config), batch, spatial
            )
            for n in (2, 8)
        ]
        assert rev[1] <= 1.05 * rev[0], (batch, rev)
        if batch == 8:
            rev_batch8 = rev[1]
    if transition == "stored":
        store = [
            _train_step_temp_bytes(
                models.create("revup20", units=(n,) * 3, backprop="store", **config),
                8,
                spatial,
            )
            for n in (2, 8)
        ]
        assert store[1] > 2 * store[0] and store[1] > 2 * rev_batch8, (store, rev_batch8)


def test_revup110_defaults_at_init_float32():
    """revup110 (defaults, float32, init): finite logits, reversible gradients = stored ones to
    1e-3 (relative to each leaf's largest entry), reconstruction error ≤ 1e-4.

    The head kernel (0 under Fixup) is set random so that gradients reach the body.
    """
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3), jnp.float32)
    model = models.create("revup110")
    variables = model.init(jax.random.key(1), x)
    params = variables["params"]
    kernel = params["head"]["kernel"]
    params = {
        **params,
        "head": {
            **params["head"],
            "kernel": jax.random.normal(jax.random.key(2), kernel.shape, kernel.dtype),
        },
    }
    variables = {**variables, "params": params}
    logits = jax.jit(model.apply)(variables, x)
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
    grads = {}
    for backprop in ("reversible", "store"):
        m = model.clone(backprop=backprop)

        def loss(p, m=m):
            return jnp.sum(jnp.sin(m.apply({**variables, "params": p}, x, train=False)))

        grads[backprop] = jax.jit(jax.grad(loss))(params)
    pairs = list(zip(jax.tree.leaves(grads["reversible"]), jax.tree.leaves(grads["store"])))
    assert any(float(jnp.max(jnp.abs(b))) > 0 for _, b in pairs[:-2])  # the body gets gradients
    for a, b in pairs:
        assert bool(jnp.all(jnp.isfinite(a)))
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(jnp.max(jnp.abs(b))))
    worst = float(jax.jit(lambda v: model.reconstruction_error(v, x, train=True))(variables))
    assert worst <= 1e-4, worst

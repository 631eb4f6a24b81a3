"""Chang et al. Hamiltonian, midpoint and leapfrog networks
(Chang et al. 2018, arXiv:1709.03698)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from revjax import couplings, engine, models
from revjax.conv import conv, conv_transpose
from revjax.families import chang
from revjax.models.chang import ChangNet

TINY_WIDTHS = {"stored": (4, 8), "reversible": (4, 16)}  # two stages, one transition
NETWORKS = [
    ("hamiltonian", "stored", None),
    ("hamiltonian", "reversible", None),
    ("midpoint", "stored", None),
    ("midpoint", "reversible", None),
    ("leapfrog", "stored", "zero_velocity"),
    pytest.param("leapfrog", "stored", "second_order", marks=pytest.mark.slow),
    pytest.param("leapfrog", "reversible", "zero_velocity", marks=pytest.mark.slow),
    ("leapfrog", "reversible", "second_order"),
]


def tiny_net(family, transition, start, dtype=jnp.float64, **overrides):
    fields = dict(
        family=family,
        units=(2, 2),
        widths=TINY_WIDTHS[transition],
        h=0.5,
        num_classes=3,
        transition=transition,
        start=start,
        dtype=dtype,
    )
    fields.update(overrides)
    return ChangNet(**fields)


def rel(a, b):
    return float(engine._relative_error(a, b))


# --------------------------------------------------------------------------------------------
# Operators and steps.


def test_block_kernel_adjoint_identity():
    """<K x, y> = <x, K^T y> for a block kernel, and <(W − W^T) u, v> = −<u, (W − W^T) v>."""
    keys = jax.random.split(jax.random.key(0), 5)
    block = chang.init_block(keys[0], "hamiltonian", 6, dtype=jnp.float64)
    kernel = block["F"]["K"]
    x = jax.random.normal(keys[1], (2, 5, 7, 3))
    y = jax.random.normal(keys[2], (2, 5, 7, 3))
    lhs = jnp.vdot(conv(x, kernel), y)
    assert abs(float(lhs - jnp.vdot(x, conv_transpose(y, kernel)))) < 1e-12 * abs(float(lhs))
    w = chang.init_block(keys[3], "midpoint", 3, dtype=jnp.float64)["W"]
    anti = jnp.vdot(chang.antisymmetric_conv(x, w), y) + jnp.vdot(x, chang.antisymmetric_conv(y, w))
    assert abs(float(anti)) < 1e-12


def _step_cases():
    h = 0.3
    return {
        "hamiltonian": (chang.hamiltonian_block_step(h), "hamiltonian", True),
        "hamiltonian_first": (chang.hamiltonian_block_step(h), "hamiltonian", False),
        "midpoint": (chang.midpoint_block_step(h), "midpoint", True),
        "leapfrog": (chang.leapfrog_block_step(h), "leapfrog", True),
        "midpoint_start": (chang.midpoint_start(h), "midpoint", True),
        "leapfrog_second_order": (chang.leapfrog_start("second_order", h), "leapfrog", True),
        "leapfrog_zero_velocity": (chang.leapfrog_start("zero_velocity", h), None, True),
    }


@pytest.mark.parametrize("name", sorted(_step_cases()))
def test_step_inverse_round_trip(name):
    """inverse(forward(x)) = x to 1e-12 (float64), and the fused backward = inverse + vjp."""
    step, family, input_bias = _step_cases()[name]
    keys = jax.random.split(jax.random.key(1), 4)
    params = None
    if family is not None:
        params = chang.init_block(keys[0], family, 4, input_bias=input_bias, dtype=jnp.float64)
        params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(keys[3], a.shape), params)
    shape = (2, 6, 6, 2 if family == "hamiltonian" else 4)
    x = jax.random.normal(keys[1], shape)
    if "start" not in name and "velocity" not in name and "second" not in name:
        x = (x, jax.random.normal(keys[2], shape))  # steps act on a pair of states
    y = step.forward(params, x)
    assert rel(step.inverse(params, y), x) < 1e-12
    y_bar = jax.tree.map(lambda a: jnp.cos(a), y)
    fused = engine.step_backward(step, params, y, y_bar, None)
    generic = engine.step_backward(step._replace(backward=None), params, y, y_bar, None)
    for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(generic)):
        assert float(jnp.max(jnp.abs(a - b))) < 1e-11


@pytest.mark.parametrize(
    "family,start",
    [
        ("hamiltonian", None),
        ("midpoint", None),
        ("leapfrog", "zero_velocity"),
        ("leapfrog", "second_order"),
    ],
)
def test_reversible_body_inverts(family, start):
    """engine.invert(body, body(x)) = x (float64, 1e-12) through space-to-depth transitions."""
    config = chang.make_config(family, (2, 2), (4, 16), 0.5, "reversible", start)
    tree = chang.init_body_params(jax.random.key(2), config, jnp.float64)
    layers, params = chang.body_layers(config), chang.body_params(tree, config)
    x = chang.to_state(jax.random.normal(jax.random.key(3), (2, 8, 8, 4)), config)
    y = jax.jit(lambda p, u: engine.apply(layers, p, u))(params, x)
    assert y[0].shape[-1] == (8 if family == "hamiltonian" else 16)
    x_hat = jax.jit(lambda p, v: engine.invert(layers, p, v))(params, y)
    assert rel(x_hat, x) < 1e-12


# --------------------------------------------------------------------------------------------
# Networks.


@pytest.mark.parametrize("family,transition,start", NETWORKS)
def test_network_reversible_gradients_equal_store(family, transition, start):
    """d loss / d(params, x) with reconstruction == with stored activations (float64, 1e-9)."""
    x = jax.random.normal(jax.random.key(4), (2, 8, 8, 3))
    model = tiny_net(family, transition, start)
    variables = model.init(jax.random.key(5), x)
    weights = jax.random.normal(jax.random.key(6), (2, 3))

    def loss(backprop):
        net = model.clone(backprop=backprop)
        return lambda v, u: jnp.sum(weights * jnp.tanh(net.apply(v, u)))

    g_rev = jax.jit(jax.grad(loss("reversible"), argnums=(0, 1)))(variables, x)
    g_store = jax.jit(jax.grad(loss("store"), argnums=(0, 1)))(variables, x)
    for a, b in zip(jax.tree.leaves(g_rev), jax.tree.leaves(g_store)):
        scale = max(float(jnp.max(jnp.abs(b))), 1e-30)
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-9 * scale
    body_grads = [g_store[0]["params"][f"stage{s}"] for s in (1, 2)]
    assert all(float(jnp.max(jnp.abs(b))) > 0 for b in jax.tree.leaves(body_grads))


@pytest.mark.parametrize("store_every", [None, 2], ids=["plain", "store_every2"])
def test_bn_hamiltonian_train_mode_matches_store(store_every):
    """BN inside the block (the default): train-mode gradients and running averages equal
    those of stored backprop (float64): the reconstruction uses the forward's batch
    statistics and never updates the running averages a second time. Also with the stacks
    storing their state every 2 blocks (stacks of 4: units 5)."""
    x = jax.random.normal(jax.random.key(4), (4, 8, 8, 3))
    units = (2, 2) if store_every is None else (5, 5)
    model = tiny_net("hamiltonian", "stored", None, units=units, store_every=store_every)
    assert model.config().block == "bn"
    variables = model.init(jax.random.key(5), x)
    assert "bn1" in variables["params"]["stage1"]["rest"]["F"]
    assert "bn1" not in variables["params"]["stage1"]["first"]["F"]  # no BN₁ in the first F
    weights = jax.random.normal(jax.random.key(6), (4, 3))

    def loss(backprop):
        net = model.clone(backprop=backprop)

        def fn(params):
            out, updates = net.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return jnp.sum(weights * jnp.tanh(out)), updates["batch_stats"]

        return jax.jit(jax.value_and_grad(fn, has_aux=True))

    (_, stats_rev), g_rev = loss("reversible")(variables["params"])
    (_, stats_store), g_store = loss("store")(variables["params"])
    assert rel(g_rev, g_store) < 1e-10
    assert rel(stats_rev, stats_store) < 1e-12
    moved = jax.tree.map(
        lambda a, b: float(jnp.max(jnp.abs(a - b))), stats_rev, variables["batch_stats"]
    )
    assert min(jax.tree.leaves(moved)) > 0  # every running average was updated


def test_parameter_counts():
    """Exact counts (jax.eval_shape, no computation), Chang et al. (2018), arXiv:1709.03698.

    block="bias": the official configurations' counts (kernels, β₁/β₂, stem, head). The BN
    block adds 2 · C/2 per residual function (two BN scale/offset pairs instead of two bias
    vectors), less C/2 for the first F (no BN₁): +2,320 for hamiltonian74.
    """
    expected = {
        ("hamiltonian74", 10, "bias"): 429_690,
        ("hamiltonian74", 100, "bias"): 439_860,
        ("hamiltonian218", 10, "bias"): 1_683_034,
        ("hamiltonian1202", 10, "bias"): 9_654_746,
        ("hamiltonian74", 10, "bn"): 432_010,
        ("hamiltonian74", 100, "bn"): 442_180,
        ("hamiltonian218", 10, "bn"): 1_690_890,
        ("hamiltonian1202", 10, "bn"): 9_699_338,
        ("midpoint62", 10, "bias"): 373_666,
        ("leapfrog62", 10, "bias"): 373_666,
    }
    for (name, classes, block), count in expected.items():
        line = models.summary(name, (1, 32, 32, 3), num_classes=classes, block=block)
        assert f"{count:,} parameters" in line, line
    # ~1000 blocks in one line: 12 n + 2 = 12 002 layers, parameters scale with n.
    line = models.summary("hamiltonian74", (1, 32, 32, 3), units=(334, 333, 333), block="bias")
    assert "26,562,970 parameters" in line, line


def test_weight_smoothness_matches_hand_computation():
    """R = λ Σ ½‖K_{j+1} − K_j‖², F and G separately, mismatched pairs skipped, no biases."""
    config = chang.make_config("hamiltonian", (3, 2, 1), (4, 8, 12), 1.0)
    tree = chang.init_body_params(jax.random.key(7), config, jnp.float64)
    rng = np.random.default_rng(8)
    tree = jax.tree.map(lambda a: a + rng.normal(size=a.shape), tree)
    hand = 0.0
    for s, units in enumerate(config.units):
        stage = tree[f"stage{s + 1}"]
        for part in ("F", "G"):
            seq = [np.asarray(stage["first"][part]["K"])]
            if units > 1:
                seq += list(np.asarray(stage["rest"][part]["K"]))
            for a, b in zip(seq[:-1], seq[1:]):
                if a.shape == b.shape:
                    hand += 0.5 * float(np.sum((b - a) ** 2))
    smoothness = jax.jit(chang.weight_smoothness)
    assert abs(float(smoothness(tree, 0.5)) - 0.5 * hand) < 1e-10 * hand
    shifted = jax.tree_util.tree_map_with_path(
        lambda p, a: a + 1.0 if p[-1].key.startswith("b") else a, tree
    )
    assert float(smoothness(shifted, 0.5)) == float(smoothness(tree, 0.5))
    # inside a model's variables, as a loss term
    model = tiny_net("midpoint", "stored", None, units=(3, 3))
    shapes = jax.eval_shape(model.init, jax.random.key(9), jnp.ones((1, 8, 8, 3)))
    variables = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), shapes)
    value, grads = jax.jit(jax.value_and_grad(chang.weight_smoothness))(variables)
    assert float(value) > 0
    assert float(jnp.max(jnp.abs(grads["params"]["stage1"]["rest"]["b"]))) == 0.0


# --------------------------------------------------------------------------------------------
# Linear stability of the actual steps (frozen coefficients: biases so large that every ReLU
# is active, so the step's Jacobian is the linearised map with D = I).

BIG_BIAS = 100.0


def spectral_radius(step, params, x) -> float:
    """ρ of the Jacobian of step.forward at x (state flattened)."""
    flat, unravel = jax.flatten_util.ravel_pytree(x)
    jac = jax.jacobian(lambda v: jax.flatten_util.ravel_pytree(step.forward(params, unravel(v)))[0])
    return float(np.max(np.abs(np.linalg.eigvals(np.asarray(jac(flat))))))


def growth(t):
    """ρ of [[0, 1], [−1, 2 − t]] (Verlet/leapfrog with h²μ = t), for t > 4."""
    return ((t - 2) + np.sqrt((t - 2) ** 2 - 4)) / 2


def _linear_operator(fn, shape):
    x = jnp.zeros(shape)
    return np.asarray(jax.jacobian(lambda v: fn(v.reshape(shape)).ravel())(x.ravel()))


@pytest.mark.parametrize("h2mu,expected", [(3.24, 1.0), (4.84, growth(4.84))])
def test_hamiltonian_verlet_stability_threshold(h2mu, expected):
    """Verlet block: ρ = 1 at h²μ_max(AB) = 3.24, ρ ≈ 2.43 at 4.84 (A = K₁^T K₁, B = K₂^T K₂)."""
    # positive kernels keep every pre-activation of the step at (0, 0) positive
    keys = jax.random.split(jax.random.key(10), 2)
    blocks = [
        {
            "K": jnp.abs(jax.random.normal(k, (3, 3, 1, 1))),
            "b1": jnp.zeros(1),
            "b2": jnp.full(1, BIG_BIAS),
        }
        for k in keys
    ]
    shape = (1, 4, 4, 1)
    unit = chang.hamiltonian_residual(1.0)
    a = _linear_operator(lambda z: unit(blocks[0], z), shape)
    b = _linear_operator(lambda z: unit(blocks[1], z), shape)
    mu = float(np.max(np.linalg.eigvals(a @ b).real))
    step = chang.hamiltonian_block_step(np.sqrt(h2mu / mu))
    rho = spectral_radius(step, {"F": blocks[0], "G": blocks[1]}, (jnp.zeros(shape),) * 2)
    assert abs(rho - expected) < 1e-8
    if h2mu > 4:
        assert round(rho, 2) == 2.43


@pytest.mark.parametrize("h2mu,expected", [(3.24, 1.0), (4.84, growth(4.84))])
def test_leapfrog_stability_threshold(h2mu, expected):
    """Leapfrog: ρ = 1 at h²λ_max(K^T K) = 3.24, ρ ≈ 2.43 at 4.84."""
    params = {
        "K": 0.5 * jax.random.normal(jax.random.key(11), (3, 3, 2, 2)),
        "b": jnp.full(2, BIG_BIAS),
    }
    shape = (1, 4, 4, 2)
    jac = _linear_operator(lambda y: chang.leapfrog_force(params, y), shape)
    mu = float(np.max(-np.linalg.eigvalsh(jac)))
    step = chang.leapfrog_block_step(np.sqrt(h2mu / mu))
    assert abs(spectral_radius(step, params, (jnp.zeros(shape),) * 2) - expected) < 1e-8


@pytest.mark.parametrize("h_omega,expected", [(0.9, 1.0), (1.1, 1.1 + np.sqrt(1.1**2 - 1))])
def test_midpoint_stability_threshold(h_omega, expected):
    """Midpoint, anti-symmetric K = W − W^T: ρ = 1 at hω_max = 0.9, ρ ≈ 1.56 at 1.1."""
    params = {
        "W": 0.5 * jax.random.normal(jax.random.key(12), (3, 3, 2, 2)),
        "b": jnp.full(2, BIG_BIAS),
    }
    shape = (1, 4, 4, 2)
    jac = _linear_operator(lambda y: chang.midpoint_residual(params, y), shape)
    assert np.allclose(jac, -jac.T)
    omega = float(np.max(np.abs(np.linalg.eigvals(jac))))
    step = chang.midpoint_block_step(h_omega / omega)
    rho = spectral_radius(step, params, (jnp.zeros(shape),) * 2)
    assert abs(rho - expected) < 1e-8
    if h_omega > 1:
        assert round(rho, 2) == 1.56


@pytest.mark.parametrize("a,b,grows", [(1.0, -2.0, False), (1.0, -4.5, True), (0.5, 0.5, True)])
def test_revnet_scalar_stability(a, b, grows):
    """Additive coupling F = a x, G = b y: neutral (ρ = 1) iff −4 ≤ ab ≤ 0."""
    step = couplings.additive_coupling(lambda p, u, r: a * u, lambda p, u, r: b * u)
    rho = spectral_radius(step, {"F": None, "G": None}, (jnp.zeros(1), jnp.zeros(1)))
    t = 2 + a * b  # trace of [[1, a], [b, 1 + ab]], det 1
    assert abs(rho - max(1.0, (abs(t) + np.sqrt(max(t * t - 4, 0))) / 2)) < 1e-12
    assert (rho > 1 + 1e-6) == grows


# --------------------------------------------------------------------------------------------
# Training and configuration errors.


@pytest.mark.parametrize("family", chang.FAMILIES)
def test_short_training_run_decreases_loss(family):
    """20 SGD steps on a fixed random CIFAR-shaped batch lower the cross-entropy."""
    model = tiny_net(family, "stored", None, dtype=jnp.float32, num_classes=10)
    x = jax.random.normal(jax.random.key(13), (8, 8, 8, 3), jnp.float32)
    labels = jax.random.randint(jax.random.key(14), (8,), 0, 10)
    variables = model.init(jax.random.key(15), x)
    optimizer = optax.sgd(0.05, momentum=0.9)
    opt_state = optimizer.init(variables["params"])

    def loss_fn(params, stats):
        logits, updates = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss + chang.weight_smoothness(params), updates["batch_stats"]

    @jax.jit
    def update(params, stats, opt_state):
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    params, stats = variables["params"], variables["batch_stats"]
    losses = []
    for _ in range(20):
        params, stats, opt_state, loss = update(params, stats, opt_state)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * losses[0], losses


def test_bad_configurations_raise():
    """h <= 0, odd Hamiltonian widths, odd spatial size, num_classes < 1, wrong widths."""
    with pytest.raises(ValueError, match="step size"):
        models.create("hamiltonian74", h=0.0)
    with pytest.raises(ValueError, match="step size"):
        models.create("leapfrog62", h=-1.0)
    with pytest.raises(ValueError, match="even"):
        models.create("hamiltonian74", widths=(33, 64, 112))
    with pytest.raises(ValueError, match="num_classes"):
        models.create("midpoint62", num_classes=0)
    with pytest.raises(ValueError, match="space-to-depth"):
        models.create("hamiltonian74", transition="reversible", widths=(32, 64, 112))
    with pytest.raises(ValueError, match="start rule"):
        models.create("midpoint62", start="second_order")
    with pytest.raises(ValueError, match="transition"):
        models.create("leapfrog62", transition="haar")
    with pytest.raises(ValueError, match="block"):
        models.create("hamiltonian74", units=(0, 6, 6))
    for every in (0, 2.5):
        with pytest.raises(ValueError, match="store_every must be None or an int >= 1"):
            models.create("hamiltonian74", store_every=every)
    exact = models.create("hamiltonian74", arithmetic="exact", store_every=4)
    with pytest.raises(ValueError, match="exact arithmetic reconstructs bit-exactly"):
        jax.eval_shape(exact.init, jax.random.key(0), jnp.ones((1, 16, 16, 3)))
    model = tiny_net("hamiltonian", "stored", None)
    with pytest.raises(ValueError, match="cannot halve"):
        model.init(jax.random.key(0), jnp.ones((1, 7, 7, 3)))

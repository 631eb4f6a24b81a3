"""RevNet (arXiv:1707.04585) and ResNet baselines: inverses, gradients, BN, counts, training."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from revjax import models
from revjax.couplings import split_halves
from revjax.models.heads import BN_MOMENTUM
from revjax.models.resnet import BasicResidual, BottleneckResidual
from revjax.models.revnet import bn_coupling

F64 = jnp.float64
# One stage of two blocks: basic at stride 2 (pool_pad shortcut / space-to-depth) and
# bottleneck at stride 1 with a width change (projection shortcut / zero-channel padding).
TINY = dict(units=(2,), stem_width=4, widths=(8,), strides=(2,), num_classes=3, dtype=F64)
TINY_BOTTLENECK = dict(TINY, stem_width=8, widths=(4,), strides=(1,), bottleneck=True)
IMAGES = (2, 8, 8, 3)
LABELS = jnp.array([0, 2])


def relative(a, b):
    """max over leaves of ‖a − b‖ / ‖b‖."""
    errs = [
        float(jnp.linalg.norm(x - y) / jnp.maximum(jnp.linalg.norm(y), 1e-300))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    ]
    return max(errs)


def images(seed=1, shape=IMAGES, dtype=F64):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


@functools.cache
def tiny_model(transition="stored", bottleneck=False, backprop="reversible"):
    config = TINY_BOTTLENECK if bottleneck else TINY
    return models.create("revnet38", **config, transition=transition, backprop=backprop)


@functools.cache
def tiny_variables(transition="stored", bottleneck=False):
    model = tiny_model(transition, bottleneck)
    return jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.key(0), images())


def perturbed_stats(stats, seed):
    """Random running averages (var > 0), so an update rule is visible in every leaf."""
    leaves, treedef = jax.tree.flatten(stats)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [
        jnp.exp(0.3 * jax.random.normal(k, leaf.shape, leaf.dtype)) for k, leaf in zip(keys, leaves)
    ]
    return jax.tree.unflatten(treedef, new)


@functools.cache
def train_step_fn(transition, bottleneck, backprop):
    """jit((params, stats, x) -> ((loss, new_stats), (params_bar, x_bar)))."""
    model = tiny_model(transition, bottleneck, backprop)

    def loss(params, stats, x):
        logits, updates = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, LABELS).mean()
        return ce, updates["batch_stats"]

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 2), has_aux=True))


# ------------------------------------------------------------------------------------------
# Single blocks.


@pytest.mark.parametrize("residual", [BasicResidual, BottleneckResidual])
@pytest.mark.parametrize("train", [True, False])
def test_block_inverse_round_trip(residual, train):
    """x1, x2 = y1 − F(x2), y2 − G(y1) reproduces the input of y = block(x) (float64, 1e-12)."""
    half = 8
    F, G = residual(half, dtype=F64), residual(half, dtype=F64)
    x = split_halves(images(shape=(3, 6, 6, 2 * half)))
    kf, kg = jax.random.split(jax.random.key(2))
    params = {
        "F": F.init(kf, x[1], train=False),
        "G": G.init(kg, x[0], train=False),
    }
    params = {
        k: {**v, "batch_stats": perturbed_stats(v["batch_stats"], 3)} for k, v in params.items()
    }
    step = bn_coupling(F, G, train=train)
    out = step.forward(params, x)
    y = out[0] if train else out
    assert relative(y, x) > 1e-2  # the block is not the identity
    assert relative(step.inverse(params, y), x) < 1e-12
    x_hat, _, _ = step.backward(params, y, y, None)
    assert relative(x_hat, x) < 1e-12


def test_block_updates_running_mean_once():
    """F's first BN sees x2: new mean = m·old + (1 − m)·mean_{N,H,W}(x2), var likewise."""
    half = 4
    F, G = BasicResidual(half, dtype=F64), BasicResidual(half, dtype=F64)
    x = split_halves(images(shape=(4, 5, 5, 2 * half)))
    params = {"F": F.init(jax.random.key(0), x[1]), "G": G.init(jax.random.key(1), x[0])}
    params = {
        k: {**v, "batch_stats": perturbed_stats(v["batch_stats"], 5)} for k, v in params.items()
    }
    _, stats = bn_coupling(F, G, train=True).forward(params, x)
    old = params["F"]["batch_stats"]["BatchNorm_0"]
    new = stats["F"]["BatchNorm_0"]
    m = BN_MOMENTUM
    np.testing.assert_allclose(
        new["mean"], m * old["mean"] + (1 - m) * x[1].mean((0, 1, 2)), rtol=1e-13
    )
    np.testing.assert_allclose(
        new["var"], m * old["var"] + (1 - m) * x[1].var((0, 1, 2)), rtol=1e-12
    )


# ------------------------------------------------------------------------------------------
# Whole networks: gradients and batch norm.


GRADIENT_CASES = [
    ("stored", False),
    ("reversible", True),
    pytest.param("stored", True, marks=pytest.mark.slow),
    pytest.param("reversible", False, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("transition,bottleneck", GRADIENT_CASES)
def test_reversible_gradients_equal_stored(transition, bottleneck):
    """∂loss/∂(params, x) by reconstruction == plain autodiff (float64, train mode with BN),
    and the running averages returned alongside are identical."""
    variables = tiny_variables(transition, bottleneck)
    stats = perturbed_stats(variables["batch_stats"], 7)
    x = images()
    (loss_s, stats_s), grads_s = train_step_fn(transition, bottleneck, "store")(
        variables["params"], stats, x
    )
    (loss_r, stats_r), grads_r = train_step_fn(transition, bottleneck, "reversible")(
        variables["params"], stats, x
    )
    assert abs(float(loss_r - loss_s)) < 1e-12
    assert relative(grads_r, grads_s) < 1e-9
    assert relative(stats_r, stats_s) < 1e-12
    assert min(float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads_s)) > 0


def test_running_averages_updated_exactly_once():
    """new(A) − new(B) = m·(A − B) for every running mean/var (a second update would give m²),
    in both the forward-only apply and the reversible training step; and the implied batch
    statistics (new − m·old)/(1 − m) agree between reversible and store backprop."""
    m = BN_MOMENTUM
    variables = tiny_variables("stored", False)
    model = tiny_model("stored", False, "reversible")
    apply = jax.jit(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[1]["batch_stats"]
    )
    a = perturbed_stats(variables["batch_stats"], 11)
    b = perturbed_stats(variables["batch_stats"], 12)
    x = images()
    new_a = apply({"params": variables["params"], "batch_stats": a}, x)
    new_b = apply({"params": variables["params"], "batch_stats": b}, x)
    body = [k for k in new_a if k.startswith("body_")]
    assert body == ["body_0", "body_1"]
    pick = lambda tree: {k: tree[k] for k in body}  # noqa: E731
    leaves = [jax.tree.leaves(pick(t)) for t in (new_a, new_b, a, b)]
    for na, nb, oa, ob in zip(*leaves, strict=True):
        np.testing.assert_allclose(na - nb, m * (oa - ob), rtol=1e-10, atol=1e-13)
    (_, step_a), _ = train_step_fn("stored", False, "reversible")(variables["params"], a, x)
    assert relative(step_a, new_a) < 1e-13
    (_, store_a), _ = train_step_fn("stored", False, "store")(variables["params"], a, x)
    batch_rev = jax.tree.map(lambda n, o: (n - m * o) / (1 - m), step_a, a)
    batch_store = jax.tree.map(lambda n, o: (n - m * o) / (1 - m), store_a, a)
    assert relative(batch_rev, batch_store) < 1e-10


def test_eval_mode_uses_running_averages():
    """Eval logits of one example do not depend on the rest of the batch, and change when the
    running averages change (train-mode logits do depend on the batch)."""
    variables = tiny_variables("stored", False)
    model = tiny_model("stored", False, "reversible")
    stats = perturbed_stats(variables["batch_stats"], 13)
    v = {"params": variables["params"], "batch_stats": stats}
    x = images(shape=(4, 8, 8, 3))
    eval_apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    full, first = eval_apply(v, x), eval_apply(v, x[:2])
    np.testing.assert_allclose(full[:2], first, rtol=1e-12)
    other = eval_apply({**v, "batch_stats": perturbed_stats(stats, 14)}, x[:2])
    assert relative(other, first) > 1e-3


# ------------------------------------------------------------------------------------------
# Parameter counts of the reference configurations, training, bad inputs.


PARAM_COUNTS = {
    "resnet32": 464_154,
    "revnet38": 464_890,
    "resnet110": 1_727_962,
    "revnet110": 1_729_194,
    "resnet164": 1_703_258,
    "revnet164": 1_748_778,
    "resnet101": 44_541_480,
    "revnet104": 45_428_072,
}


@pytest.mark.parametrize("name", list(PARAM_COUNTS))
def test_parameter_count_matches_spec(name):
    """Trainable scalars (kernels, BN γ/β, dense) of the reference configs: pinned counts."""
    model = models.create(name)
    size = 224 if model.num_classes == 1000 else 32
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(
        lambda k: model.init(k, jnp.zeros(x.shape), train=False), jax.random.key(0)
    )
    assert models.count_params(variables) == PARAM_COUNTS[name]


def test_reversible_transitions_widen_by_four():
    """transition='reversible': a stride-2 stage multiplies the width by 4 (space-to-depth)."""
    from revjax.families.revnet import body_widths

    assert body_widths(32, (32, 64, 128), (1, 2, 2), False, "reversible") == (32, 32, 128, 512)
    assert body_widths(32, (32, 64, 128), (1, 2, 2), True, "reversible") == (32, 128, 512, 2048)
    assert body_widths(32, (32, 64, 128), (1, 2, 2), False, "stored") == (32, 32, 64, 128)


def test_short_training_run_decreases_loss():
    """20 SGD steps on a fixed random CIFAR-shaped batch (16x16, reversible backprop, BN
    running averages threaded through) lower the cross-entropy."""
    model = models.create(
        "revnet38",
        units=(2,),
        stem_width=8,
        widths=(16,),
        strides=(2,),
        num_classes=4,
        dtype=jnp.float32,
    )
    x = jax.random.normal(jax.random.key(0), (8, 16, 16, 3), jnp.float32)
    labels = jnp.arange(8) % 4
    variables = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.key(1))
    optimizer = optax.sgd(0.1, momentum=0.9)

    def loss_fn(params, stats):
        logits, updates = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates

    @jax.jit
    def step(params, stats, opt_state):
        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats)
        changes, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, changes), updates["batch_stats"], opt_state, loss

    params, stats = variables["params"], variables["batch_stats"]
    opt_state = optimizer.init(params)
    losses = []
    for _ in range(20):
        params, stats, opt_state, loss = step(params, stats, opt_state)
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0]


def test_resnet_remat_equals_store():
    """ResNet gradients with jax.checkpoint per unit equal plain autodiff (float64)."""
    config = dict(units=(2,), stem_width=4, widths=(8,), strides=(2,), num_classes=3, dtype=F64)
    x = images()
    grads = {}
    for backprop in ("store", "remat"):
        model = models.create("resnet32", **config, backprop=backprop)
        variables = model.init(jax.random.key(0), x)

        def loss(p, model=model, variables=variables):
            logits, _ = model.apply(
                {**variables, "params": p}, x, train=True, mutable=["batch_stats"]
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, LABELS).mean()

        grads[backprop] = jax.jit(jax.grad(loss))(variables["params"])
    assert relative(grads["remat"], grads["store"]) < 1e-12


@pytest.mark.parametrize(
    "name,overrides,match",
    [
        ("revnet_38", {}, "unknown model"),
        ("revnet38", {"stem_width": 3, "widths": (4, 8, 16)}, "odd channel"),
        ("revnet38", {"num_classes": 0}, "num_classes"),
        ("revnet38", {"transition": "haar"}, "unknown transition"),
        ("revnet38", {"backprop": "magic"}, "backprop"),
        ("revnet38", {"units": (3, 3)}, "one entry per stage"),
        ("revnet164", {"stem_width": 32, "widths": (3, 4, 8)}, "multiples of 8"),
        ("resnet110", {"backprop": "reversible"}, "not invertible"),
    ],
)
def test_bad_configs_raise(name, overrides, match):
    """Invalid names or configurations raise a ValueError naming the problem, before tracing."""
    with pytest.raises(ValueError, match=match):
        models.create(name, **overrides)


@pytest.mark.parametrize("name", ["revnet38", "resnet32"])
def test_unhalvable_input_raises(name):
    """A 12x12 image reaches the last stride-2 stage at 6 -> 3 -> cannot halve 3."""
    model = models.create(name, strides=(2, 2, 2))
    with pytest.raises(ValueError, match="cannot\\s+halve"):
        jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 12, 12, 3))), jax.random.key(0))


def test_stage_first_block_with_identity_shortcut_is_an_ordinary_coupling():
    """A stored-transition RevNet whose first stage keeps width and resolution (RevNet-110's
    stem 32 -> stage 1 32, stride 1) runs that stage's first block as an invertible coupling
    (nothing stored), with the same parameters."""
    import flax.linen as nn

    from revjax import engine
    from revjax.models.revnet import RevNet

    seen = []

    class BodyLayers(RevNet):
        @nn.compact
        def __call__(self, h, train=False):
            seen.append(self._body(h.shape, train)[0])
            return h

    def body_layers(model, width):
        fields = {f: getattr(model, f) for f in ("units", "widths", "strides", "num_classes")}
        probe = BodyLayers(**fields)
        jax.eval_shape(probe.init, jax.random.key(0), jnp.zeros((1, 32, 32, width)))
        return seen[-1]

    layers = body_layers(models.create("revnet110"), 32)
    assert isinstance(layers[0], engine.InvertibleStep)  # stage 1's first block: a coupling
    assert [type(layer).__name__ for layer in layers] == [
        "InvertibleStep",
        "Scan",
        "Transition",
        "Scan",
        "Transition",
        "Scan",
    ]
    assert (
        models.count_params(
            jax.eval_shape(
                lambda k: models.create("revnet110").init(k, jnp.zeros((1, 32, 32, 3))),
                jax.random.key(0),
            )
        )
        == PARAM_COUNTS["revnet110"]
    )


@pytest.mark.slow
def test_identity_shortcut_first_block_gradients_equal_stored():
    """Float64 gradients and running averages of a stored-transition RevNet whose first stage
    starts with an identity-shortcut coupling (stem 4 -> 4, stride 1) equal plain autodiff."""
    config = dict(units=(2, 1), widths=(4, 8), strides=(1, 2), num_classes=3, dtype=F64)
    x = images()
    grads, stats = {}, {}
    for backprop in ("store", "reversible"):
        model = models.create("revnet38", **config, backprop=backprop)
        variables = model.init(jax.random.key(0), x, train=False)

        def loss(p, model=model, variables=variables):
            logits, new = model.apply(
                {**variables, "params": p}, x, train=True, mutable=["batch_stats"]
            )
            return jnp.sum(jnp.sin(logits)), new

        (_, stats[backprop]), grads[backprop] = jax.jit(jax.value_and_grad(loss, has_aux=True))(
            variables["params"]
        )
    assert relative(grads["reversible"], grads["store"]) < 1e-9
    assert relative(stats["reversible"], stats["store"]) < 1e-12

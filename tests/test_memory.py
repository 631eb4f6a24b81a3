"""Activation memory of a training step, from XLA's compiled memory analysis (exact, no big run).

"A training step" is `revjax.memory`'s: the donated optimizer update (here SGD with momentum).
Reversible stacks keep only the output: temp bytes are flat in depth. Stored activations grow
linearly with depth.
"""

import jax
import jax.numpy as jnp
import optax
import pytest

from revjax import engine, memory
from revjax.conv import conv
from revjax.couplings import additive_coupling

HALF = 8


def residual(p, u, rng=None):
    return conv(jax.nn.relu(conv(u, p["w1"])), p["w2"])


STEP = additive_coupling(residual, residual)


def temp_bytes(depth: int, backprop: str) -> int:
    w = jax.ShapeDtypeStruct((depth, 3, 3, HALF, HALF), jnp.float32)
    params = {"F": {"w1": w, "w2": w}, "G": {"w1": w, "w2": w}}
    x = (jax.ShapeDtypeStruct((4, 16, 16, HALF), jnp.float32),) * 2

    def loss(params, x):
        y = engine.apply([engine.Scan(STEP)], [params], x, backprop=backprop)
        return sum(jnp.sum(u**2) for u in y)

    return memory.update_step_temp_bytes(loss, params, x, optax.sgd(0.1, momentum=0.9))


@pytest.fixture(scope="module")
def table():
    return {(d, m): temp_bytes(d, m) for d in (8, 32, 64) for m in ("reversible", "store", "remat")}


def param_bytes(depth: int) -> int:
    """float32 bytes of the stacked parameters (4 kernels of 3x3xHALFxHALF per step)."""
    return depth * 4 * 3 * 3 * HALF * HALF * 4


def test_reversible_memory_is_flat_in_depth(table):
    """Reversible: beyond one parameter-sized gradient buffer (which a training step needs at
    any depth and which grows with the parameters), temp bytes at depth 64 are within 5% of
    depth 8: the activations kept do not grow with depth."""
    small = table[(8, "reversible")] - param_bytes(8)
    large = table[(64, "reversible")] - param_bytes(64)
    assert abs(large - small) <= 0.05 * small, (small, large)


def test_store_memory_grows_linearly(table):
    """store: temp(64) − temp(8) ≈ (56/24)·(temp(32) − temp(8)), and ≥ 10x reversible at 64."""
    t8, t32, t64 = (table[(d, "store")] for d in (8, 32, 64))
    assert t64 > 4 * t8
    slope_ratio = (t64 - t8) / (t32 - t8)
    assert slope_ratio == pytest.approx(56 / 24, rel=0.1)
    assert t64 >= 10 * table[(64, "reversible")]


def test_remat_sits_between(table):
    """remat stores one state per step: below store, above reversible at depth 64."""
    assert table[(64, "reversible")] < table[(64, "remat")] < table[(64, "store")]


def test_update_step_memory_reports_the_donated_optimizer_update():
    """The step's arguments are params + optimizer state + batch; donation makes the outputs
    alias them (outputs are reported, total = temp + arguments + outputs)."""
    w = jax.ShapeDtypeStruct((64, 64), jnp.float32)
    batch = jax.ShapeDtypeStruct((32, 64), jnp.float32)
    loss = lambda p, b: jnp.sum(jnp.tanh(b @ p) ** 2)
    sgd = memory.update_step_memory(loss, w, batch, optax.sgd(0.1))
    adam = memory.update_step_memory(loss, w, batch, optax.adam(0.1))
    param_bytes, batch_bytes = 64 * 64 * 4, 32 * 64 * 4
    assert sgd["arguments"] == param_bytes + batch_bytes
    assert adam["arguments"] >= 3 * param_bytes + batch_bytes  # Adam's mu and nu are arguments
    for stats in (sgd, adam):
        assert stats["total"] == stats["temp"] + stats["arguments"] + stats["outputs"]


def test_model_step_is_the_mean_cross_entropy_with_mutable_state():
    """`model_step_inputs` gives labels of the logits' leading shape and the model's
    non-parameter collections; `model_loss` is the mean softmax cross-entropy of the model in
    training mode (batch statistics, not running averages); `model_step_memory` is
    `update_step_memory` of that pair."""
    import flax.linen as nn

    class Segmenter(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.BatchNorm(use_running_average=not train)(x)
            return nn.Dense(3)(x)

    model = Segmenter()
    params, (x, labels, state) = memory.model_step_inputs(model, (2, 4, 4, 5))
    assert x.shape == (2, 4, 4, 5) and labels.shape == (2, 4, 4) and labels.dtype == jnp.int32
    assert set(state) == {"batch_stats"}

    variables = model.init(jax.random.key(0), jnp.zeros(x.shape), train=False)
    images = 3.0 + jax.random.normal(jax.random.key(1), x.shape)
    targets = jnp.arange(32).reshape(2, 4, 4) % 3
    loss = memory.model_loss(model)(
        variables["params"], (images, targets, {"batch_stats": variables["batch_stats"]})
    )
    logits, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
    expected = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1))
    assert loss == pytest.approx(float(expected), rel=1e-6)
    opt = optax.sgd(0.1, momentum=0.9)
    assert memory.model_step_memory(model, (2, 4, 4, 5), opt) == memory.update_step_memory(
        memory.model_loss(model), params, (x, labels, state), opt
    )

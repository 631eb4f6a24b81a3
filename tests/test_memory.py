"""Activation memory of a training step, from XLA's compiled memory analysis (exact, no big run).

Reversible stacks keep only the output: temp bytes are flat in depth. Stored activations grow
linearly with depth.
"""

import jax
import jax.numpy as jnp
import pytest

from revjax import engine
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

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.fixture(scope="module")
def table():
    return {(d, m): temp_bytes(d, m) for d in (8, 32, 64) for m in ("reversible", "store", "remat")}


def test_reversible_memory_is_flat_in_depth(table):
    """temp_bytes(reversible, depth 64) within 5% of depth 8."""
    small, large = table[(8, "reversible")], table[(64, "reversible")]
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

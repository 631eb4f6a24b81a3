"""Tests for the i-RevNet invertible downsampling ψ (``revjax.space_to_depth``;
Jacobsen, Smeulders, Oyallon 2018, arXiv:1802.07088)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from revjax.space_to_depth import depth_to_space, space_to_depth

SHAPES = [
    (2, 4, 6, 3),  # 2-D, batch > 1, odd channel count
    (1, 2, 2, 1),
    (3, 2, 4, 6, 5),  # 3-D
]


def _random(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _reference_space_to_depth(x, block):
    """ψ by explicit loops over the documented index formula."""
    batch, *spatial, channels = x.shape
    d = len(spatial)
    coarse = [size // block for size in spatial]
    y = np.zeros((batch, *coarse, block**d * channels), x.dtype)
    for n, *pos in itertools.product(range(batch), *(range(s) for s in coarse)):
        for offsets in itertools.product(range(block), repeat=d):
            q = 0
            for offset in offsets:
                q = q * block + offset
            source = tuple(block * p + o for p, o in zip(pos, offsets, strict=True))
            for c in range(channels):
                y[(n, *pos, q * channels + c)] = x[(n, *source, c)]
    return y


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("block", [1, 2])
def test_round_trip_is_bitwise(shape, block):
    """depth_to_space(space_to_depth(x)) == x exactly, and the reverse composition too."""
    x = _random(shape)
    y = space_to_depth(x, block)
    np.testing.assert_array_equal(depth_to_space(y, block), x)
    np.testing.assert_array_equal(space_to_depth(depth_to_space(y, block), block), y)


def test_round_trip_block_three_and_integer_dtype():
    """ψ_3 round trip is exact, and ψ preserves an integer dtype (it only moves entries)."""
    x = np.arange(2 * 6 * 9 * 2).reshape(2, 6, 9, 2).astype(np.int32)
    y = space_to_depth(x, 3)
    assert y.shape == (2, 2, 3, 18) and y.dtype == jnp.int32
    np.testing.assert_array_equal(depth_to_space(y, 3), x)


@pytest.mark.parametrize("shape", SHAPES)
def test_output_shape_and_dtype(shape):
    """(N, H, W, C) -> (N, H/2, W/2, 4C); (N, D, H, W, C) -> (N, D/2, H/2, W/2, 8C)."""
    x = _random(shape, dtype=np.float32)
    y = space_to_depth(x)
    d = len(shape) - 2
    assert y.shape == (shape[0], *(s // 2 for s in shape[1:-1]), 2**d * shape[-1])
    assert y.dtype == jnp.float32


@pytest.mark.parametrize("shape", SHAPES)
def test_is_a_permutation(shape):
    """ψ permutes entries: sorted(ψ(x)) == sorted(x) exactly, and ‖ψ(x)‖ == ‖x‖."""
    x = _random(shape, seed=1)
    y = np.asarray(space_to_depth(x))
    np.testing.assert_array_equal(np.sort(y.ravel()), np.sort(x.ravel()))
    np.testing.assert_allclose(np.linalg.norm(y), np.linalg.norm(x), rtol=1e-15)


@pytest.mark.parametrize(("shape", "block"), [*((s, 2) for s in SHAPES), ((1, 6, 3, 2), 3)])
def test_matches_index_formula(shape, block):
    """y[n,i,j,(b·a+β)·C+c] = x[n,b·i+a,b·j+β,c] (2-D) and the D-major analogue in 3-D."""
    x = _random(shape, seed=2)
    np.testing.assert_array_equal(space_to_depth(x, block), _reference_space_to_depth(x, block))


def test_documented_channel_order_2d_block_2():
    """Channel (2a+b)·C + c holds pixel (2i+a, 2j+b), checked on a hand-made 2×2 image."""
    x = np.array([[10.0, 11.0], [20.0, 21.0]]).reshape(1, 2, 2, 1)  # x[0, a, b, 0]
    np.testing.assert_array_equal(space_to_depth(x)[0, 0, 0], [10.0, 11.0, 20.0, 21.0])


def test_documented_channel_order_3d_block_2():
    """Channel 4γ + 2a + b (C = 1) holds voxel (γ, a, b): D offset is the most significant."""
    x = np.arange(8.0).reshape(1, 2, 2, 2, 1)  # x[0, γ, a, b, 0] = 4γ + 2a + b
    np.testing.assert_array_equal(space_to_depth(x)[0, 0, 0, 0], np.arange(8.0))


def test_jit_and_vmap_agree_with_eager():
    """jit(ψ)(x) == ψ(x), and vmap(ψ) over an extra leading axis == per-slice ψ."""
    x = _random((3, 2, 4, 6, 3), seed=3)
    expected = np.stack([space_to_depth(xi) for xi in x])
    np.testing.assert_array_equal(jax.vmap(space_to_depth)(x), expected)
    np.testing.assert_array_equal(jax.jit(space_to_depth)(x[0]), expected[0])
    np.testing.assert_array_equal(jax.jit(jax.vmap(depth_to_space))(expected), x)


@pytest.mark.parametrize("shape", [(2, 4, 6, 3), (1, 2, 4, 2, 3)])
def test_vjp_is_the_inverse(shape):
    """ψ is a permutation, hence orthogonal: ∇ₓ⟨ψ(x), g⟩ = ψ⁻¹(g) and ∇_y⟨ψ⁻¹(y), h⟩ = ψ(h)."""
    x = _random(shape, seed=4)
    g = np.asarray(space_to_depth(_random(shape, seed=5)))
    grad_x = jax.grad(lambda x: jnp.vdot(space_to_depth(x), g))(x)
    np.testing.assert_array_equal(grad_x, depth_to_space(g))
    grad_y = jax.grad(lambda y: jnp.vdot(depth_to_space(y), x))(g)
    np.testing.assert_array_equal(grad_y, space_to_depth(x))


@pytest.mark.parametrize(
    ("shape", "axis", "size"),
    [((1, 5, 4, 2), "H", 5), ((1, 4, 7, 2), "W", 7), ((1, 3, 4, 4, 2), "D", 3)],
)
def test_indivisible_spatial_size_raises(shape, axis, size):
    """A spatial size not divisible by the block raises ValueError naming that axis."""
    with pytest.raises(ValueError, match=rf"axis {axis} has size {size}.*not divisible by block=2"):
        space_to_depth(np.zeros(shape))


@pytest.mark.parametrize("fn", [space_to_depth, depth_to_space])
@pytest.mark.parametrize("shape", [(4, 4, 4), (1, 2, 2, 2, 2, 8)])
def test_wrong_rank_raises(fn, shape):
    """Only rank 4 (NHWC) and rank 5 (NDHWC) are accepted."""
    with pytest.raises(ValueError, match=r"rank 4 \(NHWC\) or 5 \(NDHWC\), got rank"):
        fn(np.zeros(shape))


def test_depth_to_space_indivisible_channels_raises():
    """depth_to_space needs C divisible by block**d (4 in 2-D, 8 in 3-D)."""
    with pytest.raises(ValueError, match=r"channel axis has size 6.*block\*\*2=4"):
        depth_to_space(np.zeros((1, 2, 2, 6)))
    with pytest.raises(ValueError, match=r"channel axis has size 4.*block\*\*3=8"):
        depth_to_space(np.zeros((1, 2, 2, 2, 4)))


@pytest.mark.parametrize("block", [0, -2, 2.0, True])
def test_bad_block_raises(block):
    """block must be a positive int."""
    with pytest.raises(ValueError, match="block must be a positive int"):
        space_to_depth(np.zeros((1, 4, 4, 1)), block)

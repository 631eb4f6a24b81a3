"""Tests for the orthonormal (and HyperNet-scaled) Haar transform (``revjax.wavelets``, §1.3)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from revjax.wavelets import (
    check_divisible,
    haar_forward,
    haar_forward_2d,
    haar_forward_3d,
    haar_inverse,
    haar_inverse_2d,
    haar_inverse_3d,
    subband_names,
)

SQRT2 = np.sqrt(2.0)
SHAPES_2D = [(2, 4, 6, 3), (1, 2, 2, 1), (3, 8, 4, 5)]
SHAPES_3D = [(2, 2, 4, 6, 3), (1, 4, 2, 2, 1)]
SHAPES = SHAPES_2D + SHAPES_3D


def _random(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _num_axes(shape):
    return len(shape) - 2


# --- Independent numpy references ---------------------------------------------------------


def _lift_pairs(t, axis, filter_scale):
    """1-D Haar lifting along ``axis`` by slicing: returns (low, high) = s·(u + v), s·(u − v)."""
    even = [slice(None)] * t.ndim
    odd = [slice(None)] * t.ndim
    even[axis] = slice(0, None, 2)
    odd[axis] = slice(1, None, 2)
    u, v = t[tuple(even)], t[tuple(odd)]
    return filter_scale * (u + v), filter_scale * (u - v)


def _reference_haar_by_slicing(x, filter_scale=1 / SQRT2):
    """Separable Haar DWT: lift along D (3-D), then H, then W; concatenate bands L-first."""
    bands = {"": np.asarray(x)}
    for axis in range(1, x.ndim - 1):  # spatial axes in order (D,) H, W
        refined = {}
        for name, t in bands.items():  # insertion order keeps the earlier axis more significant
            low, high = _lift_pairs(t, axis, filter_scale)
            refined[name + "L"] = low
            refined[name + "H"] = high
        bands = refined
    assert tuple(bands) == subband_names(x.ndim)
    return np.concatenate(list(bands.values()), axis=-1)


def _reference_haar_by_loops(x):
    """y[n, p, q·C + c] = 2^(−d/2) Σ_offsets Π_k s_k(o_k) · x[n, 2p + o, c], s_L = 1, s_H = ±1."""
    batch, *spatial, channels = x.shape
    d = len(spatial)
    coarse = [size // 2 for size in spatial]
    y = np.zeros((batch, *coarse, 2**d * channels), x.dtype)
    for n, *pos in itertools.product(range(batch), *(range(s) for s in coarse)):
        for q, band_bits in enumerate(itertools.product((0, 1), repeat=d)):
            for offsets in itertools.product((0, 1), repeat=d):
                sign = np.prod([(-1) ** (b * o) for b, o in zip(band_bits, offsets, strict=True)])
                source = tuple(2 * p + o for p, o in zip(pos, offsets, strict=True))
                y[(n, *pos, slice(q * channels, (q + 1) * channels))] += sign * x[(n, *source)]
    return y * 2.0 ** (-d / 2)


# --- Exact inverse -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_inverse_of_forward_is_identity_float64(shape):
    """haar_inverse(haar_forward(x)) == x and haar_forward(haar_inverse(y)) == y to 1e-14."""
    x = _random(shape)
    np.testing.assert_allclose(haar_inverse(haar_forward(x)), x, rtol=0, atol=1e-14)
    y = _random(haar_forward(x).shape, seed=1)
    np.testing.assert_allclose(haar_forward(haar_inverse(y)), y, rtol=0, atol=1e-14)


@pytest.mark.parametrize("shape", [SHAPES_2D[0], SHAPES_3D[0]])
def test_inverse_float32_and_dtype_preserved(shape):
    """Round trip in float32 holds to float32 precision and every output stays float32."""
    x = _random(shape, dtype=np.float32)
    y = haar_forward(x)
    assert y.dtype == jnp.float32
    x_back = haar_inverse(y)
    assert x_back.dtype == jnp.float32
    np.testing.assert_allclose(x_back, x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_dtype_preserved(dtype):
    """bf16/f16 in -> same dtype out, round trip within that dtype's precision."""
    x = jnp.asarray(_random((1, 4, 4, 2)), dtype=dtype)
    y = haar_forward(x)
    assert y.dtype == dtype and haar_inverse(y).dtype == dtype
    np.testing.assert_allclose(
        np.asarray(haar_inverse(y), np.float64), np.asarray(x, np.float64), atol=0.05
    )


def test_shapes():
    """(N, H, W, C) -> (N, H/2, W/2, 4C) and (N, D, H, W, C) -> (N, D/2, H/2, W/2, 8C)."""
    assert haar_forward(np.zeros((2, 4, 6, 3))).shape == (2, 2, 3, 12)
    assert haar_forward(np.zeros((2, 2, 4, 6, 3))).shape == (2, 1, 2, 3, 24)
    assert haar_inverse(np.zeros((2, 2, 3, 12))).shape == (2, 4, 6, 3)


# --- Orthogonality -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_energy_is_preserved(shape):
    """‖W x‖ == ‖x‖ and ‖W⁻¹ y‖ == ‖y‖ for the orthonormal transform W."""
    x = _random(shape, seed=2)
    np.testing.assert_allclose(np.linalg.norm(haar_forward(x)), np.linalg.norm(x), rtol=1e-14)
    y = x.reshape(haar_forward(x).shape)
    np.testing.assert_allclose(np.linalg.norm(haar_inverse(y)), np.linalg.norm(y), rtol=1e-14)


@pytest.mark.parametrize("shape", [SHAPES_2D[0], SHAPES_3D[0]])
def test_transpose_equals_inverse(shape):
    """Wᵀ = W⁻¹: jax.linear_transpose(W)(y) == W⁻¹ y and ⟨W x, y⟩ == ⟨x, W⁻¹ y⟩."""
    x = _random(shape, seed=3)
    y = _random(haar_forward(x).shape, seed=4)
    (transpose_y,) = jax.linear_transpose(haar_forward, x)(y)
    np.testing.assert_allclose(transpose_y, haar_inverse(y), rtol=0, atol=1e-14)
    (transpose_x,) = jax.linear_transpose(haar_inverse, y)(x)
    np.testing.assert_allclose(transpose_x, haar_forward(x), rtol=0, atol=1e-14)
    np.testing.assert_allclose(
        jnp.vdot(haar_forward(x), y), jnp.vdot(x, haar_inverse(y)), rtol=1e-13
    )


@pytest.mark.parametrize("shape", [(1, 4, 4, 2), (1, 2, 2, 4, 1)])
def test_explicit_matrix_is_orthogonal(shape):
    """The dense matrix M of the flattened map satisfies M Mᵀ = I (and det = ±1)."""
    size = int(np.prod(shape))
    matrix = jax.jacfwd(lambda v: haar_forward(v.reshape(shape)).ravel())(jnp.zeros(size))
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(size), rtol=0, atol=1e-14)
    np.testing.assert_allclose(abs(np.linalg.det(matrix)), 1.0, rtol=1e-12)


# --- Agreement with independent references -------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_numpy_slicing_reference(shape):
    """haar_forward == separable numpy lifting (x[:, 0::2] etc.), bands [L..L, ..., H..H]."""
    x = _random(shape, seed=5)
    np.testing.assert_allclose(haar_forward(x), _reference_haar_by_slicing(x), rtol=0, atol=1e-14)


@pytest.mark.parametrize("shape", [(2, 4, 2, 3), (1, 2, 4, 2, 2)])
def test_matches_numpy_loop_reference(shape):
    """haar_forward == per-pixel sum y[q·C+c] = 2^(−d/2) Σ_o (±1) x[2p+o, c] with q's bits."""
    x = _random(shape, seed=6)
    np.testing.assert_allclose(haar_forward(x), _reference_haar_by_loops(x), rtol=0, atol=1e-14)


def test_subband_order_on_hand_made_image():
    """On a 2×2 image [[a, b], [c, d]]: LL = (a+b+c+d)/2, LH = (a−b+c−d)/2 (high along W),
    HL = (a+b−c−d)/2 (high along H), HH = (a−b−c+d)/2."""
    a, b, c, d = 1.0, 2.0, 4.0, 8.0
    x = np.array([[a, b], [c, d]]).reshape(1, 2, 2, 1)
    expected = [(a + b + c + d) / 2, (a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2]
    np.testing.assert_allclose(haar_forward(x)[0, 0, 0], expected, rtol=1e-15)
    assert subband_names(4) == ("LL", "LH", "HL", "HH")


def test_subband_major_channel_layout():
    """Channel q·C + c is sub-band q of input channel c: a constant image of channel values
    v_c maps to LL = 2 v_c (2-D) or 2√2 v_c (3-D) and zero detail bands."""
    values = np.array([1.0, -3.0, 5.0])
    y2 = np.asarray(haar_forward(np.broadcast_to(values, (1, 2, 2, 3))))[0, 0, 0]
    np.testing.assert_allclose(y2, np.concatenate([2 * values, np.zeros(9)]), atol=1e-15)
    y3 = np.asarray(haar_forward(np.broadcast_to(values, (1, 2, 2, 2, 3))))[0, 0, 0, 0]
    np.testing.assert_allclose(y3, np.concatenate([2 * SQRT2 * values, np.zeros(21)]), atol=1e-14)
    assert subband_names(5) == ("LLL", "LLH", "LHL", "LHH", "HLL", "HLH", "HHL", "HHH")


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_pywavelets(shape):
    """haar_forward == pywt.dwtn(..., 'haar', 'periodization') bands in key order aa, ad, ..."""
    pywt = pytest.importorskip("pywt")
    x = _random(shape, seed=7)
    d = _num_axes(shape)
    coefficients = pywt.dwtn(x, "haar", mode="periodization", axes=tuple(range(1, d + 1)))
    keys = ["".join(k) for k in itertools.product("ad", repeat=d)]
    expected = np.concatenate([coefficients[k] for k in keys], axis=-1)
    np.testing.assert_allclose(haar_forward(x), expected, rtol=0, atol=1e-13)


# --- HyperNet-scaled variant ---------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_scaled_is_orthonormal_times_documented_factor(shape):
    """Scaled forward = 2^(−d/2) W (1/2 in 2-D, 1/(2√2) in 3-D); scaled inverse = 2^(d/2) W⁻¹."""
    x = _random(shape, seed=8)
    factor = {2: 0.5, 3: 1 / (2 * SQRT2)}[_num_axes(shape)]
    y = haar_forward(x, scaled=True)
    np.testing.assert_allclose(y, factor * haar_forward(x), rtol=0, atol=1e-14)
    np.testing.assert_allclose(
        haar_inverse(y, scaled=True), haar_inverse(y) / factor, rtol=0, atol=1e-14
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_scaled_round_trip_and_hypernet_filters(shape):
    """Scaled inverse(forward(x)) == x, and forward equals lifting with [1, ±1]/2 filters."""
    x = _random(shape, seed=9)
    y = haar_forward(x, scaled=True)
    np.testing.assert_allclose(haar_inverse(y, scaled=True), x, rtol=0, atol=1e-14)
    np.testing.assert_allclose(y, _reference_haar_by_slicing(x, filter_scale=0.5), atol=1e-14)


# --- Transformations -----------------------------------------------------------------------


@pytest.mark.parametrize("scaled", [False, True])
def test_jit_and_vmap_agree_with_eager(scaled):
    """jit(W)(x) == W(x), and vmap over an extra leading axis == per-slice W, both ways."""
    x = _random((3, 2, 4, 6, 3), seed=10)  # vmapped axis first, then NHWC
    expected = np.stack([haar_forward(xi, scaled=scaled) for xi in x])
    forward = jax.jit(jax.vmap(lambda v: haar_forward(v, scaled=scaled)))
    inverse = jax.vmap(jax.jit(lambda v: haar_inverse(v, scaled=scaled)))
    np.testing.assert_allclose(forward(x), expected, rtol=0, atol=1e-14)
    np.testing.assert_allclose(inverse(expected), x, rtol=0, atol=1e-14)


@pytest.mark.parametrize("shape", [SHAPES_2D[0], SHAPES_3D[0]])
def test_gradient_is_inverse_of_cotangent(shape):
    """Orthogonality makes the VJP the inverse: ∇ₓ⟨W x, g⟩ = W⁻¹ g and ∇_y⟨W⁻¹ y, h⟩ = W h."""
    x = _random(shape, seed=11)
    g = _random(haar_forward(x).shape, seed=12)
    grad_x = jax.jit(jax.grad(lambda x: jnp.vdot(haar_forward(x), g)))(x)
    np.testing.assert_allclose(grad_x, haar_inverse(g), rtol=0, atol=1e-14)
    grad_y = jax.grad(lambda y: jnp.vdot(haar_inverse(y), x))(g)
    np.testing.assert_allclose(grad_y, haar_forward(x), rtol=0, atol=1e-14)


def test_rank_specific_entry_points():
    """haar_*_2d/3d equal the dispatching functions and reject the other rank."""
    x2, x3 = _random((2, 4, 4, 3)), _random((1, 2, 4, 4, 3))
    np.testing.assert_array_equal(haar_forward_2d(x2), haar_forward(x2))
    np.testing.assert_array_equal(haar_forward_3d(x3), haar_forward(x3))
    np.testing.assert_array_equal(haar_inverse_2d(haar_forward(x2)), haar_inverse(haar_forward(x2)))
    np.testing.assert_array_equal(haar_inverse_3d(haar_forward(x3)), haar_inverse(haar_forward(x3)))
    with pytest.raises(ValueError, match=r"haar_forward_2d expected an array of rank 4 \(NHWC\)"):
        haar_forward_2d(x3)
    with pytest.raises(ValueError, match=r"haar_inverse_3d expected an array of rank 5 \(NDHWC\)"):
        haar_inverse_3d(x2)


# --- Errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "axis", "size"),
    [
        ((1, 7, 4, 2), "H", 7),
        ((1, 4, 5, 2), "W", 5),
        ((1, 3, 4, 4, 2), "D", 3),
        ((1, 4, 4, 9, 2), "W", 9),
    ],
)
def test_odd_spatial_size_raises(shape, axis, size):
    """An odd spatial size raises ValueError naming the axis (no silent cropping)."""
    with pytest.raises(
        ValueError, match=rf"axis {axis} has size {size}, which is odd; Haar coarsening needs even"
    ):
        haar_forward(np.zeros(shape))


def test_odd_size_raises_before_tracing():
    """The check uses static shapes, so it fires inside jit at trace time with the same text."""
    with pytest.raises(ValueError, match="axis H has size 7, which is odd"):
        jax.jit(haar_forward)(np.zeros((1, 7, 4, 2)))


@pytest.mark.parametrize("fn", [haar_forward, haar_inverse])
@pytest.mark.parametrize("shape", [(4, 4, 4), (8, 8), (1, 2, 2, 2, 2, 8)])
def test_wrong_rank_raises(fn, shape):
    """Only rank 4 (NHWC) and 5 (NDHWC) are accepted."""
    with pytest.raises(ValueError, match=r"expected an array of rank 4 \(NHWC\) or 5 \(NDHWC\)"):
        fn(np.zeros(shape))


def test_inverse_channel_count_must_match_subbands():
    """haar_inverse needs C divisible by 4 (2-D) or 8 (3-D)."""
    with pytest.raises(ValueError, match="channel axis has size 6, which is not divisible by 4"):
        haar_inverse(np.zeros((1, 2, 2, 6)))
    with pytest.raises(ValueError, match="channel axis has size 12, which is not divisible by 8"):
        haar_inverse(np.zeros((1, 2, 2, 2, 12)))


def test_integer_dtype_raises():
    """Integer inputs are rejected rather than silently promoted."""
    with pytest.raises(TypeError, match="floating dtype"):
        haar_forward(np.zeros((1, 2, 2, 1), np.int32))


@pytest.mark.parametrize(
    ("shape", "levels", "pattern"),
    [
        ((1, 16, 12, 3), 3, r"axis W has size 12.*2\*\*3 = 8.*after 2 level.*size 3.*level 3 of 3"),
        ((1, 6, 16, 3), 2, r"axis H has size 6.*after 1 level.*size 3.*level 2 of 2"),
        ((1, 5, 8, 3), 1, r"axis H has size 5.*at the input it has size 5.*level 1 of 1"),
        ((1, 4, 8, 8, 3), 3, r"axis D has size 4.*after 2 level.*size 1.*level 3 of 3"),
    ],
)
def test_check_divisible_names_axis_and_level(shape, levels, pattern):
    """check_divisible raises ValueError naming the axis and the first level that fails."""
    with pytest.raises(ValueError, match=pattern):
        check_divisible(shape, levels)


def test_check_divisible_agrees_with_repeated_coarsening():
    """check_divisible(shape, L) passes iff L successive haar_forward calls succeed."""
    x = np.zeros((1, 8, 12, 1))
    check_divisible(x.shape, 2)
    check_divisible(x.shape, 0)
    for _ in range(2):
        x = haar_forward(x)
    with pytest.raises(ValueError, match="level 3 of 3"):
        check_divisible((1, 8, 12, 1), 3)
    with pytest.raises(ValueError, match="axis W has size 3, which is odd"):
        haar_forward(x)


def test_check_divisible_bad_arguments():
    """Wrong rank and negative levels are rejected."""
    with pytest.raises(ValueError, match=r"rank 4 \(NHWC\) or 5 \(NDHWC\), got rank 3"):
        check_divisible((4, 4, 1), 1)
    with pytest.raises(ValueError, match="levels must be an int >= 0"):
        check_divisible((1, 4, 4, 1), -1)

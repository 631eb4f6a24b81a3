"""Periodic FFT convolutions (Ephrath et al. 2019, arXiv:1805.07821), each against a direct one."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from revjax import fft

# (spatial shape, kernel shape): odd and even image sizes, kernel sizes 1, 3, 5 (and even).
CASES_2D = [
    ((7, 9), (1, 1)),
    ((7, 9), (3, 3)),
    ((7, 9), (5, 5)),
    ((7, 9), (3, 5)),
    ((8, 6), (1, 1)),
    ((8, 6), (3, 3)),
    ((8, 6), (5, 5)),
    ((8, 6), (2, 4)),
]
CASES_3D = [
    ((4, 5, 6), (1, 1, 1)),
    ((4, 5, 6), (3, 3, 3)),
    ((5, 4, 3), (5, 3, 3)),
    ((4, 5, 6), (2, 5, 4)),
]
CASES = CASES_2D + CASES_3D
CHANNELS = 3

LINEAR_OPS = {
    "depthwise": (fft.depthwise_conv, fft.depthwise_conv_adjoint),
    "circulant": (fft.circulant_conv, fft.circulant_conv_adjoint),
}


def _case_id(case):
    spatial, ksize = case
    return "x".join(map(str, spatial)) + "-k" + "x".join(map(str, ksize))


def _data(spatial, ksize, channels=CHANNELS, batch=2, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, *spatial, channels)).astype(dtype)
    kernel = rng.normal(size=(*ksize, channels)).astype(dtype)
    return jnp.asarray(x), jnp.asarray(kernel)


def _wrap_pad_lax_depthwise(x, kernel):
    """Independent reference: wrap-pad by ((k-1)//2, k//2), then a VALID grouped lax conv."""
    nd = kernel.ndim - 1
    pads = [(0, 0)] + [((k - 1) // 2, k // 2) for k in kernel.shape[:-1]] + [(0, 0)]
    spec = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}
    spec[3] = ("NDHWC", "DHWIO", "NDHWC")
    return lax.conv_general_dilated(
        jnp.pad(x, pads, mode="wrap"),
        kernel[..., None, :],
        window_strides=(1,) * nd,
        padding="VALID",
        dimension_numbers=spec[nd],
        feature_group_count=x.shape[-1],
        precision=lax.Precision.HIGHEST,
    )


def _periodic_correlation(u, w):
    """``sum_a w[a] u[(p + a - r) mod n]`` with ``r = (k - 1) // 2``, by np.roll."""
    out = np.zeros_like(u)
    axes = tuple(range(u.ndim))
    for a in np.ndindex(w.shape):
        shift = tuple(-(ai - (k - 1) // 2) for ai, k in zip(a, w.shape, strict=True))
        out += w[a] * np.roll(u, shift, axis=axes)
    return out


def _circulant_reference(x, kernel):
    """``y_i = sum_j C_{(j - i) mod C} ⋆ x_j`` as an explicit numpy loop."""
    x, kernel = np.asarray(x), np.asarray(kernel)
    channels = x.shape[-1]
    y = np.zeros_like(x)
    for b, i, j in itertools.product(range(x.shape[0]), range(channels), range(channels)):
        y[b, ..., i] += _periodic_correlation(x[b, ..., j], kernel[..., (j - i) % channels])
    return y


def _dense_matrix(op, spatial, channels):
    """Matrix ``A`` with ``A @ vec(x) = vec(op(x))`` for one sample ``x`` of shape (*spatial, C)."""
    n = int(np.prod(spatial)) * channels
    basis = jnp.eye(n).reshape(n, *spatial, channels)  # the batch axis runs over e_1 .. e_n
    return np.asarray(op(basis)).reshape(n, n).T


def _flip_spatial(kernel):
    return kernel[(slice(None, None, -1),) * (kernel.ndim - 1)]


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_depthwise_equals_wrap_padded_lax_conv(case):
    """depthwise_conv(x, w) == lax.conv_general_dilated(pad(x, wrap), w, VALID, groups=C)."""
    x, kernel = _data(*case)
    np.testing.assert_allclose(
        fft.depthwise_conv(x, kernel), _wrap_pad_lax_depthwise(x, kernel), atol=1e-12
    )


def test_depthwise_1d_equals_wrap_padded_lax_conv():
    """The same identity with one spatial axis (NWC)."""
    x, kernel = _data((9,), (3,))
    np.testing.assert_allclose(
        fft.depthwise_conv(x, kernel), _wrap_pad_lax_depthwise(x, kernel), atol=1e-12
    )


CIRCULANT_CASES = CASES_2D + [CASES_3D[1]]


@pytest.mark.parametrize("case", CIRCULANT_CASES, ids=_case_id)
def test_circulant_equals_direct_channel_sum(case):
    """circulant_conv(x, C)_i == sum_j C_{(j-i) mod C} ⋆ x_j (np.roll loop)."""
    x, kernel = _data(*case, batch=1)
    np.testing.assert_allclose(
        fft.circulant_conv(x, kernel), _circulant_reference(x, kernel), atol=1e-12
    )


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_implicit_solve_equals_dense_solve(case):
    """implicit_diffusion_solve(x, w, h) == solve(I + h A^T A, x), A = matrix of the lax conv."""
    spatial, ksize = case
    channels, h = 2, 0.7
    x, kernel = _data(spatial, ksize, channels=channels, batch=1)
    a = _dense_matrix(lambda v: _wrap_pad_lax_depthwise(v, kernel), spatial, channels)
    expected = np.linalg.solve(np.eye(a.shape[0]) + h * a.T @ a, np.asarray(x).reshape(-1))
    got = fft.implicit_diffusion_solve(x, kernel, h)
    np.testing.assert_allclose(np.asarray(got).reshape(-1), expected, atol=1e-12)


@pytest.mark.parametrize("case", [CASES_2D[1], CASES_3D[3]], ids=_case_id)
def test_implicit_solve_inverts_diffusion(case):
    """(I + h K^T K) implicit_diffusion_solve(x) == x, with K, K^T the FFT operators."""
    x, kernel = _data(*case)
    h = 2.5
    z = fft.implicit_diffusion_solve(x, kernel, h)
    back = z + h * fft.depthwise_conv_adjoint(fft.depthwise_conv(z, kernel), kernel)
    np.testing.assert_allclose(back, x, atol=1e-12)


def test_implicit_solve_per_channel_h():
    """An h of shape (C,) equals solving each channel with its own scalar h."""
    x, kernel = _data((7, 9), (3, 3))
    hs = jnp.array([0.0, 0.5, 3.0])
    got = fft.implicit_diffusion_solve(x, kernel, hs)
    for c, h in enumerate(hs):
        one = fft.implicit_diffusion_solve(x[..., c : c + 1], kernel[..., c : c + 1], h)
        np.testing.assert_allclose(got[..., c : c + 1], one, atol=1e-13)


# --------------------------------------------------------------------------- adjoints


@pytest.mark.parametrize("name", sorted(LINEAR_OPS))
@pytest.mark.parametrize("case", [CASES_2D[3], CASES_2D[7], CASES_3D[1], CASES_3D[3]], ids=_case_id)
def test_adjoint_inner_product_and_linear_transpose(name, case):
    """<K x, y> == <x, K^T y> to 1e-12, and K^T equals jax.linear_transpose(K)."""
    forward, adjoint = LINEAR_OPS[name]
    x, kernel = _data(*case, seed=1)
    y, _ = _data(*case, seed=2)
    lhs = jnp.vdot(forward(x, kernel), y)
    rhs = jnp.vdot(x, adjoint(y, kernel))
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))
    (transposed,) = jax.linear_transpose(lambda v: forward(v, kernel), x)(y)
    np.testing.assert_allclose(adjoint(y, kernel), transposed, atol=1e-12)


@pytest.mark.parametrize("case", [CASES_2D[1], CASES_2D[3], CASES_3D[2]], ids=_case_id)
def test_adjoint_is_flipped_operator(case):
    """Odd k: K_dw^T = K_dw(flip w); K_circ^T = K_circ(flip C_{(-i) mod C})."""
    y, kernel = _data(*case)
    flipped = _flip_spatial(kernel)
    np.testing.assert_allclose(
        fft.depthwise_conv_adjoint(y, kernel), fft.depthwise_conv(y, flipped), atol=1e-12
    )
    reindexed = flipped[..., (-np.arange(CHANNELS)) % CHANNELS]
    np.testing.assert_allclose(
        fft.circulant_conv_adjoint(y, kernel), fft.circulant_conv(y, reindexed), atol=1e-12
    )


# --------------------------------------------------------------------------- gradients

GRAD_OPS = {
    "depthwise": fft.depthwise_conv,
    "depthwise_adjoint": fft.depthwise_conv_adjoint,
    "circulant": fft.circulant_conv,
    "circulant_adjoint": fft.circulant_conv_adjoint,
}


@pytest.mark.parametrize("name", sorted(GRAD_OPS))
@pytest.mark.parametrize("case", [((5, 4), (3, 2)), ((3, 4, 5), (3, 1, 3))], ids=_case_id)
def test_gradients_wrt_input_and_kernel(name, case):
    """Forward- and reverse-mode derivatives in (x, kernel) match finite differences."""
    x, kernel = _data(*case, channels=2, batch=1)
    check_grads(GRAD_OPS[name], (x, kernel), order=1, modes=("fwd", "rev"))


@pytest.mark.parametrize("case", [((5, 4), (3, 2)), ((3, 4, 5), (3, 1, 3))], ids=_case_id)
def test_gradients_implicit_solve(case):
    """Derivatives of the implicit solve in (x, kernel, h) match finite differences."""
    x, kernel = _data(*case, channels=2, batch=1)
    check_grads(
        fft.implicit_diffusion_solve, (x, kernel, jnp.asarray(0.3)), order=1, modes=("fwd", "rev")
    )


# --------------------------------------------------------------------------- stability


@pytest.mark.parametrize("h", [0.0, 0.1, 10.0])
@pytest.mark.parametrize("spatial", [(7, 9), (8, 6)])
def test_implicit_solve_spectral_norm_at_most_one(h, spatial):
    """||(I + h K^T K)^{-1}||_2 <= 1 for h >= 0 (== 1 at h = 0), from the dense matrix."""
    channels = 2
    _, kernel = _data(spatial, (3, 3), channels=channels)
    m = _dense_matrix(lambda v: fft.implicit_diffusion_solve(v, kernel, h), spatial, channels)
    norm = np.linalg.norm(m, 2)
    assert norm <= 1.0 + 1e-12
    np.testing.assert_allclose(m, m.T, atol=1e-12)  # symmetric positive definite inverse
    if h == 0.0:
        np.testing.assert_allclose(m, np.eye(m.shape[0]), atol=1e-13)


# --------------------------------------------------------------------------- dtypes

ALL_OPS = {
    **GRAD_OPS,
    "implicit": lambda x, kernel: fft.implicit_diffusion_solve(x, kernel, 0.4),
}


@pytest.mark.parametrize("name", sorted(ALL_OPS))
def test_float32_in_float32_out_and_close_to_float64(name):
    """float32 inputs give float32 outputs within ~1e-5 (relative) of the float64 result."""
    op = ALL_OPS[name]
    x64, k64 = _data((8, 6), (3, 3))
    x32, k32 = x64.astype(jnp.float32), k64.astype(jnp.float32)
    y32, y64 = op(x32, k32), op(x64, k64)
    assert y32.dtype == jnp.float32 and y64.dtype == jnp.float64
    assert float(jnp.max(jnp.abs(y32 - y64)) / jnp.max(jnp.abs(y64))) < 1e-5


def test_spectrum_shapes_and_dtypes():
    """Spectra are complex64/complex128 with the real-FFT half axis last."""
    _, k64 = _data((7, 9), (3, 3))
    k32 = k64.astype(jnp.float32)
    dw = fft.depthwise_spectrum(k32, (7, 9))
    circ = fft.circulant_spectrum(k64, (7, 9))
    assert dw.shape == (7, 5, CHANNELS) and dw.dtype == jnp.complex64
    assert circ.shape == (7, 9, CHANNELS // 2 + 1) and circ.dtype == jnp.complex128


def test_jit_vmap_and_traced_h():
    """Operators work under jit and vmap; a traced negative h is not checked (no error)."""
    x, kernel = _data((7, 9), (3, 3))
    solve = jax.jit(fft.implicit_diffusion_solve)
    np.testing.assert_allclose(
        solve(x, kernel, 0.5), fft.implicit_diffusion_solve(x, kernel, 0.5), atol=1e-13
    )
    solve(x, kernel, -0.5)  # traced h: no concrete value to check
    batched = jax.vmap(fft.depthwise_conv, in_axes=(None, 0))(x, jnp.stack([kernel, 2 * kernel]))
    np.testing.assert_allclose(batched[1], 2 * fft.depthwise_conv(x, kernel), atol=1e-12)


# --------------------------------------------------------------------------- errors

BAD_INPUTS = [
    ((1, 4, 6, 2), (5, 3, 2), np.float64, "kernel height 5 is larger than the image height 4"),
    ((1, 6, 4, 2), (3, 5, 2), np.float64, "kernel width 5 is larger than the image width 4"),
    ((1, 2, 6, 6, 2), (3, 3, 3, 2), np.float64, "kernel depth 3 is larger"),
    ((1, 6, 6, 2), (3, 3, 3), np.float64, "kernel has 3 channels but the input has 2"),
    ((6, 6), (3, 2), np.float64, "x must be"),
    ((1, 6, 6, 2), (3, 2), np.float64, "kernel must have rank 3"),
    ((1, 6, 6, 2), (3, 3, 2), np.int32, "floating point"),
]


@pytest.mark.parametrize("name", sorted(ALL_OPS))
@pytest.mark.parametrize("x_shape, k_shape, dtype, message", BAD_INPUTS)
def test_bad_inputs_raise(name, x_shape, k_shape, dtype, message):
    """Shape, rank and dtype errors are ValueErrors that name the problem."""
    x, kernel = jnp.zeros(x_shape, dtype), jnp.zeros(k_shape, dtype)
    with pytest.raises(ValueError, match=message):
        ALL_OPS[name](x, kernel)


@pytest.mark.parametrize("name", sorted(ALL_OPS))
def test_dtype_mismatch_raises(name):
    """x and kernel must share one floating dtype."""
    x, kernel = jnp.zeros((1, 6, 6, 2), jnp.float32), jnp.zeros((3, 3, 2), jnp.float64)
    with pytest.raises(ValueError, match="dtype mismatch"):
        ALL_OPS[name](x, kernel)


def test_negative_h_raises():
    """A concrete h < 0 is rejected before any FFT is traced."""
    x, kernel = _data((6, 6), (3, 3))
    with pytest.raises(ValueError, match="h must be >= 0"):
        fft.implicit_diffusion_solve(x, kernel, -0.1)
    with pytest.raises(ValueError, match="h must be >= 0"):
        fft.implicit_diffusion_solve(x, kernel, jnp.array([0.1, -1.0, 0.0]))

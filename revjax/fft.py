r"""Low-cost convolutions with periodic boundaries, computed by FFT (Ephrath, Eliasof, Ruthotto,
Haber, Treister 2019, arXiv:1805.07821, Sec. 3).

These are the cheap operators of Ephrath, Treister, Haber & Ruthotto (LeanResNet): a
depthwise stencil :math:`K_{dw}`, its implicit diffusion solve, and the block-circulant
operator :math:`K_{circ}`. In revjax they parameterise the :math:`K` of the reversible
:math:`K^T \sigma(K \cdot)` blocks (this library's use of the operators, not in the paper); none of
them is reversible on its own.

Convention (deep learning, not signal processing). Every operator is a *cross-correlation*
with a stencil anchored at ``r = (k - 1) // 2`` on each spatial axis of size ``n``:

.. math::

    (w \star x)[p] = \sum_a w[a] \, x[(p + a - r) \bmod n],

which is exactly ``lax.conv_general_dilated`` (stride 1, ``VALID``) applied to
``jnp.pad(x, ((r, k - 1 - r), ...), mode="wrap")``. For odd ``k`` the anchor is the centre
``k // 2``; even ``k`` is accepted and follows XLA's ``"SAME"`` split (one more tap after the
anchor than before it), so the wrap-padded ``lax`` reference above holds for every size.

Operators, per sample, with ``x`` of shape ``(*spatial, C)``:

* depthwise:  :math:`(K_{dw} x)_c = w_c \star x_c`  (kernel ``(*k, C)``, one stencil per
  channel; ``feature_group_count=C`` in ``lax``).
* implicit diffusion solve: :math:`(I + h K_{dw}^T K_{dw})^{-1} x`.
* block-circulant: :math:`(K_{circ} x)_i = \sum_j C_{(j - i) \bmod C} \star x_j`
  (kernel ``(*k, C)``; slice ``[..., d]`` is the stencil :math:`C_d`).

FFT formulas (Ephrath et al. 2019, Sec. 3.2, Eq. 10). A periodic cross-correlation is a circular
convolution with the kernel ``c`` obtained by embedding tap ``a`` at index ``(r - a) mod n`` (the
first column ``C e_1`` of the circulant matrix), so with :math:`F` the DFT over the spatial axes

.. math::

    K_{dw} x = F^{-1}\big(F(c) \odot F(x)\big), \qquad
    K_{dw}^T y = F^{-1}\big(\overline{F(c)} \odot F(y)\big),

    (I + h K_{dw}^T K_{dw})^{-1} x = F^{-1}\Big(\frac{F(x)}{1 + h \, |F(c)|^2}\Big).

The block-circulant operator is the same correlation over the axes ``(*spatial, C)``, with
channel "stencil" ``d \mapsto C_d`` anchored at 0, hence a ``(len(spatial) + 1)``-D FFT whose
channel slice ``i`` of :math:`K_{circ} e_1` holds the embedded stencil :math:`C_{(-i) \bmod C}`.
Its adjoint is block-circulant again, with stencils :math:`C_{(-i) \bmod C}` spatially
flipped. Real FFTs (``rfftn``/``irfftn`` with explicit ``s=``) are used throughout; float32
inputs give complex64 spectra and float32 outputs, float64 gives complex128/float64.

Shapes: ``x`` is ``(N, *spatial, C)`` with 1 to 3 spatial axes (NWC, NHWC, NDHWC); kernels are
``(*k, C)`` with ``len(k) == len(spatial)`` and ``k[i] <= spatial[i]``.

Cost (``n`` pixels, ``c`` channels, ``m`` taps per axis, Ephrath et al. 2019, Table 1); the FFT cost
does not depend on the stencil size:

=====================  =========  ==========================  ===========================
operator               weights    direct cost                 FFT cost (this module)
=====================  =========  ==========================  ===========================
fully coupled conv     m²c²       O(n m² c²)                  —
depthwise / adjoint    m²c        O(n m² c)                   O(n c log n)
implicit diffusion     m²c        dense solve                 O(n c log n)
block-circulant        m²c        O(n m² c²)                  O(n c log(n c))
=====================  =========  ==========================  ===========================

Sharding: the FFT axes (spatial axes, plus the channel axis for the block-circulant
operator) must be whole on each device. Shard only the batch axis (or, for the depthwise
operators, the channel axis); an FFT axis split across devices forces XLA to gather it.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "circulant_conv",
    "circulant_conv_adjoint",
    "circulant_spectrum",
    "depthwise_conv",
    "depthwise_conv_adjoint",
    "depthwise_spectrum",
    "implicit_diffusion_solve",
]

_AXIS_NAMES = {1: ("width",), 2: ("height", "width"), 3: ("depth", "height", "width")}


def _check_kernel(kernel: jax.Array, spatial_shape: Sequence[int], channels: int) -> None:
    """Raises ValueError unless ``kernel`` is ``(*k, channels)`` with ``k <= spatial_shape``."""
    nd = len(spatial_shape)
    if nd not in _AXIS_NAMES:
        raise ValueError(f"expected 1 to 3 spatial axes, got {nd}")
    if kernel.ndim != nd + 1:
        raise ValueError(
            f"kernel must have rank {nd + 1} (*spatial, C) for {nd} spatial axes, "
            f"got shape {kernel.shape}"
        )
    if kernel.shape[-1] != channels:
        raise ValueError(
            f"kernel has {kernel.shape[-1]} channels but the input has {channels} channels"
        )
    for name, k, n in zip(_AXIS_NAMES[nd], kernel.shape[:-1], spatial_shape, strict=True):
        if k > n:
            raise ValueError(f"kernel {name} {k} is larger than the image {name} {n}")
        if k < 1:
            raise ValueError(f"kernel {name} must be at least 1, got {k}")
    if not jnp.issubdtype(kernel.dtype, jnp.floating):
        raise ValueError(f"kernel must be floating point, got {kernel.dtype}")


def _check_inputs(x: jax.Array, kernel: jax.Array) -> None:
    """Raises ValueError for ranks, channel counts, kernel sizes or dtypes that do not fit."""
    if x.ndim not in (3, 4, 5):
        raise ValueError(
            f"x must be (N, *spatial, C) with 1 to 3 spatial axes, got shape {x.shape}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be floating point, got {x.dtype}")
    if x.dtype != kernel.dtype:
        raise ValueError(f"dtype mismatch: x is {x.dtype} but kernel is {kernel.dtype}")
    _check_kernel(kernel, x.shape[1:-1], x.shape[-1])


def _check_step(h) -> None:
    """Raises ValueError if a concrete ``h`` is negative; traced ``h`` is not checked.

    The domain of the operator ``(I + h KᵀK)⁻¹`` (positive definite for h ≥ 0), not a network's
    step-size rule: models check their ``h`` with `revjax.integrators.check_step_size` (h > 0).
    """
    try:
        value = np.asarray(h)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    if np.any(value < 0):
        raise ValueError(f"step size h must be >= 0, got {h}")


def _embed(kernel: jax.Array, shape: Sequence[int], anchors: Sequence[int]) -> jax.Array:
    """Circulant first column ``(*shape, *rest)`` of a ``(*k, *rest)`` kernel: tap ``a`` of each
    leading axis goes to ``(anchor - a) mod n`` (no overlaps since ``k <= n``)."""
    axes = zip(kernel.shape[: len(shape)], shape, anchors, strict=True)
    index = np.ix_(*[(r - np.arange(k)) % n for k, n, r in axes])
    rest = kernel.shape[len(shape) :]
    return jnp.zeros((*shape, *rest), kernel.dtype).at[index].set(kernel)


def depthwise_spectrum(kernel: jax.Array, spatial_shape: Sequence[int]) -> jax.Array:
    """Real-FFT spectrum ``F(K_dw e_1)`` of a depthwise periodic cross-correlation.

    Args:
        kernel: ``(*k, C)`` stencils, one per channel, anchored at ``(k - 1) // 2``.
        spatial_shape: image size ``(*spatial,)``, each ``>= k``.

    Returns:
        Complex ``(*spatial[:-1], spatial[-1] // 2 + 1, C)`` spectrum (complex64 for float32).
    """
    _check_kernel(kernel, tuple(spatial_shape), kernel.shape[-1])
    nd = len(spatial_shape)
    column = _embed(kernel, spatial_shape, [(k - 1) // 2 for k in kernel.shape[:nd]])
    return jnp.fft.rfftn(column, s=tuple(spatial_shape), axes=tuple(range(nd)))


def circulant_spectrum(kernel: jax.Array, spatial_shape: Sequence[int]) -> jax.Array:
    """Real-FFT spectrum ``F(K_circ e_1)`` over ``(*spatial, C)`` of the block-circulant operator.

    Args:
        kernel: ``(*k, C)``; slice ``[..., d]`` is the spatial stencil ``C_d``.
        spatial_shape: image size ``(*spatial,)``, each ``>= k``.

    Returns:
        Complex ``(*spatial, C // 2 + 1)`` spectrum (the real FFT runs over channels).
    """
    _check_kernel(kernel, tuple(spatial_shape), kernel.shape[-1])
    shape = (*spatial_shape, kernel.shape[-1])
    anchors = [(k - 1) // 2 for k in kernel.shape[:-1]] + [0]
    return jnp.fft.rfftn(_embed(kernel, shape, anchors), s=shape, axes=tuple(range(len(shape))))


def _apply_spectrum(x: jax.Array, spectrum: jax.Array, num_axes: int) -> jax.Array:
    """``F^{-1}(spectrum ⊙ F(x))`` over axes ``1 .. num_axes`` of ``x``, cast to ``x.dtype``."""
    axes = tuple(range(1, 1 + num_axes))
    shape = x.shape[1 : 1 + num_axes]
    x_hat = jnp.fft.rfftn(x, s=shape, axes=axes)
    return jnp.fft.irfftn(x_hat * spectrum, s=shape, axes=axes).astype(x.dtype)


def depthwise_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Depthwise periodic cross-correlation ``y_c = w_c ⋆ x_c`` by FFT.

    Equal to ``lax.conv_general_dilated`` (``VALID``, ``feature_group_count=C``, kernel
    reshaped to ``(*k, 1, C)``) on ``x`` wrap-padded by ``((k - 1) // 2, k // 2)`` per axis.

    Args:
        x: ``(N, *spatial, C)`` input, 1 to 3 spatial axes (NHWC or NDHWC).
        kernel: ``(*k, C)`` stencils of the same dtype, ``k <= spatial``.

    Returns:
        ``(N, *spatial, C)`` output of ``x``'s dtype.

    >>> x = jnp.ones((1, 4, 4, 2)); w = jnp.ones((3, 3, 2))
    >>> depthwise_conv(x, w).shape
    (1, 4, 4, 2)
    """
    _check_inputs(x, kernel)
    spatial = x.shape[1:-1]
    return _apply_spectrum(x, depthwise_spectrum(kernel, spatial), len(spatial))


def depthwise_conv_adjoint(y: jax.Array, kernel: jax.Array) -> jax.Array:
    """Exact adjoint ``K_dw^T y``: ``<K_dw x, y> = <x, K_dw^T y>``.

    Computed as ``F^{-1}(conj(F(c)) ⊙ F(y))``; for odd ``k`` this is the depthwise
    correlation with every stencil flipped.

    Args:
        y: ``(N, *spatial, C)`` cotangent-shaped input.
        kernel: ``(*k, C)`` stencils of the same dtype.

    Returns:
        ``(N, *spatial, C)`` output of ``y``'s dtype.
    """
    _check_inputs(y, kernel)
    spatial = y.shape[1:-1]
    return _apply_spectrum(y, jnp.conj(depthwise_spectrum(kernel, spatial)), len(spatial))


def implicit_diffusion_solve(x: jax.Array, kernel: jax.Array, h) -> jax.Array:
    """Implicit diffusion step ``(I + h K_dw^T K_dw)^{-1} x`` per channel by FFT.

    ``F^{-1}(F(x) / (1 + h |F(c)|^2))``; for ``h >= 0`` its spectral norm is ``<= 1``
    (Ephrath et al. 2019, Sec. 3.2.2), and its inverse is multiplication by ``I + h K_dw^T K_dw``.

    Args:
        x: ``(N, *spatial, C)`` input.
        kernel: ``(*k, C)`` stencils of the same dtype.
        h: step size, ``>= 0``; a scalar or an array broadcastable to ``(C,)``. A concrete
            negative value raises; a traced value is not checked.

    Returns:
        ``(N, *spatial, C)`` output of ``x``'s dtype.
    """
    _check_inputs(x, kernel)
    _check_step(h)
    spatial = x.shape[1:-1]
    power = jnp.abs(depthwise_spectrum(kernel, spatial)) ** 2
    h = jnp.asarray(h, power.dtype)
    return _apply_spectrum(x, 1.0 / (1.0 + h * power), len(spatial))


def circulant_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Block-circulant periodic convolution ``y_i = Σ_j C_{(j - i) mod C} ⋆ x_j`` by FFT.

    One ``(len(spatial) + 1)``-D real FFT over ``(*spatial, C)``; ``m²C`` weights couple
    all channels at ``O(nC log(nC))`` cost.

    Args:
        x: ``(N, *spatial, C)`` input, 1 to 3 spatial axes.
        kernel: ``(*k, C)`` of the same dtype; ``kernel[..., d]`` is the stencil ``C_d``.

    Returns:
        ``(N, *spatial, C)`` output of ``x``'s dtype.
    """
    _check_inputs(x, kernel)
    spatial = x.shape[1:-1]
    return _apply_spectrum(x, circulant_spectrum(kernel, spatial), len(spatial) + 1)


def circulant_conv_adjoint(y: jax.Array, kernel: jax.Array) -> jax.Array:
    """Exact adjoint ``K_circ^T y``: ``<K_circ x, y> = <x, K_circ^T y>``.

    Block-circulant again: for odd ``k`` it equals :func:`circulant_conv` with stencils
    ``C_{(-i) mod C}`` spatially flipped (the transpose of a circulant channel coupling).

    Args:
        y: ``(N, *spatial, C)`` input.
        kernel: ``(*k, C)`` of the same dtype.

    Returns:
        ``(N, *spatial, C)`` output of ``y``'s dtype.
    """
    _check_inputs(y, kernel)
    spatial = y.shape[1:-1]
    return _apply_spectrum(y, jnp.conj(circulant_spectrum(kernel, spatial)), len(spatial) + 1)

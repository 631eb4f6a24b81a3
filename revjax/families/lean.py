r"""Low-cost convolution steps of LeanResNet (Ephrath, Eliasof, Ruthotto, Haber, Treister 2019,
arXiv:1805.07821).

Six step types share one ResNet skeleton (Ephrath et al. 2019, Sec. 3, Eqs. 5-9). With ``y`` of
shape ``(N, H, W, c)`` (NHWC, ``C_in = C_out = c``), ``m x m`` stencils, ``N`` = BatchNorm and
``σ`` = ReLU:

=============  ===========================================================  ===================
step           map                                                          weights (+ BN)
=============  ===========================================================  ===================
resnet         y + K₂ σ(N(K₁ y)),  K₁, K₂ full ``m x m`` convs               2m²c² (+2c)
mobilenet      σ(N(M σ(N(K_dw y))))                                         m²c + c² (+4c)
linear_mix     y + K_lm,2 σ(N(K_lm,1 y)),  K_lm = K_dw + M (diag(M) = 0)     2(m²c + c² − c) (+2c)
explicit_rd    y + h(−K_dwᵀ K_dw y + σ(N(M y)))                             m²c + c² (+2c)
implicit_rd    (I + h K_dwᵀ K_dw)⁻¹ (y + h σ(N(M y)))                       m²c + c² (+2c)
circular_rd    y + h(−K_circᵀ K_circ y + σ(N(M y)))                         m²c + c² (+2c)
=============  ===========================================================  ===================

``K_dw`` is a depthwise conv (one stencil per channel, kernel ``(m, m, c)``), ``M`` a 1x1 conv
(``c x c`` matrix, ``u ↦ u @ M``), ``K_circ`` the block-circulant operator of
:mod:`revjax.fft`. No convolution has a bias.

LinearMix. ``K_lm = K_dw + M`` is a full conv whose off-centre taps are zero off the channel
diagonal. The diagonal of ``M`` duplicates the centre tap of ``K_dw``, so ``M`` is stored as its
``c(c − 1)`` off-diagonal entries (:func:`off_diagonal`): ``m²c + c² − c`` weights per ``K_lm``,
applied at cost ``O(n(m²c + c²))`` (a depthwise conv plus a 1x1 mix, never a full conv).

Boundary conditions. The three reaction-diffusion (RD) steps use the FFT operators of
:mod:`revjax.fft`, hence *periodic* boundaries (as in the paper); their ``K_dwᵀ`` is the exact
adjoint of that periodic operator. The ResNet, MobileNet and LinearMix steps (and the
connecting layers of the reference networks) use direct convolutions with *zero* ``"SAME"``
padding, the usual deep-learning convention.

Step size. The paper does not state ``h``; ``DEFAULT_H = 0.1`` is a module field. The explicit
diffusion step ``y ↦ y − h KᵀK y`` is stable when ``h λ_max(KᵀK) ≤ 2`` (Ephrath et al. 2019,
Sec. 3.2.1: "h small enough"). With the depthwise initialisation used here (truncated normal,
std ``1/m``) ``λ_max(K_dwᵀK_dw)`` ≈ 6 to 9 for B's blocks, so ``h λ_max`` < 1 at initialisation.
``K_circ`` couples all ``c`` channels; the circular RD step and the circulant Hamiltonian force
store its stencils at std ``1/m`` and apply them divided by ``√c`` (:func:`circulant_stencils`
says why), which keeps the RD step's ``h λ_max`` at 0.45 to 2.2 over 30 Adam steps. The implicit
step is stable for every ``h ≥ 0``.

Reversible use (this library's extension, not in the paper). None of the six steps is invertible.
The low-cost operators are instead used as the ``K`` inside the reversible Hamiltonian force
``F(z) = h Kᵀ σ(K z + b)`` (:func:`low_cost_force`, :func:`low_cost_hamiltonian_step`), with
``K = M ∘ K_dw`` (FFT depthwise then 1x1 mix) or ``K = K_circ``, and ``Kᵀ`` the exact adjoint built
from ``revjax.fft.*_adjoint``.

This module is pure (operators, initialisers, parameter counts, the reversible force); the six
steps and the connecting layer as Flax linen modules (``STEP_MODULES``, ``ConnectingLayer``)
are in :mod:`revjax.models.lean`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from revjax import fft, integrators
from revjax.arithmetic import FLOAT, Arithmetic
from revjax.engine import InvertibleStep

__all__ = [
    "DEFAULT_H",
    "STEP_TYPES",
    "LOW_COST_OPERATORS",
    "check_step_type",
    "check_step_input",
    "mix_init",
    "depthwise_init",
    "circulant_stencils",
    "depthwise_zero_pad",
    "channel_mix",
    "channel_mix_adjoint",
    "off_diagonal",
    "step_param_count",
    "low_cost_operator",
    "low_cost_force",
    "low_cost_hamiltonian_step",
    "init_low_cost_force",
]

DEFAULT_H = 0.1
STEP_TYPES = ("resnet", "mobilenet", "linear_mix", "explicit_rd", "implicit_rd", "circular_rd")
LOW_COST_OPERATORS = ("dw_mix", "circulant")


# --------------------------------------------------------------------------- validation


def check_step_input(x: jax.Array, kernel_size: int, dtype, where: str) -> int:
    """Raises ValueError for a non-NHWC input, a dtype other than ``dtype`` or a kernel
    larger than the image; returns the channel count."""
    if x.ndim != 4:
        raise ValueError(f"{where}: expected NHWC input (rank 4), got shape {x.shape}")
    if jnp.dtype(x.dtype) != jnp.dtype(dtype):
        raise ValueError(
            f"{where}: dtype mismatch: input is {x.dtype} but the module's dtype is "
            f"{jnp.dtype(dtype)} (pass dtype=... to the module; revjax never promotes silently)"
        )
    if kernel_size < 1:
        raise ValueError(f"{where}: kernel_size must be >= 1, got {kernel_size}")
    for label, size in zip(("height", "width"), x.shape[1:3], strict=True):
        if kernel_size > size:
            raise ValueError(
                f"{where}: kernel {label} {kernel_size} is larger than the image {label} {size}"
            )
    return x.shape[-1]


# --------------------------------------------------------------------------- operators


def depthwise_init(kernel_size: int):
    """Truncated normal, std ``1/m``: ``‖K_dw‖² ≈ (Σ|w|)² ≈ 6`` for a 3x3 stencil."""
    return jax.nn.initializers.truncated_normal(stddev=1.0 / kernel_size)


def circulant_stencils(weights: jax.Array) -> jax.Array:
    """Applied ``K_circ`` stencils of the circular RD step and circulant force: ``weights / √c``.

    The stored weights start at the depthwise std ``1/m`` (:func:`depthwise_init`), so the applied
    stencils have std ``1/(m√c)``. ``K_circ`` sums all ``c`` channels (``c·m²`` weights per output),
    so its spectrum ``F₃(K_circ e₁)`` has ``E|·|² = Σ w² = c m² std²``: at the applied std ``1/m``
    the eigenvalues of ``K_circᵀK_circ`` would grow like ``c`` (``λ_max`` ≈ 336 / 570 / 1590 at c =
    48 / 96 / 192 on 32² / 16² / 8² images, ``h λ_max`` = 34 to 159 at ``h = 0.1``, far beyond the
    explicit stability bound ``h λ_max ≤ 2``); the ``1/√c`` keeps ``λ_max`` at the depthwise level
    (≈ 6 to 9, ``h λ_max`` < 1) at initialisation. Storing ``w`` rather than ``w / √c`` matters
    under Adam, the paper's optimiser (Ephrath et al. 2019, arXiv:1805.07821, Sec. 4): Adam moves
    every weight by about its learning rate whatever the weight's size, and ``K_circ`` sums ``c m²``
    weights per output, so a step aligned with one Fourier mode moves that eigenvalue's root
    ``|F₃(K_circ e₁)|`` by up to ``lr c m²`` on the applied stencils (4.3 at lr 1e-2, c = 48) but
    ``lr √c m²`` (0.6) on the stored ones. With the stencils stored at std ``1/(m√c)``, ``h λ_max``
    of LeanResNet B's circular steps went from < 1 at initialisation to 2 to 64 after 10 Adam steps
    (lr 1e-2, ``h = 0.1``) and 26 to 266 after 30: the explicit step turned unstable and the
    training loss stayed at 2.23 (measured on the built-in digits task, batch 32).

    Args:
        weights: stored ``(m, m, c)`` weights (std ``1/m`` at init).

    Returns:
        ``(m, m, c)`` stencils ``C_d = weights[..., d] / √c``.
    """
    return weights * jnp.asarray(1.0 / weights.shape[-1] ** 0.5, weights.dtype)


def mix_init(channels: int):
    """Truncated normal, std ``sqrt(2/c)``, for a ``(c, c)`` channel mix ``M``."""
    return jax.nn.initializers.truncated_normal(stddev=(2.0 / channels) ** 0.5)


def depthwise_zero_pad(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Depthwise cross-correlation with zero ``"SAME"`` padding, as a sum over the taps.

        y[n, i, j, c] = Σ_{a,b} x_pad[n, i + a, j + b, c] · kernel[a, b, c]

    with ``x`` zero-padded by ``(k−1)//2`` before and ``k−1−(k−1)//2`` after each spatial axis
    (``lax.conv_general_dilated(..., "SAME", feature_group_count=c)`` exactly, up to the
    order of the float additions). Written as ``k_h·k_w`` shifted products rather than a
    grouped convolution because XLA:CPU's grouped convolution is slow: forward and backward at
    batch 32, 32x32, 3x3, 16 to 64 channels, it took 4 to 8.5 times as long on a 2-core CPU
    (``experiments/fft_conv_benchmark.py --grad``), and the ``lean_b_mobilenet`` training step
    2.0 to 2.5 times as long.

    Args:
        x: ``(N, H, W, c)``.
        kernel: ``(k_h, k_w, c)``, one stencil per channel (the layout of :mod:`revjax.fft`).

    Returns:
        ``(N, H, W, c)``.
    """
    c = x.shape[-1]
    if kernel.shape[-1] != c:
        raise ValueError(
            f"depthwise_zero_pad: kernel has {kernel.shape[-1]} channels but the input has {c}"
        )
    if x.ndim != 4:
        raise ValueError(f"depthwise_zero_pad expects (N, H, W, c) inputs, got {x.shape}")
    (kh, kw), (h, w) = kernel.shape[:2], x.shape[1:3]
    pads = [(0, 0)] + [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in (kh, kw)] + [(0, 0)]
    x_pad = jnp.pad(x, pads)
    taps = [x_pad[:, a : a + h, b : b + w, :] * kernel[a, b] for a in range(kh) for b in range(kw)]
    return sum(taps[1:], taps[0])


def channel_mix(x: jax.Array, matrix: jax.Array) -> jax.Array:
    """1x1 convolution ``M``: ``(M x)[..., d] = Σ_c x[..., c] matrix[c, d]``."""
    return jnp.einsum("...c,cd->...d", x, matrix)


def channel_mix_adjoint(y: jax.Array, matrix: jax.Array) -> jax.Array:
    """Exact adjoint ``Mᵀ``: ``(Mᵀ y)[..., c] = Σ_d matrix[c, d] y[..., d]``."""
    return jnp.einsum("...d,cd->...c", y, matrix)


def off_diagonal(entries: jax.Array) -> jax.Array:
    """``(c, c − 1)`` off-diagonal entries -> ``(c, c)`` matrix with a zero diagonal.

    Row ``i`` of ``entries`` fills columns ``0..c−1`` of row ``i`` except column ``i``.
    """
    c = entries.shape[0]
    if entries.shape != (c, c - 1):
        raise ValueError(f"off_diagonal expects shape (c, c - 1), got {entries.shape}")
    rows = jnp.arange(c)[:, None]
    cols = jnp.arange(c - 1)[None, :]
    cols = cols + (cols >= rows)  # skip the diagonal
    return jnp.zeros((c, c), entries.dtype).at[rows, cols].set(entries)


def step_param_count(step: str, channels: int, kernel_size: int = 3, with_bn: bool = True):
    """Closed-form trainable parameter count of one step (table in the module docstring).

    Args:
        step: one of ``STEP_TYPES``.
        channels: ``c``.
        kernel_size: ``m``.
        with_bn: include the BatchNorm scales and offsets (2 per normalised channel).
    """
    c, m2 = channels, kernel_size * kernel_size
    weights, bn_channels = {
        "resnet": (2 * m2 * c * c, c),
        "mobilenet": (m2 * c + c * c, 2 * c),
        "linear_mix": (2 * (m2 * c + c * c - c), c),
        "explicit_rd": (m2 * c + c * c, c),
        "implicit_rd": (m2 * c + c * c, c),
        "circular_rd": (m2 * c + c * c, c),
    }[check_step_type(step)]
    return weights + (2 * bn_channels if with_bn else 0)


def check_step_type(step: str) -> str:
    if step not in STEP_TYPES:
        raise ValueError(f"unknown step type {step!r}; expected one of {STEP_TYPES}")
    return step


# --------------------------------------------------------------------------- reversible use

ForceFn = Callable[..., jax.Array]


def low_cost_operator(kind: str) -> tuple[Callable, Callable]:
    """``(K, Kᵀ)`` as pure ``(params, u) -> v`` for a low-cost ``K`` (periodic, by FFT).

    * ``"dw_mix"``: ``K u = M(K_dw u)`` with params ``{"dw": (m, m, c), "mix": (c, c)}``;
      ``Kᵀ v = K_dwᵀ(Mᵀ v)``.
    * ``"circulant"``: ``K u = K_circ u`` with params ``{"circ": (m, m, c)}``;
      ``Kᵀ = K_circᵀ``.

    Both adjoints are exact: ``<K u, v> = <u, Kᵀ v>``.
    """
    if kind == "dw_mix":

        def op(p, u):
            return channel_mix(fft.depthwise_conv(u, p["dw"]), p["mix"])

        def adjoint(p, v):
            return fft.depthwise_conv_adjoint(channel_mix_adjoint(v, p["mix"]), p["dw"])

    elif kind == "circulant":

        def op(p, u):
            return fft.circulant_conv(u, circulant_stencils(p["circ"]))

        def adjoint(p, v):
            return fft.circulant_conv_adjoint(v, circulant_stencils(p["circ"]))

    else:
        raise ValueError(
            f"unknown low-cost operator {kind!r}; expected one of {LOW_COST_OPERATORS}"
        )
    return op, adjoint


def low_cost_force(kind: str, h: float) -> ForceFn:
    """Pure ``F(params, z, rng) = h Kᵀ σ(K z + b)`` with a low-cost ``K`` (the Hamiltonian force of
    Chang, Meng, Haber, Ruthotto, Begert, Holtham 2018, arXiv:1709.03698).

    ``params`` holds the operator's entries (see :func:`low_cost_operator`) and ``"bias"``,
    shape ``(c,)``; ``z`` is ``(N, H, W, c)``.
    """
    h = integrators.check_step_size(h)
    op, adjoint = low_cost_operator(kind)

    def force(params, z, rng=None):
        return h * adjoint(params, jax.nn.relu(op(params, z) + params["bias"]))

    return force


def low_cost_hamiltonian_step(
    kind: str = "dw_mix", h: float = 1.0, arith: Arithmetic = FLOAT
) -> InvertibleStep:
    """Hamiltonian (Verlet) step with low-cost ``K``; state ``(Y, Z)``, params ``{"F", "G"}``.

    ``Y' = Y + h K_Fᵀ σ(K_F Z + b_F)``, ``Z' = Z − h K_Gᵀ σ(K_G Y' + b_G)``; the exact inverse
    and the fused backward come from ``arith.verlet_step`` (`revjax.arithmetic`: float, or
    fixed point with bit-exact reconstruction and straight-through gradients).
    """
    force = low_cost_force(kind, h)
    return arith.verlet_step(force, force, name=f"lean_hamiltonian_{kind}")


def init_low_cost_force(
    key: jax.Array, kind: str, channels: int, kernel_size: int = 3, dtype=jnp.float32
) -> dict:
    """Parameters of :func:`low_cost_force` for ``c = channels`` (zero bias)."""
    k_op, k_mix = jax.random.split(key)
    shape = (kernel_size, kernel_size, channels)
    params = {"bias": jnp.zeros((channels,), dtype)}
    if kind == "dw_mix":
        params["dw"] = depthwise_init(kernel_size)(k_op, shape, dtype)
        params["mix"] = mix_init(channels)(k_mix, (channels, channels), dtype)
    elif kind == "circulant":
        # Stored at std 1/m, applied divided by √c (circulant_stencils), as in the circular RD
        # step; applied at std 1/m, h²λ_max(K^T K) grows like c (the float32 reconstruction
        # error was 2.6e5 at init).
        params["circ"] = depthwise_init(kernel_size)(k_op, shape, dtype)
    else:
        raise ValueError(
            f"unknown low-cost operator {kind!r}; expected one of {LOW_COST_OPERATORS}"
        )
    return params

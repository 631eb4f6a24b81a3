"""LeanResNet reference networks A, B, C (Ephrath, Eliasof, Ruthotto, Haber, Treister 2019,
arXiv:1805.07821, Sec. 4) and a reversible low-cost Hamiltonian net.

Registered names: ``lean_{a,b,c}_{resnet,mobilenet,linear_mix,explicit_rd,implicit_rd,
circular_rd}`` (18 classifiers, CIFAR-10 by default; pass ``num_classes=100`` for CIFAR-100,
and 96x96 inputs for STL-10: the counts do not depend on the image size) and
``lean_hamiltonian`` / ``lean_hamiltonian_circulant`` (reversible).

The six step types and the connecting layer are the linen modules ``STEP_MODULES`` and
``ConnectingLayer`` below; their operators, equations and closed-form parameter counts are the
pure functions of :mod:`revjax.families.lean`.

Skeleton, for an input ``(N, H, W, 3)`` with ``H, W`` divisible by ``2^len(units)``
(``width = c₀``; ``units = (4, 4, 4)`` or ``(4, 4, 4, 4)``: steps per block)::

    stem      5x5 conv 3 -> c₀ (no bias) + BN + ReLU                (N, H, W, c₀)
    block i   units[i] steps of the chosen type at width cᵢ = c₀ 2^i (N, H/2^i, W/2^i, cᵢ)
    connect   x ↦ avgpool₂ₓ₂(BN([x ; K_dw x]))                      (N, H/2^{i+1}, ..., 2cᵢ)
    head      global average pool + dense                           (N, num_classes)

A and B have 3 blocks (c₀ = 32 and 48), C has 4 (c₀ = 32). A connecting layer follows *every*
block, the last one included: only then do the paper's counts for B on CIFAR-10 vs CIFAR-100
(216K vs 250K) differ by the 384 x 90 + 90 = 34,650 weights of a 384-wide classifier.

Parameter counts (``parameter_table``; printed by ``experiments/lean_parameter_table.py``). Table 2
of the paper is reproduced when BatchNorm scales/offsets are *not* counted (the paper evidently
counts conv and FC weights only): MobileNet and all RD nets A/B/B-100/C-100 give 101,066 / 216,106 /
250,756 / 423,460, printed 101K, 216K, 250K or 251K, 423K (the paper rounds some figures and
truncates others, see ``printed_as``); ResNet B and C match too. The remaining differences are
documented, not fudged:

* LinearMix: the paper's figures (195K, 422K, 456K, 789K) equal ``2(m²c + c²)`` per step, i.e.
  the duplicated centre tap was *not* dropped; here it is (Ephrath et al. 2019, Table 1:
  ``m²c + c² − c``), so ours are ``8 Σᵢ cᵢ`` lower (1.8K for A, 2.7K for B, 3.8K for C).
* ResNet A is 1,555,274 (paper "1.5M": truncated) but ResNet B on CIFAR-100 is 3,528,772,
  which the paper prints as "3.4M", below its own CIFAR-10 figure of 3.5M for a network with
  34,650 *more* weights: no configuration of this skeleton gives that, presumably a typo.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from revjax import arithmetic, engine, fft, integrators, transitions
from revjax.arithmetic import DEFAULT_FRAC_BITS
from revjax.conv import conv
from revjax.drift import ReversibleModel, sow_reconstruction_error
from revjax.families import lean
from revjax.families.lean import (
    DEFAULT_H,
    channel_mix,
    check_step_input,
    circulant_stencils,
    depthwise_init,
    depthwise_zero_pad,
    mix_init,
    off_diagonal,
)
from revjax.models.heads import ClassifierHead, Stem, batch_norm, check_num_classes, conv_init
from revjax.models.registry import CheckedConfig, create, preset, register

__all__ = [
    "ResNetStep",
    "MobileNetStep",
    "LinearMixStep",
    "ExplicitRDStep",
    "ImplicitRDStep",
    "CircularRDStep",
    "STEP_MODULES",
    "ConnectingLayer",
    "NETWORKS",
    "STEPS_PER_BLOCK",
    "PAPER_TABLE2",
    "LeanResNet",
    "LeanHamiltonian",
    "count_weights",
    "parameter_table",
    "printed_as",
]

NETWORKS = {"a": (32, 3), "b": (48, 3), "c": (32, 4)}  # stem width c₀, number of blocks
STEPS_PER_BLOCK = 4  # Ephrath et al. 2019, Sec. 4

# Ephrath et al. 2019, Table 2, parameter counts as printed: (network, num_classes) -> count.
_RD_COUNTS = {("a", 10): 101e3, ("b", 10): 216e3, ("b", 100): 250e3, ("c", 100): 423e3}
PAPER_TABLE2 = {
    "resnet": {("a", 10): 1.5e6, ("b", 10): 3.5e6, ("b", 100): 3.4e6, ("c", 100): 6.3e6},
    "mobilenet": {("a", 10): 101e3, ("b", 10): 216e3, ("b", 100): 251e3, ("c", 100): 423e3},
    "linear_mix": {("a", 10): 195e3, ("b", 10): 422e3, ("b", 100): 456e3, ("c", 100): 789e3},
    "explicit_rd": dict(_RD_COUNTS),
    "implicit_rd": dict(_RD_COUNTS),
    "circular_rd": dict(_RD_COUNTS),
}


# --------------------------------------------------------------------------- step modules


class _LeanModule(nn.Module):
    """Shared fields and helpers (not registered; subclass only)."""

    kernel_size: int = 3
    dtype: jnp.dtype = jnp.float32

    def _bn(self, x, train: bool, name: str):
        return batch_norm(self.dtype, name=name)(x, use_running_average=not train)

    def _depthwise_kernel(self, name: str, c: int):
        m = self.kernel_size
        return self.param(name, depthwise_init(m), (m, m, c), self.dtype)

    def _mix(self, name: str, c: int):
        return self.param(name, mix_init(c), (c, c), self.dtype)


class ResNetStep(_LeanModule):
    """``y + K₂ σ(N(K₁ y))`` with full ``m x m`` convs (zero padding); ``2m²c² + 2c`` params."""

    @nn.compact
    def __call__(self, y: jax.Array, train: bool = False) -> jax.Array:
        c = check_step_input(y, self.kernel_size, self.dtype, "ResNetStep")
        m = self.kernel_size
        k1 = self.param("kernel1", conv_init(m, c), (m, m, c, c), self.dtype)
        k2 = self.param("kernel2", conv_init(m, c), (m, m, c, c), self.dtype)
        return y + conv(nn.relu(self._bn(conv(y, k1), train, "bn")), k2)


class MobileNetStep(_LeanModule):
    """``σ(N(M σ(N(K_dw y))))`` (zero padding); ``m²c + c² + 4c`` params."""

    @nn.compact
    def __call__(self, y: jax.Array, train: bool = False) -> jax.Array:
        c = check_step_input(y, self.kernel_size, self.dtype, "MobileNetStep")
        dw = self._depthwise_kernel("dw_kernel", c)
        mix = self._mix("mix", c)
        u = nn.relu(self._bn(depthwise_zero_pad(y, dw), train, "bn_dw"))
        return nn.relu(self._bn(channel_mix(u, mix), train, "bn_mix"))


class LinearMixStep(_LeanModule):
    """``y + K_lm,2 σ(N(K_lm,1 y))``, ``K_lm u = K_dw u + M_off u``; ``2(m²c + c² − c) + 2c``.

    ``M_off`` has a zero diagonal (stored as ``(c, c − 1)``, see :func:`off_diagonal`) so that
    the centre tap is parameterised once, by ``K_dw``.
    """

    @nn.compact
    def __call__(self, y: jax.Array, train: bool = False) -> jax.Array:
        c = check_step_input(y, self.kernel_size, self.dtype, "LinearMixStep")
        if c < 2:
            raise ValueError(f"LinearMixStep needs at least 2 channels, got {c}")

        def k_lm(u, index):
            dw = self._depthwise_kernel(f"dw_kernel{index}", c)
            off = self.param(f"mix_off{index}", mix_init(c), (c, c - 1), self.dtype)
            return depthwise_zero_pad(u, dw) + channel_mix(u, off_diagonal(off))

        return y + k_lm(nn.relu(self._bn(k_lm(y, 1), train, "bn")), 2)


class _ReactionDiffusion(_LeanModule):
    """Shared RD pieces: step size ``h`` (> 0) and the reaction term ``σ(N(M y))``."""

    h: float = DEFAULT_H

    def __post_init__(self):
        integrators.check_step_size(self.h)
        super().__post_init__()

    def _reaction(self, y, c, train):
        return nn.relu(self._bn(channel_mix(y, self._mix("mix", c)), train, "bn"))


class ExplicitRDStep(_ReactionDiffusion):
    """``y + h(−K_dwᵀ K_dw y + σ(N(M y)))``, periodic FFT depthwise; ``m²c + c² + 2c``."""

    @nn.compact
    def __call__(self, y: jax.Array, train: bool = False) -> jax.Array:
        c = check_step_input(y, self.kernel_size, self.dtype, "ExplicitRDStep")
        dw = self._depthwise_kernel("dw_kernel", c)
        diffusion = fft.depthwise_conv_adjoint(fft.depthwise_conv(y, dw), dw)
        return y + self.h * (self._reaction(y, c, train) - diffusion)


class ImplicitRDStep(_ReactionDiffusion):
    """``(I + h K_dwᵀ K_dw)⁻¹ (y + h σ(N(M y)))`` by FFT (periodic); ``m²c + c² + 2c``."""

    @nn.compact
    def __call__(self, y: jax.Array, train: bool = False) -> jax.Array:
        h = self.h
        c = check_step_input(y, self.kernel_size, self.dtype, "ImplicitRDStep")
        dw = self._depthwise_kernel("dw_kernel", c)
        return fft.implicit_diffusion_solve(y + h * self._reaction(y, c, train), dw, h)


class CircularRDStep(_ReactionDiffusion):
    """``y + h(−K_circᵀ K_circ y + σ(N(M y)))``, block-circulant by FFT; ``m²c + c² + 2c``.

    ``K_circ``'s stencils are the stored weights ``circ_kernel`` (std ``1/m`` at init) times
    ``1/√c``, which keeps the explicit stability bound ``h λ_max(K_circᵀK_circ) ≤ 2`` at
    initialisation and in training (:func:`revjax.families.lean.circulant_stencils`).
    """

    @nn.compact
    def __call__(self, y: jax.Array, train: bool = False) -> jax.Array:
        c = check_step_input(y, self.kernel_size, self.dtype, "CircularRDStep")
        m = self.kernel_size
        weights = self.param("circ_kernel", depthwise_init(m), (m, m, c), self.dtype)
        circ = circulant_stencils(weights)
        diffusion = fft.circulant_conv_adjoint(fft.circulant_conv(y, circ), circ)
        return y + self.h * (self._reaction(y, c, train) - diffusion)


STEP_MODULES: dict[str, type[_LeanModule]] = {
    "resnet": ResNetStep,
    "mobilenet": MobileNetStep,
    "linear_mix": LinearMixStep,
    "explicit_rd": ExplicitRDStep,
    "implicit_rd": ImplicitRDStep,
    "circular_rd": CircularRDStep,
}


class ConnectingLayer(_LeanModule):
    """``x ↦ avg_pool₂ₓ₂(BN([x ; K_dw x]))``: ``(N, H, W, c) -> (N, H/2, W/2, 2c)``.

    ``K_dw`` is a zero-padded depthwise ``m x m`` conv; ``m²c + 4c`` parameters (Ephrath et al.
    2019, Sec. 4).
    """

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = check_step_input(x, self.kernel_size, self.dtype, "ConnectingLayer")
        for label, size in zip(("height", "width"), x.shape[1:3], strict=True):
            if size % 2:
                raise ValueError(
                    f"ConnectingLayer: image {label} {size} is odd; 2x2 average pooling "
                    "needs even sizes (no silent cropping)"
                )
        dw = self._depthwise_kernel("dw_kernel", c)
        u = self._bn(jnp.concatenate([x, depthwise_zero_pad(x, dw)], axis=-1), train, "bn")
        return nn.avg_pool(u, (2, 2), strides=(2, 2))


class LeanResNet(CheckedConfig, nn.Module):
    """Stem, ``len(units)`` blocks of ``units[i]`` low-cost steps, connecting layers, head.

    Attributes:
        step: one of ``revjax.families.lean.STEP_TYPES``.
        width: stem width ``c₀``; block ``i`` runs at ``c₀ 2^i``. A scalar, not per-stage
            ``widths``: each connecting layer ``[x ; K_dw x]`` doubles the width.
        units: steps per block, one entry per block: (4, 4, 4) for A and B, (4, 4, 4, 4)
            for C (4 in the paper).
        num_classes: classifier outputs (10 CIFAR-10 / STL-10, 100 CIFAR-100).
        kernel_size: stencil ``m`` of the steps and connecting layers.
        stem_kernel: 5 in the paper.
        h: RD step size (> 0; ignored by resnet / mobilenet / linear_mix).
        dtype: parameter and computation dtype; inputs must match.

    Input ``(N, H, W, 3)``, output logits ``(N, num_classes)``.
    """

    step: str
    width: int = 32
    units: Sequence[int] = (STEPS_PER_BLOCK,) * 3
    num_classes: int = 10
    kernel_size: int = 3
    stem_kernel: int = 5
    h: float = lean.DEFAULT_H
    dtype: jnp.dtype = jnp.float32

    def check_config(self) -> None:
        """ValueError for a configuration that cannot be built (before any tracing)."""
        lean.check_step_type(self.step)
        check_num_classes(self.num_classes)
        if int(self.width) < 1:
            raise ValueError(f"width must be >= 1, got {self.width}")
        if not len(self.units) or any(int(n) < 1 for n in self.units):
            raise ValueError(f"units must hold >= 1 steps per block, got {tuple(self.units)}")
        integrators.check_step_size(self.h)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        step_cls = STEP_MODULES[self.step]
        step_kwargs = {"kernel_size": self.kernel_size, "dtype": self.dtype}
        if self.step.endswith("_rd"):
            step_kwargs["h"] = self.h
        x = Stem(self.width, kernel_size=self.stem_kernel, dtype=self.dtype)(x, train)
        for block, steps in enumerate(self.units):
            for j in range(steps):
                x = step_cls(**step_kwargs, name=f"block{block}_step{j}")(x, train)
            x = ConnectingLayer(
                kernel_size=self.kernel_size, dtype=self.dtype, name=f"connect{block}"
            )(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.dtype)(x)


class LeanHamiltonian(CheckedConfig, ReversibleModel, nn.Module):
    """Reversible Hamiltonian network whose ``K`` is a low-cost FFT operator (this library's
    extension, not in the paper).

    Body per stage ``s``: ``units[s]`` Verlet steps on the channel halves ``(Y, Z)``,
    ``Y' = Y + h K_Fᵀ σ(K_F Z + b_F)``, ``Z' = Z − h K_Gᵀ σ(K_G Y' + b_G)``, with
    ``K = M ∘ K_dw`` (``operator="dw_mix"``) or ``K = K_circ`` (``"circulant"``), periodic,
    and ``Kᵀ`` the exact adjoint. Stages are joined by the stored (non-invertible) transition
    ``pool_pad`` (2x2 average pool + zero channel padding). Stem: 3x3 conv + BN + ReLU; head:
    BN + ReLU + global average pool + dense. Gradients through the body are computed by
    reconstruction when ``backprop="reversible"``.

    Attributes:
        widths: channels per stage (even, non-decreasing, even differences).
        units: Verlet steps per stage, one entry per stage.
        operator: ``"dw_mix"`` or ``"circulant"``.
        h: step size inside the force (the convention of Chang, Meng, Haber, Ruthotto, Begert,
        Holtham 2018, arXiv:1709.03698).
        kernel_size: stencil ``m``.
        num_classes: classifier outputs.
        backprop: ``"reversible"`` | ``"store"`` | ``"remat"``.
        arithmetic: ``"float"`` or ``"exact"``: int32 fixed-point body states
            (`revjax.arithmetic`): the stem output is encoded, Verlet increments are rounded
            to the 2^−frac_bits grid (bit-exact reconstruction), ``pool_pad`` runs in float
            between stages (a stored transition), and the body output is decoded for the
            head. A fixed-point overflow makes the logits NaN.
        frac_bits: fractional bits of the exact states.
        dtype: parameter and computation dtype.
    """

    widths: Sequence[int] = (32, 64, 128)
    units: Sequence[int] = (4, 4, 4)
    operator: str = "dw_mix"
    h: float = 0.2
    kernel_size: int = 3
    num_classes: int = 10
    backprop: str = "reversible"
    arithmetic: str = "float"
    frac_bits: int = DEFAULT_FRAC_BITS
    dtype: jnp.dtype = jnp.float32

    def check_config(self) -> None:
        """ValueError for a configuration that cannot be built (before any tracing)."""
        engine.check_backprop(self.backprop)
        check_num_classes(self.num_classes)
        if self.operator not in lean.LOW_COST_OPERATORS:
            raise ValueError(
                f"unknown operator {self.operator!r}; expected one of {lean.LOW_COST_OPERATORS}"
            )
        arithmetic.get(self.arithmetic, self.frac_bits)
        widths = tuple(self.widths)
        if not widths or any(w < 2 or w % 2 for w in widths):
            raise ValueError(f"widths must be even and >= 2, got {widths}")
        units = tuple(self.units)
        if len(units) != len(widths) or any(int(n) < 1 for n in units):
            raise ValueError(
                f"units {units} must hold >= 1 Verlet steps for each of the {len(widths)} stages "
                f"(widths {widths})"
            )
        integrators.check_step_size(self.h)
        for a, b in zip(widths, widths[1:]):
            if b < a or (b - a) % 4:
                raise ValueError(
                    f"widths {widths}: each stage must grow by a multiple of 4 channels (each half "
                    "is zero-padded symmetrically)"
                )

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        arith = arithmetic.get(self.arithmetic, self.frac_bits)
        step = engine.Scan(lean.low_cost_hamiltonian_step(self.operator, self.h, arith))
        x = Stem(self.widths[0], kernel_size=3, dtype=self.dtype)(x, train)
        state = tuple(jnp.split(x, 2, axis=-1))
        layers, params = [], []
        for i, width in enumerate(self.widths):
            if i > 0:
                layers.append(arith.stored_transition(transitions.pool_pad_transition(width // 2)))
                params.append(None)
            layers.append(step)
            params.append(self.param(f"stage{i}", self._init_stage, width // 2, self.units[i]))
        observe = partial(sow_reconstruction_error, self)
        (y, z), _ = arith.run(layers, params, state, backprop=self.backprop, observe=observe)
        return ClassifierHead(self.num_classes, dtype=self.dtype)(
            jnp.concatenate([y, z], axis=-1), train
        )

    def _init_stage(self, key: jax.Array, half_width: int, steps: int) -> dict:
        def one(k):
            kf, kg = jax.random.split(k)
            args = (self.operator, half_width, self.kernel_size, self.dtype)
            return {
                "F": lean.init_low_cost_force(kf, *args),
                "G": lean.init_low_cost_force(kg, *args),
            }

        return jax.vmap(one)(jax.random.split(key, steps))


# --------------------------------------------------------------------------- registry


# Field names LeanResNet used before the shared vocabulary.
_RENAMED_RESNET = {
    "features": "width (the stem width c0; stage i runs at width * 2**i)",
    "num_blocks": "units (one entry per stage: num_blocks=3 is units=(4, 4, 4))",
    "steps_per_block": "units (steps per stage: steps_per_block=4, num_blocks=3 is "
    "units=(4, 4, 4))",
    "stem_kernel_size": "stem_kernel",
}
# Networks A, B, C of Ephrath et al. (2019), Sec. 4, with every step type.
for _network, (_width, _num_blocks) in NETWORKS.items():
    for _step in lean.STEP_TYPES:
        register(f"lean_{_network}_{_step}", stages=True, renamed=_RENAMED_RESNET)(
            preset(LeanResNet, step=_step, width=_width, units=(STEPS_PER_BLOCK,) * _num_blocks)
        )

_RENAMED_HAMILTONIAN = {"depth": "units (Verlet steps per stage, one entry per stage)"}
for _name, _operator in [
    ("lean_hamiltonian", "dw_mix"),
    ("lean_hamiltonian_circulant", "circulant"),
]:
    register(_name, stages=True, renamed=_RENAMED_HAMILTONIAN)(
        preset(LeanHamiltonian, operator=_operator)
    )


# --------------------------------------------------------------------------- parameter table


def _is_batch_norm(path) -> bool:
    names = [str(getattr(k, "key", "")) for k in path]
    return any("BatchNorm" in name or name.startswith("bn") for name in names)


def count_weights(params, include_batch_norm: bool = False) -> int:
    """Trainable scalars, by default excluding BatchNorm scales/offsets (the paper's convention).

    Works on concrete arrays and on ``jax.eval_shape`` output (``ShapeDtypeStruct`` leaves).
    """
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return sum(
        math.prod(leaf.shape)
        for path, leaf in leaves
        if include_batch_norm or not _is_batch_norm(path)
    )


def _abstract_params(model: nn.Module, image_size: int):
    x = jnp.zeros((1, image_size, image_size, 3), model.dtype)
    return jax.eval_shape(lambda k: model.init(k, x, train=False), jax.random.key(0))["params"]


def printed_as(count: int, reported: float) -> bool:
    """Whether ``count`` prints as ``reported`` at its precision, rounded *or* truncated.

    The paper prints "1.5M" for 1,555,274 and "250K" for 250,756 (truncated) but "251K" for
    the same 250,756 elsewhere (rounded), so both readings are accepted; the unit is 100K for
    figures of a million or more, else 1K.
    """
    unit = 1e5 if reported >= 1e6 else 1e3
    return reported in (round(count / unit) * unit, (count // unit) * unit)


def parameter_table(image_size: int = 32) -> list[dict]:
    """Parameter counts of the 24 (step, network, classes) entries of Table 2, by eval_shape.

    Returns one dict per entry with keys ``name``, ``num_classes``, ``params`` (all trainable,
    BN included), ``weights`` (BN excluded, the paper's convention), ``paper`` (printed figure),
    ``matches`` (:func:`printed_as`) and ``note`` (why not, if known).
    """
    rows = []
    for step, entries in PAPER_TABLE2.items():
        for (network, num_classes), reported in entries.items():
            name = f"lean_{network}_{step}"
            params = _abstract_params(create(name, num_classes=num_classes), image_size)
            weights = count_weights(params)
            matches = printed_as(weights, reported)
            note = ""
            if step == "linear_mix":
                width, num_blocks = NETWORKS[network]
                undropped = weights + 8 * sum(width * 2**i for i in range(num_blocks))
                note = f"{undropped:,} with the duplicated centre tap kept"
                if printed_as(undropped, reported):
                    note += " (matches)"
            elif not matches:
                note = "differs beyond rounding (see module docstring)"
            rows.append(
                {
                    "name": name,
                    "num_classes": num_classes,
                    "params": count_weights(params, include_batch_norm=True),
                    "weights": weights,
                    "paper": int(reported),
                    "matches": bool(matches),
                    "note": note,
                }
            )
    return rows

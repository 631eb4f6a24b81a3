"""Fully reversible multilevel hyperbolic networks (Peters, Haber, Lensink (2019), "Symmetric
block-low-rank layers for fully reversible multilevel neural networks", arXiv:1912.12137).

Symmetric block-low-rank layer (Peters et al. 2019). With K a stride-1 "SAME" convolution
from C state channels to r ≤ C hidden channels (kernel (k, k, C, r) in 2-D, (k, k, k, C, r)
in 3-D) and K^T its exact adjoint (`revjax.conv.conv_transpose`)::

    f(Y) = −K^T σ(N(K Y + b)),      σ = ReLU,
    N(x)_p = x_p / sqrt(Σ_c x_{p,c}² + ε)   ("tv_norm", ε = 1e-5; or the identity).

Its linearisation −K^T D K is symmetric negative semi-definite with rank ≤ r·n (n voxels): a
block-low-rank matrix in factored form, with k^d·C·r weights instead of k^d·C² for a full
square convolution (`parameter_count_table`).

Two-state hyperbolic propagation (Peters et al. 2019; the leapfrog network of Chang et al.
(2018), arXiv:1709.03698), state (Y_{j−1}, Y_j), zero initial velocity::

    Y_{−1} = Y_0,     Y_{j+1} = 2 Y_j − Y_{j−1} + h² f_j(Y_j)

(`revjax.integrators.leapfrog_step`, exact inverse and fused VJP).

Multilevel, fully reversible network (Peters et al. 2019), an encoder–decoder with `levels` = L
orthonormal Haar coarsenings (`revjax.wavelets`) of *both* states. Units run at levels
0, 1, ..., L, L−1, ..., 0 (2L + 1 units; unit u has `units[level(u)]` leapfrog
steps of rank `ranks[level(u)]`), with channels C_l = width · 2^{d·l} (d = 2 or 3)::

    x (N, *S, c_in) --pad channels--> Y_0 (N, *S, C_0) --duplicate--> (Y_0, Y_0)
      --leapfrog x n_0--> haar --leapfrog x n_1--> haar ... --leapfrog x n_L-->
      haar^{-1} --leapfrog x n_{L-1}--> ... haar^{-1} --leapfrog x n_0--> (Y_{N−1}, Y_N)

Every layer is invertible, so with `transition="reversible"` the whole body is one
`engine.apply` that stores nothing but its output: activation memory is independent of depth
*and* of the number of levels. `transition="stored"` is the block-reversible comparison (RevNet
and Chang et al.): the same maps, but every resolution change is an `engine.Transition`, so
the engine stores both states at its input.

Input lifting. An image has few channels (3) but the state has `width` ≥ 3. We append
width − c_in zero channels (`pad_channels_step`, the injective "inj_pad" of i-RevNet:
Jacobsen, Smeulders, Oyallon (2018), arXiv:1802.07088): its left inverse drops the padded
channels, so the network from the raw image to (Y_{N−1}, Y_N) stays invertible,
`engine.invert` recovers the image, and no stem activation is stored. (A learned stem
convolution would also work but is not invertible and would have to be stored as a
Transition.) The leapfrog forces fill the padded channels from the first step.

Arithmetic: every layer is built through the `Arithmetic` given to `multilevel_layers`
(`revjax.arithmetic`, default float). Under `exact_arithmetic(frac_bits)` each leapfrog
increment is rounded to the 2^−frac_bits grid, and the Haar levels are the integer lifting Haar
(`revjax.integer_haar`: bands scaled by [1/2, 1, 1, 2] in 2-D relative to the orthonormal
Haar): bit-exact reconstruction at any depth, straight-through gradients; damping is refused.

Shapes (2-D NHWC / 3-D NDHWC)::

    input x: (N, H, W, c_in) | (N, D, H, W, c_in), every spatial size divisible by 2**L
    output:  a pair of (N, H, W, width) | (N, D, H, W, width) states

>>> import jax, jax.numpy as jnp
>>> cfg = make_config(spatial_dims=2, in_channels=3, width=4, levels=1, units=2,
...                   ranks=2, h=0.5)
>>> layers = multilevel_layers(cfg)
>>> params = init_multilevel_params(jax.random.key(0), cfg)
>>> x = jnp.ones((1, 8, 8, 3))
>>> y = engine.apply(layers, params, x)
>>> bool(jnp.allclose(engine.invert(layers, params, y), x, atol=1e-4))
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from revjax import engine, integrators, wavelets
from revjax.arithmetic import FLOAT, Arithmetic
from revjax.conv import conv, conv_transpose

__all__ = [
    "NORMS",
    "TRANSITIONS",
    "TV_NORM_EPSILON",
    "MultilevelConfig",
    "tv_norm",
    "symmetric_force",
    "hyperbolic_step",
    "pad_channels_step",
    "make_config",
    "level_channels",
    "unit_levels",
    "check_input",
    "multilevel_layers",
    "init_layer_params",
    "init_multilevel_params",
    "init_unit_params",
    "layer_param_count",
    "parameter_count_table",
]

NORMS = ("tv_norm", "none")
TRANSITIONS = ("reversible", "stored")
TV_NORM_EPSILON = 1e-5  # as in Lensink's HyperNet reference code


# --------------------------------------------------------------- The symmetric block-low-rank layer


def tv_norm(x: jax.Array, eps: float = TV_NORM_EPSILON) -> jax.Array:
    """Per-pixel channel normalisation N(x)_p = x_p / sqrt(Σ_c x_{p,c}² + ε) (no parameters).

    Args:
      x: (N, *S, r).
      eps: ε > 0.

    Returns:
      An array of the shape of x, each pixel's channel vector of norm < 1.
    """
    return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + eps)


def _check_norm(norm: str | None) -> str:
    norm = "none" if norm is None else norm
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS} (or None)")
    return norm


def symmetric_force(norm: str | None = "none"):
    """The pure force f(params, Y, rng) = −K^T σ(N(K Y + b)).

    Args:
      norm: "tv_norm" (HyperNet) or "none"/None (InvertibleNetworks.jl).

    Returns:
      a function of params {"kernel": (k, k, [k,] C, r), optional "bias": (r,)} and
      Y (N, *S, C), returning (N, *S, C). The rng argument is unused (deterministic layer).
    """
    norm = _check_norm(norm)

    def force(params, y, rng=None):
        kernel = params["kernel"]
        z = conv(y, kernel)
        if "bias" in params:
            z = z + params["bias"]
        if norm == "tv_norm":
            z = tv_norm(z)
        return -conv_transpose(jax.nn.relu(z), kernel)

    return force


def hyperbolic_step(
    h: float,
    norm: str | None = "none",
    *,
    damping: float = 0.0,
    name: str = "hyperbolic",
    arith: Arithmetic = FLOAT,
) -> engine.InvertibleStep:
    """Leapfrog (Y_{j−1}, Y_j) -> (Y_j, 2Y_j − Y_{j−1} + h² f(Y_j)), f the symmetric layer."""
    return arith.leapfrog_step(symmetric_force(norm), h, damping=damping, name=name)


def pad_channels_step(
    in_channels: int, width: int, arith: Arithmetic = FLOAT
) -> engine.InvertibleStep:
    """Injective lifting x (N, *S, c_in) -> [x, 0] (N, *S, width); the inverse drops the zeros.

    A left inverse (exact on the image of the forward map). Backward: x = y[..., :c_in] and
    x̄ = ȳ[..., :c_in] (the adjoint of zero-padding is truncation). params = None.
    """
    if not 1 <= in_channels <= width:
        raise ValueError(
            f"cannot lift {in_channels} input channels to a state of width {width}; "
            "need 1 <= in_channels <= width"
        )
    return arith.zero_pad_channels_step(width - in_channels, name="pad_channels")


# ------------------------------ Configuration and validation (all on Python values, before tracing)


class MultilevelConfig(NamedTuple):
    """Static description of a multilevel hyperbolic network (build with `make_config`).

    Attributes:
      spatial_dims: 2 (NHWC images) or 3 (NDHWC videos/volumes).
      in_channels: c_in of the input.
      width: C_0, state channels at full resolution (≥ in_channels).
      levels: L, number of Haar coarsenings (≥ 0).
      units: (L+1,) leapfrog steps of the units at level l (down and up path).
      ranks: (L+1,) hidden channels r_l ≤ C_l of the layers at level l.
      h: step size > 0.
      kernel_size: odd k.
      norm: "tv_norm" or "none".
      use_bias: whether the layers have a bias b ∈ R^r.
      transition: "reversible" (Haar steps) or "stored" (Haar as Transitions).
      damping: telegraph damping γ ≥ 0 (0 in the reference codes; must be 0 when exact).
    """

    spatial_dims: int
    in_channels: int
    width: int
    levels: int
    units: tuple[int, ...]
    ranks: tuple[int, ...]
    h: float
    kernel_size: int = 3
    norm: str = "none"
    use_bias: bool = True
    transition: str = "reversible"
    damping: float = 0.0


def _per_level(value: int | Sequence[int], levels: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int | jnp.integer):
        return (int(value),) * (levels + 1)
    value = tuple(int(v) for v in value)
    if len(value) != levels + 1:
        raise ValueError(
            f"{name} needs one entry per level (levels + 1 = {levels + 1}), got {len(value)}"
        )
    return value


def level_channels(spatial_dims: int, width: int, levels: int) -> tuple[int, ...]:
    """C_l = width · 2^{d·l} for l = 0..L (each Haar level multiplies channels by 2^d)."""
    return tuple(width * 2 ** (spatial_dims * level) for level in range(levels + 1))


def unit_levels(levels: int) -> tuple[int, ...]:
    """Resolution level of each unit of the encoder–decoder: (0, 1, ..., L, ..., 1, 0)."""
    return tuple(range(levels + 1)) + tuple(range(levels - 1, -1, -1))


def make_config(
    *,
    spatial_dims: int,
    in_channels: int,
    width: int,
    levels: int,
    units: int | Sequence[int],
    ranks: int | Sequence[int] | None,
    h: float,
    kernel_size: int = 3,
    norm: str | None = "none",
    use_bias: bool = True,
    transition: str = "reversible",
    damping: float = 0.0,
) -> MultilevelConfig:
    """A validated `MultilevelConfig`; every field error is a ValueError naming the field.

    `units` and `ranks` are an int (same at every level) or one entry per level 0..L. Rank r_l
    must satisfy 1 ≤ r_l ≤ C_l = width · 2^{d·l}; `ranks=None` means r_l = width
    at every level (full rank at level 0, compression 2^{d·l} at level l).
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if not isinstance(levels, int) or levels < 0:
        raise ValueError(f"levels must be an int >= 0, got {levels!r}")
    if not 1 <= in_channels <= width:
        raise ValueError(
            f"width must be >= the {in_channels} input channels (they are zero-padded to the "
            f"state width), got width={width}"
        )
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
    if transition not in TRANSITIONS:
        raise ValueError(f"unknown transition {transition!r}; expected one of {TRANSITIONS}")
    norm = _check_norm(norm)
    h = integrators.check_step_size(h)
    layers = _per_level(units, levels, "units")
    if min(layers) < 1:
        raise ValueError(f"units must be >= 1 at every level, got {layers}")
    ranks = _per_level(width if ranks is None else ranks, levels, "ranks")
    for level, (r, c) in enumerate(zip(ranks, level_channels(spatial_dims, width, levels))):
        if not 1 <= r <= c:
            raise ValueError(
                f"rank {r} at level {level} is out of range: a block-low-rank layer needs "
                f"1 <= r <= C, and level {level} has C = {c} channels"
            )
    if not (math.isfinite(damping) and 0 <= damping * h / 2 < 1):
        raise ValueError(f"damping must satisfy 0 <= damping*h/2 < 1, got {damping}")
    return MultilevelConfig(
        spatial_dims, in_channels, width, levels, layers, ranks, h, kernel_size, norm,
        bool(use_bias), transition, float(damping),
    )  # fmt: skip


def check_input(shape: Sequence[int], config: MultilevelConfig) -> None:
    """Input shape must be (N, H, W, c_in) / (N, D, H, W, c_in) with sizes divisible by 2**L.

    Raises:
      ValueError: wrong rank (4-D vs 5-D), wrong channel count, or an axis that some Haar level
        cannot halve (the message names the axis and the level).
    """
    want = config.spatial_dims + 2
    layout = {2: "NHWC", 3: "NDHWC"}[config.spatial_dims]
    if len(shape) != want:
        raise ValueError(
            f"a {config.spatial_dims}-D hyperbolic network takes {want}-D {layout} inputs, got "
            f"shape {tuple(shape)} ({len(shape)}-D)"
        )
    if shape[-1] != config.in_channels:
        raise ValueError(f"expected {config.in_channels} input channels, got shape {tuple(shape)}")
    wavelets.check_divisible(tuple(shape), config.levels)


# --------------------------------------------------------- The engine layer list and its parameters


def _resolution_change(down: bool, transition: str, arith: Arithmetic) -> engine.Layer:
    step = arith.haar_step() if down else arith.haar_inverse_step()
    if transition == "reversible":
        return step
    return engine.Transition(step.forward, has_aux=step.has_aux, name=f"stored_{step.name}")


def multilevel_layers(config: MultilevelConfig, arith: Arithmetic = FLOAT) -> list[engine.Layer]:
    """The body as engine layers: pad, duplicate, then units separated by Haar (inverse) steps.

    Layer order: pad_channels_step, duplicate_state, Scan(unit 0), haar, Scan(unit 1), ...,
    Scan(unit L), haar^{-1}, ..., Scan(unit 2L), every one built through `arith`. Parameter-free
    layers take params None (`init_multilevel_params` returns the matching list).
    """
    layers = [pad_channels_step(config.in_channels, config.width, arith), arith.duplicate_state()]
    levels = unit_levels(config.levels)
    for u, level in enumerate(levels):
        if u > 0:
            layers.append(_resolution_change(level > levels[u - 1], config.transition, arith))
        step = hyperbolic_step(
            config.h, config.norm, damping=config.damping, name=f"unit{u}", arith=arith
        )
        layers.append(engine.Scan(step, name=f"unit{u}_level{level}"))
    return layers


def init_layer_params(
    key: jax.Array,
    *,
    spatial_dims: int,
    channels: int,
    rank: int,
    depth: int,
    kernel_size: int = 3,
    use_bias: bool = True,
    dtype: Any = jnp.float32,
) -> dict[str, jax.Array]:
    """Stacked parameters of `depth` symmetric layers.

    kernel: (depth, k, ..., k, C, r), normal with std 1/sqrt(k^d · C) (fan-in of K);
    bias: (depth, r), zeros.
    """
    fan_in = kernel_size**spatial_dims * channels
    shape = (depth,) + (kernel_size,) * spatial_dims + (channels, rank)
    params = {"kernel": jax.random.normal(key, shape, dtype) / math.sqrt(fan_in)}
    if use_bias:
        params["bias"] = jnp.zeros((depth, rank), dtype)
    return params


def init_unit_params(
    key: jax.Array, config: MultilevelConfig, unit: int, dtype: Any = jnp.float32
) -> dict[str, jax.Array]:
    """Stacked parameters of unit `unit` (its level's channels, rank and depth)."""
    level = unit_levels(config.levels)[unit]
    channels = level_channels(config.spatial_dims, config.width, config.levels)
    return init_layer_params(
        key,
        spatial_dims=config.spatial_dims,
        channels=channels[level],
        rank=config.ranks[level],
        depth=config.units[level],
        kernel_size=config.kernel_size,
        use_bias=config.use_bias,
        dtype=dtype,
    )


def init_multilevel_params(
    key: jax.Array, config: MultilevelConfig, dtype: Any = jnp.float32
) -> list[Any]:
    """One entry per layer of `multilevel_layers(config)`: None or a unit's stacked params."""
    keys = jax.random.split(key, len(unit_levels(config.levels)))
    params: list[Any] = [None]  # pad_channels_step; then per unit a duplicate_state or Haar step
    for u, unit_key in enumerate(keys):
        params += [None, init_unit_params(unit_key, config, u, dtype)]
    return params


# ----------------------- Parameter counts (Peters et al. 2019: k^d·C·r instead of k^d·C² per layer)


def layer_param_count(
    spatial_dims: int, channels: int, rank: int | None, kernel_size: int = 3
) -> int:
    """Kernel weights of one layer: k^d·C·r (block-low-rank) or k^d·C² (rank None: full)."""
    rank = channels if rank is None else rank
    return kernel_size**spatial_dims * channels * rank


def parameter_count_table(config: MultilevelConfig) -> list[dict[str, int | float]]:
    """Per-level kernel weights, block-low-rank vs full square kernels (biases excluded).

    Returns:
      one dict per level l = 0..L with keys level, channels (C_l), rank (r_l), layers (units at that
      level × units: 2n_l below the coarsest level, n_l at it), low_rank_per_layer (k^d·C_l·r_l),
      full_per_layer (k^d·C_l²), low_rank_total, full_total, compression (C_l / r_l).
    """
    channels = level_channels(config.spatial_dims, config.width, config.levels)
    levels, rows = unit_levels(config.levels), []
    for level, (c, r) in enumerate(zip(channels, config.ranks)):
        n = levels.count(level) * config.units[level]
        low = layer_param_count(config.spatial_dims, c, r, config.kernel_size)
        full = layer_param_count(config.spatial_dims, c, None, config.kernel_size)
        rows.append(
            {
                "level": level,
                "channels": c,
                "rank": r,
                "layers": n,
                "low_rank_per_layer": low,
                "full_per_layer": full,
                "low_rank_total": n * low,
                "full_total": n * full,
                "compression": c / r,
            }
        )
    return rows

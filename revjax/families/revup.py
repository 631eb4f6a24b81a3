"""RevUp: invertible residual networks with Fixup initialisation, no coupling, no batch norm.

Hypothesised design: of "Reversible Fixup Networks for Memory-Efficient Training" (RevUp,
2019) only the abstract is available (an invertible ResNet with Fixup initialisation, no
coupling, no channel split, no batch norm, no extra parameters over the ResNet, memory constant
in depth); the block below is reconstructed from its references. Every block is an i-ResNet
step (Behrmann et al. (2019), arXiv:1811.00995, Section 2) on the *whole* state::

    y = x + g(x),        Lip(g) < 1,

inverted by the Banach fixed-point iteration x_{k+1} = y − g(x_k), x_0 = y, which converges
at the rate ‖x − x_k‖ ≤ L^k/(1−L) ‖g(y)‖ for L = Lip(g). The residual branch is the Fixup
basic block (Zhang, Dauphin, Ma (2019) "Fixup Initialization", arXiv:1901.09321, Section 3)
with spectrally normalised 3x3 convolutions::

    g(x) = s · W2(φ(W1(x + b1a) + b1b) + b2a) + b2b

(the scalar b2a sits *after* φ, before W2, as in the Fixup reference `FixupBasicBlock`; inside
φ it would merge with b1b). W1: C→C_h and W2: C_h→C are softly
normalised to operator norm ≤ c (revjax.spectral_norm), φ = ReLU or ELU (1-Lipschitz), the
scalar biases do not change Lip(g), and the Fixup multiplier is parameterised as

    s = tanh(s_raw) / c,   |s| < 1/c,   so  Lip(g) ≤ |s|·c·c < c < 1

(s is folded into the Lipschitz budget). s_raw starts at atanh(c), i.e. s = 1 exactly
as in Fixup, with a non-zero gradient (a hard clip at 1 would have a dead gradient above it).

Backward pass (fused, as in i-ResNet): reconstruct x by the fixed point (no gradient through the
iteration), then one `jax.vjp(g, x)` at the reconstructed input::

    x̄ = ȳ + J_g(x)^T ȳ,   θ̄ = (∂g/∂θ)^T ȳ.

Gradient accuracy is set by the fixed-point tolerance. `fixed_point_inverse` returns the
achieved residual and iteration count (`FixedPointInfo`); `reconstruction_trace` reports them
for every block exactly as the reversible backward pass meets them. When the iteration does not
converge within `max_iter`, the step's `on_nonconvergence` policy decides:

- "error" (default): the cotangents of that step are replaced by NaN *and* a host callback
  raises `FixedPointNonConvergence`; under `jax.jit` the user sees a `JaxRuntimeError` whose
  message contains "fixed-point inverse did not converge" with the iteration count, achieved
  residual and tolerance. A wrong gradient is never returned silently (if the callback is lost,
  e.g. the gradients are consumed without being waited on, the NaN remains and any finite check
  stops training).
- "flag": the gradient at the last iterate is returned and a `FixedPointWarning` is emitted
  through `jax.debug.callback`; use `reconstruction_trace` to monitor the residuals.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from revjax import engine
from revjax.conv import conv
from revjax.spectral_norm import (
    bilinear_norm_estimate,
    init_power_vector,
    left_vector,
    power_iteration,
    power_iteration_pair,
    soft_normalise,
)
from revjax.transitions import pool_pad

__all__ = [
    "NONCONVERGENCE_POLICIES",
    "ACTIVATIONS",
    "FixedPointInfo",
    "FixedPointNonConvergence",
    "FixedPointWarning",
    "check_fixed_point_config",
    "fixed_point_inverse",
    "fixed_point_residuals",
    "invertible_residual_step",
    "fixup_scale",
    "fixup_scale_raw_init",
    "fixup_branch",
    "init_fixup_branch",
    "init_branch_stats",
    "advance_branch_stats",
    "branch_weights",
    "spectral_fixup_branch",
    "normalise_branch",
    "fixup_downsample_block",
    "init_fixup_downsample",
    "reconstruction_trace",
]

PyTree = Any
NONCONVERGENCE_POLICIES = ("error", "flag")
ACTIVATIONS = {"relu": jax.nn.relu, "elu": jax.nn.elu}
_SCALAR_BIASES = ("b1a", "b1b", "b2a", "b2b")


class FixedPointInfo(NamedTuple):
    """What the fixed-point inverse achieved (leading axes added by scans / vmaps).

    Attributes:
      iterations: () int32, iterations x_{k+1} = y − g(x_k) performed (1 ≤ k ≤ max_iter).
      residual: () float, max over examples i of ‖x_k − x_{k−1}‖_i / ‖y_i‖ at the last step.
      converged: () bool, residual ≤ tol.
    """

    iterations: jax.Array
    residual: jax.Array
    converged: jax.Array


class FixedPointNonConvergence(RuntimeError):
    """Raised (through a host callback) when policy "error" meets a non-converged inverse."""


class FixedPointWarning(RuntimeWarning):
    """Emitted under policy "flag" when a fixed-point inverse did not converge."""


def check_fixed_point_config(max_iter: int, tol: float, on_nonconvergence: str = "error") -> None:
    """max_iter ≥ 1 (an integer), tol > 0, policy in NONCONVERGENCE_POLICIES."""
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not float(tol) > 0.0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    if on_nonconvergence not in NONCONVERGENCE_POLICIES:
        raise ValueError(
            f"on_nonconvergence must be one of {NONCONVERGENCE_POLICIES}, got {on_nonconvergence!r}"
        )


# -------------------------------------------------------------------------- The fixed-point inverse


def _relative_change(delta: jax.Array, y: jax.Array) -> jax.Array:
    """max_i ‖delta_i‖ / ‖y_i‖ over the batch axis 0 (worst example)."""
    axes = tuple(range(1, y.ndim))
    num = jnp.sqrt(jnp.sum(jnp.square(delta), axis=axes))
    den = jnp.sqrt(jnp.sum(jnp.square(y), axis=axes))
    return jnp.max(num / jnp.maximum(den, jnp.finfo(y.dtype).tiny))


def fixed_point_inverse(
    g: Callable[..., jax.Array],
    params: PyTree,
    y: jax.Array,
    *,
    max_iter: int,
    tol: float,
    rng: jax.Array | None = None,
) -> tuple[jax.Array, FixedPointInfo]:
    """x with x + g(x) = y, by x_{k+1} = y − g(x_k) from x_0 = y (`lax.while_loop`).

    Stops after the first k with max_i ‖x_{k} − x_{k−1}‖_i ≤ tol·‖y_i‖ (every example of the
    batch within tolerance; axis 0 is the batch) or at k = max_iter. No gradient flows through
    the iteration (use the engine's backward rule, which differentiates g at the result).

    Args:
      g: (params, x, rng) -> g(x), same shape as x, Lip(g) < 1.
      params: g's parameters.
      y: (N, ...) output of the step.
      max_iter: ≥ 1.
      tol: > 0, relative to ‖y_i‖.
      rng: passed to g unchanged.

    Returns:
      (x, FixedPointInfo(iterations, residual, converged)).
    """
    check_fixed_point_config(max_iter, tol)
    y = lax.stop_gradient(y)
    params = lax.stop_gradient(params)
    tol_ = jnp.asarray(tol, y.dtype)

    def cond(state):
        k, _, res = state
        return jnp.logical_and(k < max_iter, res > tol_)

    def body(state):
        k, x, _ = state
        x_next = y - g(params, x, rng)
        return k + 1, x_next, _relative_change(x_next - x, y)

    init = (jnp.zeros((), jnp.int32), y, jnp.asarray(jnp.inf, y.dtype))
    k, x, res = lax.while_loop(cond, body, init)
    return x, FixedPointInfo(k, res, res <= tol_)


def fixed_point_residuals(
    g: Callable[..., jax.Array],
    params: PyTree,
    y: jax.Array,
    num_iterations: int,
    rng: jax.Array | None = None,
) -> jax.Array:
    """(num_iterations,) residuals d_k = max_i ‖x_k − x_{k−1}‖_i/‖y_i‖, k = 1..num_iterations.

    For Lip(g) = L the contraction gives d_{k+1} ≤ L·d_k, i.e. d_k ≤ L^{k−1} d_1 (Banach
    fixed-point theorem).
    """

    def body(x, _):
        x_next = y - g(params, x, rng)
        return x_next, _relative_change(x_next - x, y)

    _, res = lax.scan(body, y, None, length=num_iterations)
    return res


def _report_nonconvergence(policy: str, info: FixedPointInfo, tol: float, name: str) -> None:
    def host(iterations, residual):
        message = (
            f"{name}: fixed-point inverse did not converge: {int(iterations)} iterations, "
            f"residual {float(residual):.3e} > tol {tol:.1e}. Raise max_iter or tol, lower the "
            "spectral-norm coefficient c, or use backprop='store'"
        )
        if policy == "error":
            raise FixedPointNonConvergence(message + " (cotangents were set to NaN)")
        warnings.warn(message, FixedPointWarning, stacklevel=2)

    lax.cond(
        info.converged,
        lambda: None,
        lambda: jax.debug.callback(host, info.iterations, info.residual),
    )


def invertible_residual_step(
    g: Callable[..., jax.Array],
    *,
    max_iter: int = 100,
    tol: float = 1e-5,
    on_nonconvergence: str = "error",
    name: str = "invertible_residual",
) -> engine.InvertibleStep:
    """y = x + g(x) as an `engine.InvertibleStep` with a fixed-point inverse and fused backward.

    Args:
      g: pure (params, x, rng) -> g(x) with Lip(g) < 1 (the caller's responsibility; see
        `fixup_branch` + `normalise_branch`).
      max_iter, tol: fixed-point budget (see `fixed_point_inverse`).
      on_nonconvergence: "error" | "flag" (module docstring).
      name: used in messages.
    """
    check_fixed_point_config(max_iter, tol, on_nonconvergence)

    def forward(params, x, rng=None):
        return x + g(params, x, rng)

    def inverse(params, y, rng=None):
        return fixed_point_inverse(g, params, y, max_iter=max_iter, tol=tol, rng=rng)[0]

    def backward(params, y, y_bar, rng=None):
        x, info = fixed_point_inverse(g, params, y, max_iter=max_iter, tol=tol, rng=rng)
        _, pullback = jax.vjp(lambda p, u: g(p, u, rng), params, x)
        params_bar, u_bar = pullback(y_bar)
        x_bar = y_bar + u_bar
        _report_nonconvergence(on_nonconvergence, info, tol, name)
        if on_nonconvergence == "error":
            poison = lambda t: jnp.where(info.converged, t, jnp.full_like(t, jnp.nan))  # noqa: E731
            params_bar = jax.tree.map(poison, params_bar)
            x_bar = poison(x_bar)
        return x, params_bar, x_bar

    return engine.InvertibleStep(forward, inverse, backward, name=name)


# ------------------------------------------------------------------------ The Fixup residual branch


def fixup_scale(scale_raw: jax.Array, c: float) -> jax.Array:
    """s = tanh(s_raw)/c: |s| < 1/c, so Lip(g) ≤ |s|·c² < c."""
    return jnp.tanh(scale_raw) / c


def fixup_scale_raw_init(c: float) -> float:
    """s_raw = atanh(c), for which s = 1 (the Fixup initial multiplier)."""
    return math.atanh(c)


def fixup_branch(params: PyTree, x: jax.Array, rng=None, *, activation: str = "relu") -> jax.Array:
    """g(x) = s·W2(φ(W1(x + b1a) + b1b) + b2a) + b2b with already-normalised W1, W2.

    Args:
      params: {"w1": (3,3,C,C_h), "w2": (3,3,C_h,C), "scale", "b1a", "b1b", "b2a", "b2b": ()}.
      x: (N, H, W, C).
      rng: unused (deterministic branch).
      activation: "relu" | "elu".

    Returns:
      (N, H, W, C).
    """
    phi = ACTIVATIONS[activation]
    h = phi(conv(x + params["b1a"], params["w1"]) + params["b1b"])
    return params["scale"] * conv(h + params["b2a"], params["w2"]) + params["b2b"]


def _he_normal(key, shape, scale, dtype):
    """N(0, (2/(k·k·C_out))·scale²): He init in the fan-out convention of the Fixup reference."""
    fan_out = shape[0] * shape[1] * shape[3]
    return (math.sqrt(2.0 / fan_out) * scale * jax.random.normal(key, shape)).astype(dtype)


def init_fixup_branch(
    key: jax.Array, channels: int, hidden: int, num_branches: int, c: float, dtype=jnp.float32
) -> dict:
    """Raw (un-normalised) Fixup branch parameters (Fixup, arXiv:1901.09321, m = 2 layers).

    W1 ~ He-normal(fan_out) × L^{−1/2}, W2 = 0 (so g ≡ 0 and the step is the identity at
    init), s_raw = atanh(c) (s = 1), all scalar biases 0.
    """
    return {
        "w1": _he_normal(key, (3, 3, channels, hidden), num_branches**-0.5, dtype),
        "w2": jnp.zeros((3, 3, hidden, channels), dtype),
        "scale_raw": jnp.asarray(fixup_scale_raw_init(c), dtype),
        **dict.fromkeys(_SCALAR_BIASES, jnp.zeros((), dtype)),
    }


def init_branch_stats(
    key: jax.Array, raw: dict, spatial: Sequence[int], num_iterations: int
) -> dict:
    """Power-iteration state of one branch, warmed up on `raw`.

    Returns {"v1": (1, H, W, C), "u1": (1, H, W, C_h), "v2": (1, H, W, C_h), "u2": (1, H, W, C)}:
    right vectors v_i and left vectors u_i = K_i v_i/‖K_i v_i‖ (`power_iteration_pair`). v2 and
    u2 cannot be warmed on W2 = 0 (any vector is a singular vector of 0); they are random.
    """
    k1, k2, k3, k4 = jax.random.split(key, 4)
    w1, w2 = raw["w1"], raw["w2"]
    stats = {}
    for i, w, ku, kv in ((1, w1, k1, k2), (2, w2, k3, k4)):
        v = init_power_vector(kv, (*spatial, w.shape[2]), w.dtype)
        u = init_power_vector(ku, (*spatial, w.shape[3]), w.dtype)
        v = power_iteration(w, v, num_iterations)
        stats[f"u{i}"], stats[f"v{i}"] = left_vector(w, v, u), v
    return stats


def advance_branch_stats(raw: dict, stats: dict, num_iterations: int) -> dict:
    """`num_iterations` power iterations on W1 and W2, then the matching left vectors (no grad).

    Args:
      raw: one block's raw parameters (`init_fixup_branch`).
      stats: its state (`init_branch_stats`).
      num_iterations: >= 1 (with 0 the state is returned unchanged).
    """
    new = {}
    for i in (1, 2):
        new[f"u{i}"], new[f"v{i}"] = power_iteration_pair(
            raw[f"w{i}"], stats[f"u{i}"], stats[f"v{i}"], num_iterations
        )
    return new


def branch_weights(params: dict, c: float) -> dict:
    """Raw branch parameters + state -> the normalised parameters of `fixup_branch`.

    W̃_i = W_i / max(1, σ̂_i/c) with σ̂_i = u_iᵀ K_i v_i (`bilinear_norm_estimate`, u_i and
    v_i stopped), s = tanh(s_raw)/c; the scalar biases pass through. Differentiable in W_i and
    s_raw; the backward pass of σ̂_i needs only the state vectors u_i, v_i.

    Args:
      params: {"w1", "w2", "scale_raw", "b1a", "b1b", "b2a", "b2b"} (one block, raw) and
        {"u1", "v1", "u2", "v2"} (its power-iteration state).
      c: coefficient in (0, 1).
    """
    out = {k: params[k] for k in _SCALAR_BIASES}
    for i in (1, 2):
        w = params[f"w{i}"]
        sigma = bilinear_norm_estimate(w, params[f"u{i}"], params[f"v{i}"])
        out[f"w{i}"] = soft_normalise(w, sigma, c)
    out["scale"] = fixup_scale(params["scale_raw"], c)
    return out


def spectral_fixup_branch(
    params: dict, x: jax.Array, rng=None, *, c: float, activation: str = "relu"
) -> jax.Array:
    """g(x) = `fixup_branch`(`branch_weights`(params, c), x): normalisation inside the branch.

    Used as the RevUp step's g: each block normalises its own raw weights from its own state,
    so no depth-stacked copy of normalised weights, and no per-convolution K v residual of the
    norm estimate, exists outside the block (the reversible step's memory stays flat in depth).

    Args:
      params: raw parameters and state of one block (see `branch_weights`).
      x: (N, H, W, C).
    """
    return fixup_branch(branch_weights(params, c), x, rng, activation=activation)


def normalise_branch(raw: dict, stats: dict, c: float, num_iterations: int) -> tuple[dict, dict]:
    """Raw branch parameters -> (parameters for `fixup_branch`, updated stats).

    W̃_i = W_i / max(1, σ̂_i/c) after `num_iterations` power iterations (0 at evaluation: the
    state is used as it is), and s = tanh(s_raw)/c (`advance_branch_stats` + `branch_weights`).
    """
    new_stats = advance_branch_stats(raw, stats, num_iterations)
    return branch_weights({**raw, **new_stats}, c), new_stats


# -------------------------------------------------------- Resolution changes and the injective stem


def init_fixup_downsample(
    key: jax.Array, channels: int, out_channels: int, num_branches: int, dtype=jnp.float32
) -> dict:
    """Fixup init of a strided downsampling block (C -> out_channels): W2 = 0, s = 1."""
    return {
        "w1": _he_normal(key, (3, 3, channels, out_channels), num_branches**-0.5, dtype),
        "w2": jnp.zeros((3, 3, out_channels, out_channels), dtype),
        "scale": jnp.ones((), dtype),
        **dict.fromkeys(_SCALAR_BIASES, jnp.zeros((), dtype)),
    }


def fixup_downsample_block(out_channels: int, activation: str = "relu") -> engine.Transition:
    """The Fixup strided block as a stored (non-invertible) transition, (N,H,W,C)->(N,H/2,W/2,C').

    y = s·W2(φ(W1_{stride 2}(x + b1a) + b1b) + b2a) + b2b + pool_pad(x + b1a), where pool_pad
    is the Fixup shortcut (2x2 average pool, zero channels appended symmetrically). Not
    Lipschitz-constrained: its input is stored by the engine.
    """
    phi = ACTIVATIONS[activation]

    def apply(p, x, rng=None):
        u = x + p["b1a"]
        h = phi(conv(u, p["w1"], stride=2) + p["b1b"])
        out = p["scale"] * conv(h + p["b2a"], p["w2"]) + p["b2b"]
        return out + pool_pad(u, out_channels)

    return engine.Transition(apply, name="fixup_downsample")


# -------------------------------- Diagnostics: the fixed points the reversible backward pass solves


def reconstruction_trace(
    layers: Sequence[engine.Layer],
    params: Sequence[PyTree],
    residual_fns: Sequence[Callable[..., jax.Array] | None],
    x: jax.Array,
    *,
    max_iter: int,
    tol: float,
) -> tuple:
    """FixedPointInfo of every fixed-point solve of the reversible backward pass.

    The engine's two sweeps, as `engine.apply(..., backprop="reversible")` runs them:
    `engine.forward_sweep` (which stores each Transition's input), then `engine.reverse_sweep`
    from the output (restarting from the stored input at each Transition), with a step rule
    per layer: layer i's steps are solved by `fixed_point_inverse(residual_fns[i], ...)` when
    layer i is a `Scan` (or step) of `invertible_residual_step(g)` with g = residual_fns[i],
    and inverted by `step.inverse` (`engine.inverse_rule`) when residual_fns[i] is None.

    Returns:
      One entry per layer: a FixedPointInfo with (depth,) leaves for a Scan of residual steps
      (() leaves for a single step), None elsewhere.
    """
    if len(residual_fns) != len(layers):
        raise ValueError(f"{len(layers)} layers but {len(residual_fns)} residual_fns")
    check_fixed_point_config(max_iter, tol)

    def solve_rule(g):
        def rule(step, p, y, rng, _):
            return fixed_point_inverse(g, p, y, max_iter=max_iter, tol=tol, rng=rng)

        return rule

    rules = [engine.inverse_rule if g is None else solve_rule(g) for g in residual_fns]
    y, _, inputs = engine.forward_sweep(layers, params, x)
    _, infos = engine.reverse_sweep(layers, params, y, None, inputs, rules)
    return infos

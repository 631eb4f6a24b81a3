"""The reversible engine: invertible steps as values, and the one `jax.custom_vjp` that runs them.

An invertible step is a small NamedTuple of pure functions (like an optax
`GradientTransformation`)::

    forward(params, x, rng)            -> y          (or (y, aux) when has_aux)
    inverse(params, y, rng)            -> x
    backward(params, y, y_bar, rng)    -> (x, params_bar, x_bar)     optional, "fused"

`x` and `y` are pytrees (a pair of channel halves for couplings, a pair of states for
two-state integrators). `rng` is a PRNG key or None; whatever is random inside a residual
function (dropout) must be drawn from it, so that reconstruction replays it exactly.

A fused `backward` reconstructs the step's input from its output *and* produces the
cotangents in one pass, evaluating each residual function once (the RevNet backward algorithm,
Gomez et al. 2017, arXiv:1707.04585). Steps without
one get the generic rule: x = inverse(y), then `jax.vjp(forward, x)` (one inverse and one
forward: two extra evaluations instead of one).

A network body is a sequence of *layers*:

- an `InvertibleStep`;
- `Scan(step)`: `depth` copies of one step with parameters stacked on a leading axis, run with
  `lax.scan` (compile time independent of depth; the backward pass scans in reverse);
- `Transition(apply)`: a non-invertible map (pooling, strided projection, stem); its *input* is
  stored for the backward pass and reconstruction restarts from it.

`apply(layers, params, x, rngs, backprop=...)` evaluates the sequence with one of three
backward strategies, all giving the same numbers:

- "reversible": one `jax.custom_vjp` over the whole sequence; the forward saves only the final
  output and the inputs of transitions; the backward rebuilds every step's input from its output.
  Activation memory is independent of depth.
- "store": plain autodiff, all intermediate activations stored (the baseline).
- "remat": `jax.checkpoint` around every step (stores each step's input).

Dtype policy: a step computes in the dtype of its input state; every floating parameter leaf
must have that dtype (mismatches are errors, not silent promotions). Reconstruction error grows
with the forward/backward amplification of the network times the unit round-off of that dtype
: use `reconstruction_error` to measure it, `check_reconstruction` to bound it, and
keep states in float32 (not bfloat16) for deep stacks, or use the fixed-point states of
`revjax.fixed_point` (bit-exact reconstruction).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "BACKPROP_MODES",
    "InvertibleStep",
    "Scan",
    "Transition",
    "Layer",
    "apply",
    "apply_with_aux",
    "invert",
    "step_backward",
    "reconstruction_error",
    "check_reconstruction",
    "ReconstructionError",
]

PyTree = Any
BACKPROP_MODES = ("reversible", "store", "remat")


class InvertibleStep(NamedTuple):
    """An invertible map y = forward(params, x, rng) with its exact inverse.

    Attributes:
      forward: (params, x, rng) -> y, or (y, aux) when `has_aux`. `aux` (e.g. batch statistics
        for a running-average update) is returned to the caller once and never recomputed.
      inverse: (params, y, rng) -> x.
      backward: optional fused rule (params, y, y_bar, rng) -> (x, params_bar, x_bar).
      has_aux: whether `forward` returns (y, aux).
      name: for error messages and reports.
    """

    forward: Callable[..., Any]
    inverse: Callable[..., Any]
    backward: Callable[..., Any] | None = None
    has_aux: bool = False
    name: str = "step"


class Scan(NamedTuple):
    """`depth` applications of `step`, parameters (and rngs) stacked on a leading axis."""

    step: InvertibleStep
    name: str = "scan"


class Transition(NamedTuple):
    """A non-invertible layer y = apply(params, x, rng) (or (y, aux)); its input is stored."""

    apply: Callable[..., Any]
    has_aux: bool = False
    name: str = "transition"


Layer = InvertibleStep | Scan | Transition


# --------------------------------------------------------------------------------------------
# Validation (runs on static shapes and dtypes, i.e. before any computation is traced).


def _check_backprop(backprop: str) -> None:
    if backprop not in BACKPROP_MODES:
        raise ValueError(f"unknown backprop mode {backprop!r}; expected one of {BACKPROP_MODES}")


def _float_dtypes(tree: PyTree) -> set:
    return {
        jnp.dtype(leaf.dtype)
        for leaf in jax.tree.leaves(tree)
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)
    }


def _check_dtypes(params: PyTree, x: PyTree, where: str) -> None:
    x_dtypes = _float_dtypes(x)
    if len(x_dtypes) > 1:
        raise ValueError(f"{where}: state leaves have mixed dtypes {sorted(map(str, x_dtypes))}")
    p_dtypes = _float_dtypes(params)
    if x_dtypes and p_dtypes and p_dtypes != x_dtypes:
        raise ValueError(
            f"{where}: parameter dtype(s) {sorted(map(str, p_dtypes))} differ from the state "
            f"dtype {next(iter(x_dtypes))}; cast one of them (revjax never promotes silently)"
        )


def _scan_depth(params: PyTree, rngs: PyTree, name: str) -> int:
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError(f"{name}: a Scan layer needs stacked parameters (none given)")
    depths = {int(jnp.shape(leaf)[0]) if jnp.ndim(leaf) else -1 for leaf in leaves}
    if len(depths) != 1 or -1 in depths:
        raise ValueError(
            f"{name}: stacked parameter leaves disagree on the leading (depth) axis: "
            f"{sorted(depths)}"
        )
    depth = depths.pop()
    if rngs is not None:
        rng_depths = {int(jnp.shape(k)[0]) for k in jax.tree.leaves(rngs)}
        if rng_depths != {depth}:
            raise ValueError(
                f"{name}: {sorted(rng_depths)} rngs for a stack of depth {depth}; pass one key "
                "per step (e.g. jax.random.split(key, depth))"
            )
    return depth


def _validate(layers, params, x, rngs) -> None:
    if len(params) != len(layers):
        raise ValueError(f"{len(layers)} layers but {len(params)} parameter entries")
    if len(rngs) != len(layers):
        raise ValueError(f"{len(layers)} layers but {len(rngs)} rng entries")
    for i, (layer, p, r) in enumerate(zip(layers, params, rngs)):
        if not isinstance(layer, InvertibleStep | Scan | Transition):
            raise TypeError(f"layer {i} is {type(layer).__name__}, not a revjax layer")
        if isinstance(layer, Scan):
            _scan_depth(p, r, f"layer {i} ({layer.name})")
    _check_dtypes(params, x, "apply")


# --------------------------------------------------------------------------------------------
# Single-step primitives.


def _forward_value(layer: InvertibleStep | Transition, params, x, rng=None):
    """The layer's output, ignoring aux."""
    fn = layer.forward if isinstance(layer, InvertibleStep) else layer.apply
    out = fn(params, x, rng)
    return out[0] if layer.has_aux else out


def _forward_with_aux(layer: InvertibleStep | Transition, params, x, rng):
    fn = layer.forward if isinstance(layer, InvertibleStep) else layer.apply
    out = fn(params, x, rng)
    return out if layer.has_aux else (out, None)


def step_backward(step: InvertibleStep, params, y, y_bar, rng):
    """Reconstruct a step's input and pull back cotangents: (x, params_bar, x_bar).

    Uses the step's fused rule when it has one; otherwise x = inverse(y) and the VJP of
    `forward` at the reconstructed x.
    """
    if step.backward is not None:
        return step.backward(params, y, y_bar, rng)
    x = step.inverse(params, y, rng)
    _, pullback = jax.vjp(lambda p, u: _forward_value(step, p, u, rng), params, x)
    params_bar, x_bar = pullback(y_bar)
    return x, params_bar, x_bar


def _scan_forward(step: InvertibleStep, params, x, rngs, checkpoint: bool = False):
    def body(h, inputs):
        p, r = inputs
        return _forward_with_aux(step, p, h, r)

    if checkpoint:
        body = jax.checkpoint(body)
    return lax.scan(body, x, (params, rngs))


def _scan_backward(step: InvertibleStep, params, y, y_bar, rngs):
    def body(carry, inputs):
        h, h_bar = carry
        p, r = inputs
        x, p_bar, x_bar = step_backward(step, p, h, h_bar, r)
        return (x, x_bar), p_bar

    (x, x_bar), params_bar = lax.scan(body, (y, y_bar), (params, rngs), reverse=True)
    return x, params_bar, x_bar


def _scan_inverse(step: InvertibleStep, params, y, rngs):
    def body(h, inputs):
        p, r = inputs
        return step.inverse(p, h, r), None

    x, _ = lax.scan(body, y, (params, rngs), reverse=True)
    return x


# --------------------------------------------------------------------------------------------
# The three backprop strategies.


def _run_autodiff(layers, params, x, rngs, checkpoint: bool):
    auxes = []
    h = x
    for layer, p, r in zip(layers, params, rngs):
        if isinstance(layer, Scan):
            h, aux = _scan_forward(layer.step, p, h, r, checkpoint=checkpoint)
        else:
            fn = _forward_with_aux
            if checkpoint:
                fn = jax.checkpoint(fn, static_argnums=(0,))
            h, aux = fn(layer, p, h, r)
        auxes.append(aux)
    return h, tuple(auxes)


def _run_primal(layers, params, x, rngs):
    """Forward pass keeping only transition inputs: (y, aux, stored)."""
    auxes, stored = [], []
    h = x
    for layer, p, r in zip(layers, params, rngs):
        stored.append(h if isinstance(layer, Transition) else None)
        if isinstance(layer, Scan):
            h, aux = _scan_forward(layer.step, p, h, r)
        else:
            h, aux = _forward_with_aux(layer, p, h, r)
        auxes.append(aux)
    return h, tuple(auxes), tuple(stored)


def _reversible_impl(layers, params, x, rngs):
    y, aux, _ = _run_primal(layers, params, x, rngs)
    return y, aux


def _reversible_fwd(layers, params, x, rngs):
    y, aux, stored = _run_primal(layers, params, x, rngs)
    return (y, aux), (params, rngs, stored, y)


def _reversible_bwd(layers, residuals, cotangents):
    params, rngs, stored, y = residuals
    y_bar, _ = cotangents  # aux outputs (statistics) carry no gradient
    params_bar = [None] * len(layers)
    for i in reversed(range(len(layers))):
        layer, p, r = layers[i], params[i], rngs[i]
        if isinstance(layer, Transition):
            x = stored[i]
            _, pullback = jax.vjp(partial(_forward_value, layer, rng=r), p, x)
            p_bar, x_bar = pullback(y_bar)
        elif isinstance(layer, Scan):
            x, p_bar, x_bar = _scan_backward(layer.step, p, y, y_bar, r)
        else:
            x, p_bar, x_bar = step_backward(layer, p, y, y_bar, r)
        params_bar[i] = p_bar
        y, y_bar = x, x_bar
    rngs_bar = jax.tree.map(_zero_cotangent, rngs)
    return tuple(params_bar), y_bar, rngs_bar


def _zero_cotangent(leaf):
    if jnp.issubdtype(leaf.dtype, jnp.inexact):
        return jnp.zeros_like(leaf)
    return np.zeros(jnp.shape(leaf), dtype=jax.dtypes.float0)


_reversible = jax.custom_vjp(_reversible_impl, nondiff_argnums=(0,))
_reversible.defvjp(_reversible_fwd, _reversible_bwd)


# --------------------------------------------------------------------------------------------
# Public entry points.


def _normalise(layers, params, rngs):
    layers = tuple(layers)
    params = tuple(params)
    rngs = (None,) * len(layers) if rngs is None else tuple(rngs)
    return layers, params, rngs


def apply_with_aux(
    layers: Sequence[Layer],
    params: Sequence[PyTree],
    x: PyTree,
    rngs: Sequence[PyTree] | None = None,
    *,
    backprop: str = "reversible",
) -> tuple[PyTree, tuple]:
    """Run a sequence of layers; returns (y, aux) with one aux entry per layer.

    Args:
      layers: InvertibleStep / Scan / Transition values (static).
      params: one parameter pytree per layer (stacked on axis 0 for a Scan).
      x: the input state pytree.
      rngs: None, or one entry per layer: None, a key, or (for a Scan) `depth` stacked keys.
      backprop: "reversible" | "store" | "remat" (see module docstring).
    """
    _check_backprop(backprop)
    layers, params, rngs = _normalise(layers, params, rngs)
    _validate(layers, params, x, rngs)
    if backprop == "reversible":
        return _reversible(layers, params, x, rngs)
    return _run_autodiff(layers, params, x, rngs, checkpoint=backprop == "remat")


def apply(
    layers: Sequence[Layer],
    params: Sequence[PyTree],
    x: PyTree,
    rngs: Sequence[PyTree] | None = None,
    *,
    backprop: str = "reversible",
) -> PyTree:
    """Like `apply_with_aux`, returning only the output state.

    >>> import jax, jax.numpy as jnp
    >>> from revjax import couplings, engine
    >>> step = couplings.additive_coupling(lambda p, u, r: jnp.tanh(u * p), lambda p, u, r: u * p)
    >>> params = ({"F": jnp.full(4, 0.5), "G": jnp.full(4, 0.1)},)
    >>> y = engine.apply([engine.Scan(step)], params, (jnp.ones(4), jnp.ones(4)))
    """
    return apply_with_aux(layers, params, x, rngs, backprop=backprop)[0]


def invert(
    layers: Sequence[Layer],
    params: Sequence[PyTree],
    y: PyTree,
    rngs: Sequence[PyTree] | None = None,
) -> PyTree:
    """x such that apply(layers, params, x) == y, for a sequence with no Transition."""
    layers, params, rngs = _normalise(layers, params, rngs)
    _validate(layers, params, y, rngs)
    h = y
    for layer, p, r in reversed(tuple(zip(layers, params, rngs))):
        if isinstance(layer, Transition):
            raise ValueError(f"cannot invert through non-invertible layer {layer.name!r}")
        h = (
            _scan_inverse(layer.step, p, h, r)
            if isinstance(layer, Scan)
            else layer.inverse(p, h, r)
        )
    return h


# --------------------------------------------------------------------------------------------
# Reconstruction diagnostics.


class ReconstructionError(RuntimeError):
    """Raised by `check_reconstruction` when drift exceeds the user's bound."""


def _as_float(u: jax.Array) -> jax.Array:
    # Integer leaves (fixed-point states, revjax.fixed_point) are squared in float32: an int32
    # square would wrap around. Differences are taken in the integers first (exact).
    return u.astype(jnp.float32) if jnp.issubdtype(u.dtype, jnp.integer) else u


def _relative_error(estimate: PyTree, truth: PyTree) -> jax.Array:
    num = sum(
        jnp.sum(jnp.square(_as_float(a - b)))
        for a, b in zip(jax.tree.leaves(estimate), jax.tree.leaves(truth))
    )
    den = sum(jnp.sum(jnp.square(_as_float(b))) for b in jax.tree.leaves(truth))
    return jnp.sqrt(num / jnp.maximum(den, jnp.finfo(jnp.result_type(den)).tiny))


def reconstruction_error(
    layers: Sequence[Layer],
    params: Sequence[PyTree],
    x: PyTree,
    rngs: Sequence[PyTree] | None = None,
) -> tuple:
    """Relative drift ‖x̂ − x‖/‖x‖ of each reconstructed step input, as the backward pass sees it.

    The forward pass stores every intermediate state; the reconstruction then runs from the
    final output backwards exactly as `backprop="reversible"` does (restarting from the stored
    input at each Transition), and compares. Returns one entry per layer: a scalar for a step,
    a (depth,) array for a Scan (entry j = error of step j's reconstructed input), and 0 for a
    Transition. Errors accumulate towards the network input, so `errors[0]` is the worst.
    """
    layers, params, rngs = _normalise(layers, params, rngs)
    _validate(layers, params, x, rngs)
    inputs = []
    h = x
    for layer, p, r in zip(layers, params, rngs):
        if isinstance(layer, Scan):

            def body(c, inp, step=layer.step):
                y = _forward_value(step, inp[0], c, inp[1])
                return y, c

            h_next, trajectory = lax.scan(body, h, (p, r))
            inputs.append(trajectory)
        else:
            inputs.append(h)
            h_next = _forward_value(layer, p, h, r)
        h = h_next
    errors = [None] * len(layers)
    for i in reversed(range(len(layers))):
        layer, p, r = layers[i], params[i], rngs[i]
        if isinstance(layer, Transition):
            errors[i] = jnp.zeros(())
            h = inputs[i]
        elif isinstance(layer, Scan):

            def body(c, inp, step=layer.step):
                p_j, r_j, true_x = inp
                x_hat = step.inverse(p_j, c, r_j)
                return x_hat, _relative_error(x_hat, true_x)

            h, errs = lax.scan(body, h, (p, r, inputs[i]), reverse=True)
            errors[i] = errs
        else:
            h = layer.inverse(p, h, r)
            errors[i] = _relative_error(h, inputs[i])
    return tuple(errors)


def check_reconstruction(
    layers: Sequence[Layer],
    params: Sequence[PyTree],
    x: PyTree,
    rngs: Sequence[PyTree] | None = None,
    *,
    rtol: float = 1e-4,
) -> float:
    """The worst relative reconstruction error; raises ReconstructionError above `rtol`.

    Call it outside `jit` (e.g. every N training steps) to watch float32/bfloat16 drift; if it
    trips, lower the step size, add weight-smoothness decay, or use float32/float64 states.
    """
    errors = reconstruction_error(layers, params, x, rngs)
    worst = max(float(jnp.max(e)) for e in errors)
    if not worst <= rtol:
        raise ReconstructionError(
            f"reconstruction drift {worst:.3e} exceeds rtol={rtol:.1e}; per-layer maxima: "
            f"{[float(jnp.max(e)) for e in errors]}"
        )
    return worst

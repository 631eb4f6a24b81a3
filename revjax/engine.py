"""The reversible engine: invertible steps as values, and the one `jax.custom_vjp` that runs them.

An invertible step is a NamedTuple of pure functions (like an optax `GradientTransformation`)::

    forward(params, x, rng)            -> y          (or (y, aux) when has_aux)
    inverse(params, y, rng)            -> x
    backward(params, y, y_bar, rng)    -> (x, params_bar, x_bar)     optional, "fused"

`x` and `y` are pytrees (a pair of channel halves for couplings, a pair of states for
two-state integrators). `rng` is a PRNG key or None; whatever is random inside a residual
function (dropout) must be drawn from it, so that reconstruction replays it exactly.

A fused `backward` reconstructs the step's input from its output *and* produces the
cotangents in one pass, evaluating each residual function once (Gomez, Ren, Urtasun, Grosse
2017, "The Reversible Residual Network", arXiv:1707.04585, Sec. 3.2, Algorithm 1). Steps without
one get the generic rule: x = inverse(y), then `jax.vjp(forward, x)` (one inverse and one
forward: two extra evaluations instead of one).

A network body is a sequence of *layers*:

- an `InvertibleStep`;
- `Scan(step)`: `depth` copies of one step with parameters stacked on a leading axis, run with
  `lax.scan` (compile time independent of depth; the backward pass scans in reverse; `unroll`
  and `store_every`, which bounds float drift by storing every k-th state: see `Scan`);
- `Transition(apply)`: a non-invertible map (pooling, strided projection, stem); its *input* is
  stored for the backward pass and reconstruction restarts from it.

`apply(layers, params, x, rngs, backprop=...)` evaluates the sequence with one of three
backward strategies, all giving the same numbers:

- "reversible": one `jax.custom_vjp` over the whole sequence; the forward saves only the final
  output and the inputs of transitions; the backward rebuilds every step's input from its output.
  Activation memory is independent of depth (with `Scan.store_every=k`, depth/k states).
- "store": plain autodiff, all intermediate activations stored (the baseline).
- "remat": `jax.checkpoint` around every step (stores each step's input).

All of them are two sweeps over the layers: `forward_sweep` (input to output) and
`reverse_sweep` (output to input, restarting at each Transition from its stored input). The
custom VJP, `invert` and `reconstruction_error` are `reverse_sweep` with different per-step
rules, and any other diagnostic of the reconstruction (e.g. the fixed-point solves of an
i-ResNet step) should be written the same way rather than re-implementing the walk.

Dtype policy: a step computes in the dtype of its input state; every floating parameter leaf
must have that dtype (mismatches are errors, not silent promotions). Reconstruction error grows
with the forward/backward amplification of the network times the unit round-off of that dtype
(Chang, Meng, Haber, Ruthotto, Begert, Holtham 2018, arXiv:1709.03698, "Reversible
architectures and stability": an unstable network makes single-precision reconstruction grossly
inaccurate; `experiments/reconstruction_drift.py` measures it for this library). Use
`reconstruction_error` to measure it, `check_reconstruction` to bound it, and keep states in
float32 (not bfloat16) for deep stacks, or use the fixed-point states of `revjax.fixed_point`
(bit-exact reconstruction at any depth).
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
    "call_layer",
    "check_backprop",
    "forward_sweep",
    "reverse_sweep",
    "inverse_rule",
    "restart_at_transition",
    "reconstruction_error",
    "store_every",
    "check_store_every",
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
    """`depth` applications of `step`, parameters (and rngs) stacked on a leading axis.

    Attributes:
      step: the InvertibleStep applied at every depth index.
      name: for error messages and reports.
      unroll: `lax.scan`'s unroll factor for every sweep over this stack (forward, and the reverse
        sweep of the reversible backward pass): a positive int (k steps per loop iteration) or True
        (fully unrolled, compile time grows with depth). Numerics are unchanged.
      store_every: None (store nothing), or k >= 1: the reversible forward stores the state entering
        steps 0, k, 2k, ... and the reconstruction restarts from each stored state (an identity
        `Transition` before every k-th step), so drift accumulates over at most k steps. Memory:
        ceil(depth / k) stored states instead of none; the gradients are mathematically the same.
        For float32 stacks too deep to reconstruct accurately (store and remat ignore it).
    """

    step: InvertibleStep
    name: str = "scan"
    unroll: int | bool = 1
    store_every: int | None = None


class Transition(NamedTuple):
    """A non-invertible layer y = apply(params, x, rng) (or (y, aux)); its input is stored."""

    apply: Callable[..., Any]
    has_aux: bool = False
    name: str = "transition"


Layer = InvertibleStep | Scan | Transition


# --------------------------------------------------------------------------------------------
# Validation (runs on static shapes and dtypes, i.e. before any computation is traced).


def check_backprop(backprop: str) -> None:
    """Raises ValueError unless `backprop` is one of BACKPROP_MODES (for models' own checks)."""
    if backprop not in BACKPROP_MODES:
        raise ValueError(f"unknown backprop mode {backprop!r}; expected one of {BACKPROP_MODES}")


def _float_dtypes(tree: PyTree) -> set:
    return {
        jnp.dtype(leaf.dtype)
        for leaf in jax.tree.leaves(tree)
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)
    }


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
        rng_depths = {int(jnp.shape(k)[0]) if jnp.ndim(k) else 0 for k in jax.tree.leaves(rngs)}
        if rng_depths != {depth}:
            raise ValueError(
                f"{name}: {sorted(rng_depths)} rngs for a stack of depth {depth}; pass one key "
                "per step (e.g. jax.random.split(key, depth))"
            )
    return depth


def check_store_every(every: Any, where: str = "store_every") -> None:
    """Raises ValueError unless `every` (`Scan.store_every`) is None or an int >= 1."""
    if every is not None and (
        isinstance(every, bool) or not isinstance(every, int | np.integer) or every < 1
    ):
        raise ValueError(f"{where} must be None or an int >= 1, got {every!r}")


def _check_scan_options(layer: Scan, where: str) -> None:
    """Raises ValueError unless the Scan's unroll is a bool or an int >= 1 and store_every valid."""
    unroll = layer.unroll
    if not isinstance(unroll, bool) and (not isinstance(unroll, int | np.integer) or unroll < 1):
        raise ValueError(f"{where}: Scan unroll must be a positive int or a bool, got {unroll!r}")
    check_store_every(layer.store_every, f"{where}: Scan store_every")


def _normalise(layers, params, rngs):
    """Tuples of layers, params and rngs (one entry per layer), or a TypeError saying why not.

    Catches two easy slips before anything iterates over them: a single layer where a sequence
    is expected (layers are NamedTuples, so `tuple(layer)` would silently yield its fields), and
    a single PRNG key (or key array) as `rngs`.
    """
    if isinstance(layers, Layer):
        raise TypeError(
            f"layers must be a sequence of layers, got a single {type(layers).__name__}; "
            "wrap it (and its params) in a list: apply([layer], [params], x)"
        )
    if rngs is not None and hasattr(rngs, "shape"):
        raise TypeError(
            "rngs must be None or a sequence with one entry per layer, got a single array of "
            f"shape {tuple(rngs.shape)}; e.g. rngs=[key] for one step, or "
            "rngs=[jax.random.split(key, depth)] for one Scan"
        )
    layers = tuple(layers)
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(
                f"layer {i} is {type(layer).__name__}, not a revjax layer "
                "(InvertibleStep, Scan or Transition)"
            )
    return layers, tuple(params), (None,) * len(layers) if rngs is None else tuple(rngs)


def _validate(layers, params, x, rngs) -> None:
    if len(params) != len(layers):
        raise ValueError(f"{len(layers)} layers but {len(params)} parameter entries")
    if len(rngs) != len(layers):
        raise ValueError(f"{len(layers)} layers but {len(rngs)} rng entries")
    for i, (layer, p, r) in enumerate(zip(layers, params, rngs)):
        if isinstance(layer, Scan):
            _check_scan_options(layer, f"layer {i} ({layer.name})")
            _scan_depth(p, r, f"layer {i} ({layer.name})")
    x_dtypes, p_dtypes = _float_dtypes(x), _float_dtypes(params)
    if len(x_dtypes) > 1:
        raise ValueError(f"apply: state leaves have mixed dtypes {sorted(map(str, x_dtypes))}")
    if x_dtypes and p_dtypes and p_dtypes != x_dtypes:
        raise ValueError(
            f"apply: parameter dtype(s) {sorted(map(str, p_dtypes))} differ from the state "
            f"dtype {next(iter(x_dtypes))}; cast one of them (revjax never promotes silently)"
        )


# --------------------------------------------------------------------------------------------
# Single-step primitives.


def call_layer(layer: InvertibleStep | Transition, params, x, rng=None) -> tuple[PyTree, Any]:
    """(y, aux) of one step or transition; aux is None when the layer has none.

    The one place that tells `InvertibleStep.forward` from `Transition.apply`.
    """
    fn = layer.apply if isinstance(layer, Transition) else layer.forward
    out = fn(params, x, rng)
    return out if layer.has_aux else (out, None)


def _forward_value(layer: InvertibleStep | Transition, params, x, rng=None):
    """The layer's output, ignoring aux."""
    return call_layer(layer, params, x, rng)[0]


def step_backward(step: InvertibleStep, params, y, y_bar, rng):
    """Reconstruct a step's input and pull back cotangents: (x, params_bar, x_bar), by the step's
    fused rule when it has one, else x = inverse(y) and the VJP of `forward` at x."""
    if step.backward is not None:
        return step.backward(params, y, y_bar, rng)
    x = step.inverse(params, y, rng)
    _, pullback = jax.vjp(lambda p, u: _forward_value(step, p, u, rng), params, x)
    params_bar, x_bar = pullback(y_bar)
    return x, params_bar, x_bar


def _map_layer(layer: Layer, params, carry, rng, extra, step_rule, transition_rule, reverse):
    """The one dispatch over the layer union.

    An InvertibleStep gets `step_rule(step, params, carry, rng, extra) -> (carry, out)` once; a
    Scan gets it `depth` times through `lax.scan` (params, rng and extra sliced on axis 0,
    outputs stacked; in reverse order when `reverse`); a Transition gets
    `transition_rule(layer, params, carry, rng, extra) -> (carry, out)`.
    """
    if isinstance(layer, Transition):
        return transition_rule(layer, params, carry, rng, extra)
    if isinstance(layer, Scan) and layer.store_every is not None:
        return _map_stored_segments(layer, params, carry, rng, extra, step_rule, transition_rule,
                                    reverse)  # fmt: skip
    if isinstance(layer, Scan):

        def body(c, xs, step=layer.step):
            p, r, e = xs
            return step_rule(step, p, c, r, e)

        return lax.scan(body, carry, (params, rng, extra), reverse=reverse, unroll=layer.unroll)
    return step_rule(layer, params, carry, rng, extra)


def _map_stored_segments(layer: Scan, params, carry, rng, extra, step_rule, transition_rule,
                         reverse):  # fmt: skip
    """`_map_layer` of a `Scan(step, store_every=k)`: one `lax.scan` over the depth in which an
    identity `Transition` precedes every step i with i % k == 0 (segments of k steps, the last
    one shorter if k does not divide the depth).

    `extra` and the result's outs are pairs (stored segment inputs, the steps' own). The forward
    writes each anchor's out into a carried (ceil(depth / k), ...) buffer in place; the reverse
    restarts the carry from the stored input of each anchor it passes (from nothing in `invert`,
    which has nothing stored and so reconstructs through every segment) and gives no anchor
    outs. The steps' extras and outs are stacked on the depth axis as for a plain Scan, written
    by the one scan directly: nested per-segment scans would hold k steps' outs (the parameter
    cotangents) as temporaries, and a ragged tail would copy the whole stack.
    """
    depth = _scan_depth(params, rng, layer.name)
    k = min(layer.store_every, depth)
    anchor = Transition(lambda params, x, rng=None: x, name=f"{layer.name}_stored")
    stored, steps_extra = (None, None) if extra is None else extra
    xs = (jnp.arange(depth), params, rng, steps_extra)

    if reverse:

        def restart(i, c):
            a = jax.tree.map(lambda u: u[i // k], stored)
            return transition_rule(anchor, None, c, None, a)[0]

        def back(c, x):
            i, p, r, e = x
            c, out = step_rule(layer.step, p, c, r, e)
            if stored is not None:
                c = lax.cond(i % k == 0, partial(restart, i), lambda c: c, c)
            return c, out

        carry, outs = lax.scan(back, carry, xs, reverse=True, unroll=layer.unroll)
        return carry, (None, outs)

    def store(i, c, kept):
        c, a = transition_rule(anchor, None, c, None, None)
        return c, jax.tree.map(lambda b, u: b.at[i // k].set(u), kept, a)

    def fwd(state, x):
        i, p, r, e = x
        c, kept = lax.cond(i % k == 0, partial(store, i), lambda c, kept: (c, kept), *state)
        c, out = step_rule(layer.step, p, c, r, e)
        return (c, kept), out

    anchor_out = jax.eval_shape(lambda c: transition_rule(anchor, None, c, None, None)[1], carry)
    segments = -(-depth // k)
    kept = jax.tree.map(lambda s: jnp.zeros((segments, *s.shape), s.dtype), anchor_out)
    (carry, kept), outs = lax.scan(fwd, (carry, kept), xs, unroll=layer.unroll)
    return carry, (kept, outs)


def store_every(layers: Sequence[Layer], every: int | None) -> list[Layer]:
    """`layers` with every Scan's `store_every` set to `every` (None: store nothing), e.g. from
    a model field that bounds float drift in deep stacks."""
    return [layer._replace(store_every=every) if isinstance(layer, Scan) else layer
            for layer in layers]  # fmt: skip


def _stores_segments(layer: Layer) -> bool:
    return isinstance(layer, Scan) and layer.store_every is not None


# --------------------------------------------------------------------------------------------
# The two sweeps: forward (input -> output) and reverse (output -> input).


def forward_sweep(
    layers: Sequence[Layer],
    params: Sequence[PyTree],
    x: PyTree,
    rngs: Sequence[PyTree] | None = None,
    *,
    record_steps: bool = False,
    checkpoint: bool = False,
) -> tuple[PyTree, tuple, tuple]:
    """Run the layers forward: (y, aux, inputs), one aux and one inputs entry per layer.

    `inputs[i]` is layer i's input when layer i is a Transition (the reversible backward pass
    restarts from it); for steps it is None, or with `record_steps` the step's input (a Scan:
    the (depth, ...) trajectory of its steps' inputs), which `reconstruction_error` compares
    against. `checkpoint` wraps every step and transition in `jax.checkpoint` ("remat").
    """
    layers, params, rngs = _normalise(layers, params, rngs)

    def step_rule(step, p, h, r, _):
        y, aux = call_layer(step, p, h, r)
        return y, (aux, h if record_steps else None)

    def transition_rule(layer, p, h, r, _):
        y, aux = call_layer(layer, p, h, r)
        return y, (aux, h)

    if checkpoint:
        step_rule = jax.checkpoint(step_rule, static_argnums=(0,))
        transition_rule = jax.checkpoint(transition_rule, static_argnums=(0,))
    h, auxes, inputs = x, [], []
    for layer, p, r in zip(layers, params, rngs):
        h, out = _map_layer(layer, p, h, r, None, step_rule, transition_rule, False)
        if _stores_segments(layer):  # out: ((None, stored segment inputs), the steps' outs)
            (_, stored), (aux, inp) = out
            inp = (stored, inp)
        else:
            aux, inp = out
        auxes.append(aux)
        inputs.append(inp)
    return h, tuple(auxes), tuple(inputs)


def inverse_rule(step: InvertibleStep, params, y, rng, _=None):
    """Step rule of `reverse_sweep` that inverts: (x = step.inverse(params, y, rng), None)."""
    return step.inverse(params, y, rng), None


def restart_at_transition(layer: Transition, params, carry, rng, stored_input):
    """Transition rule of `reverse_sweep`: the carry restarts from the stored input (no output)."""
    return stored_input, None


def reverse_sweep(
    layers: Sequence[Layer],
    params: Sequence[PyTree],
    carry: PyTree,
    rngs: Sequence[PyTree] | None,
    inputs: Sequence[PyTree],
    step_rule: Callable[..., tuple] | Sequence[Callable[..., tuple]] = inverse_rule,
    transition_rule: Callable[..., tuple] = restart_at_transition,
) -> tuple[PyTree, tuple]:
    """Walk the layers from last to first, rebuilding each input from its output.

    This is the reconstruction of the reversible backward pass (Gomez et al. 2017,
    "The Reversible Residual Network", arXiv:1707.04585, Sec. 3.2 and Algorithm 1): with
    y_L the network output, x_i = f_i⁻¹(y_i) for every invertible step, and at a
    non-invertible transition the sweep restarts from its input stored by `forward_sweep`.

    Args:
      layers, params, rngs: as for `apply`.
      carry: what flows from output to input, starting at the network output (a state, or
        (state, cotangent) for the VJP).
      inputs: one entry per layer, as returned by `forward_sweep`: a Transition's stored input, and
        for steps an `extra` handed to the step rule (None, or the true inputs, stacked for a Scan).
      step_rule: `(step, params, carry, rng, extra) -> (carry, out)` for one invertible step (mapped
        by `lax.scan` in reverse over a Scan), or one rule per layer. Default `inverse_rule`.
      transition_rule: `(transition, params, carry, rng, stored_input) -> (carry, out)`.
        Default `restart_at_transition`.

    Returns:
      (carry at the network input, outs): one `out` per layer (stacked on a leading depth axis
      for a Scan).
    """
    layers, params, rngs = _normalise(layers, params, rngs)
    rules = (step_rule,) * len(layers) if callable(step_rule) else tuple(step_rule)
    if len(rules) != len(layers) or len(inputs) != len(layers):
        raise ValueError(
            f"{len(layers)} layers but {len(rules)} step rules and {len(inputs)} inputs entries"
        )
    outs = [None] * len(layers)
    for i in reversed(range(len(layers))):
        carry, outs[i] = _map_layer(
            layers[i], params[i], carry, rngs[i], inputs[i], rules[i], transition_rule, True
        )
        if _stores_segments(layers[i]):
            outs[i] = outs[i][1]  # the steps' outs; the stored segment inputs have none
    return carry, tuple(outs)


# --------------------------------------------------------------------------------------------
# The reversible strategy: one custom_vjp over the whole sequence.


def _backward_step_rule(step, p, carry, r, _):
    y, y_bar = carry
    x, p_bar, x_bar = step_backward(step, p, y, y_bar, r)
    return (x, x_bar), p_bar


def _backward_transition_rule(layer, p, carry, r, x):
    _, y_bar = carry
    _, pullback = jax.vjp(partial(_forward_value, layer, rng=r), p, x)
    p_bar, x_bar = pullback(y_bar)
    return (x, x_bar), p_bar


def _reversible_impl(layers, params, x, rngs):
    y, aux, _ = forward_sweep(layers, params, x, rngs)
    return y, aux


def _reversible_fwd(layers, params, x, rngs):
    y, aux, stored = forward_sweep(layers, params, x, rngs)
    return (y, aux), (params, rngs, stored, y)


def _reversible_bwd(layers, residuals, cotangents):
    params, rngs, stored, y = residuals
    y_bar, _ = cotangents  # aux outputs (statistics) carry no gradient
    (_, x_bar), params_bar = reverse_sweep(
        layers, params, (y, y_bar), rngs, stored, _backward_step_rule, _backward_transition_rule
    )
    rngs_bar = jax.tree.map(_zero_cotangent, rngs)
    return params_bar, x_bar, rngs_bar


def _zero_cotangent(leaf):
    if jnp.issubdtype(leaf.dtype, jnp.inexact):
        return jnp.zeros_like(leaf)
    return np.zeros(jnp.shape(leaf), dtype=jax.dtypes.float0)


_reversible = jax.custom_vjp(_reversible_impl, nondiff_argnums=(0,))
_reversible.defvjp(_reversible_fwd, _reversible_bwd)


# --------------------------------------------------------------------------------------------
# Public entry points.


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
      layers: a sequence of InvertibleStep / Scan / Transition values (static).
      params: one parameter pytree per layer (stacked on axis 0 for a Scan).
      x: the input state pytree.
      rngs: None, or a sequence of one entry per layer: None, a key, or (Scan) `depth` stacked keys.
      backprop: "reversible" | "store" | "remat" (see module docstring).
    """
    check_backprop(backprop)
    layers, params, rngs = _normalise(layers, params, rngs)
    _validate(layers, params, x, rngs)
    if backprop == "reversible":
        return _reversible(layers, params, x, rngs)
    plain = tuple(store_every(layers, None))  # storing states serves the reversible pass only
    y, aux, _ = forward_sweep(plain, params, x, rngs, checkpoint=backprop == "remat")
    return y, aux


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
    for layer in layers:
        if isinstance(layer, Transition):
            raise ValueError(f"cannot invert through non-invertible layer {layer.name!r}")
    x, _ = reverse_sweep(layers, params, y, rngs, (None,) * len(layers))
    return x


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

    The forward pass stores every intermediate state; the reconstruction then runs from the final
    output backwards exactly as `backprop="reversible"` does (each step's fused `backward` rule when
    it has one, with a zero cotangent, else its `inverse`; restarting from the stored input at each
    Transition), and compares. Returns one entry per layer: a scalar for a step, a (depth,) array
    for a Scan (entry j = error of step j's reconstructed input), and 0 for a Transition. Errors
    accumulate towards the network input, so `errors[0]` is the worst.
    """
    layers, params, rngs = _normalise(layers, params, rngs)
    _validate(layers, params, x, rngs)
    y, _, inputs = forward_sweep(layers, params, x, rngs, record_steps=True)

    def error_rule(step, p, h, r, true_x):
        # The input exactly as the backward pass rebuilds it: the fused rule when the step has
        # one (its reconstruction may be computed differently from `inverse`), else `inverse`.
        if step.backward is None:
            x_hat = step.inverse(p, h, r)
        else:
            x_hat = step.backward(p, h, jax.tree.map(_zero_cotangent, h), r)[0]
        return x_hat, _relative_error(x_hat, true_x)

    def transition_rule(layer, p, h, r, stored_x):
        return stored_x, jnp.zeros(())

    return reverse_sweep(layers, params, y, rngs, inputs, error_rule, transition_rule)[1]


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

"""Arithmetic as a value: the one seam through which families obtain their invertible steps.

A family (`revjax.families.<paper>`) or a model (`revjax.models.<paper>`) never asks whether
its states are floats or fixed-point integers. It receives an `Arithmetic` (like an optax
`GradientTransformation`: a NamedTuple of pure functions built by a factory) and builds every
step, start rule, resampling and stored transition through it::

    arith = arithmetic.get("exact", frac_bits=20)   # or float_arithmetic(), exact_arithmetic(20)
    step = arith.verlet_step(F, G)                  # an engine.InvertibleStep
    y, aux = arith.run([engine.Scan(step)], [params], (y0, z0), backprop="reversible")

Two implementations share the interface:

- `float_arithmetic()`: float states; the steps of `revjax.couplings`, `revjax.integrators`
  and `revjax.transitions` (reconstruction exact up to round-off, see
  `revjax.engine.reconstruction_error`).
- `exact_arithmetic(frac_bits)`: int32 fixed-point states (`revjax.fixed_point.Fixed`); every
  increment is rounded to the 2^−frac_bits grid before it is added, so the reconstruction is
  bit-exact at any depth and the gradients are the straight-through ones (`revjax.fixed_point`,
  `revjax.integer_haar`). `run` encodes the float input, runs the engine, decodes the output
  and makes it NaN on a fixed-point overflow.

Residual functions are written once, `(params, u, rng) -> v` on float `u` (the real value
q·2^−f of a fixed-point state). Two differences are by design: the exact Haar step is the
integer lifting Haar, whose bands are scaled differently from the orthonormal one
(`revjax.integer_haar`), a step with no exact form (a damped leapfrog step) raises
ValueError when it is built, and the exact `run` refuses a `Scan(store_every=k)` (a remedy for
float drift that exact states do not need). Models keep `arithmetic: str` and `frac_bits`
fields for configs and turn them into the value with `get`, in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from revjax import couplings, engine, fixed_point, integer_haar, integrators, transitions
from revjax import space_to_depth as _s2d
from revjax.fixed_point import DEFAULT_FRAC_BITS

__all__ = [
    "ARITHMETICS",
    "DEFAULT_FRAC_BITS",
    "Arithmetic",
    "FLOAT",
    "float_arithmetic",
    "exact_arithmetic",
    "get",
]

PyTree = Any


class Arithmetic(NamedTuple):
    """The step constructors and the runner of one arithmetic (build with `get`).

    Every constructor returns an `engine.InvertibleStep` (or, for `stored_transition`, an
    `engine.Transition`) whose state is a float pytree or a pytree of `fixed_point.Fixed`.

    Attributes:
      name: "float" | "exact" (for messages; code must not branch on it).
      frac_bits: fractional bits of the fixed-point states (None for float).
      encode, decode: float pytree -> state pytree and back (identities for float).
      additive_coupling: (F, G, *, name) -> y1 = x1 + F(x2), y2 = x2 + G(y1).
      leapfrog_step: (force, h, *, damping=0, name) -> (P, C) ↦ (C, 2C − P + h² f(C)).
      midpoint_step: (g, h, *, name) -> (P, C) ↦ (C, P + 2h g(C)).
      duplicate_state: (name) -> Y ↦ (Y, Y).
      euler_start: (fn, scale, *, name) -> Y ↦ (Y, Y + scale·fn(Y)).
      linear_step: (forward_fn, inverse_fn, adjoint_fn=None, name) -> a fixed linear map with
        integer coefficients (permutation, zero padding) on every state leaf.
      haar_step, haar_inverse_step: () -> Haar coarsening (channels ×2^d) and refinement.
      stored_transition: (engine.Transition of float states) -> the Transition on this
        arithmetic's states (its input is stored, so it need not be invertible).
      run: (layers, params, x, *, backprop, rngs, observe) -> (y, aux): the body on the float
        input pytree x, output as floats; aux per layer as in float (overflow flags removed).
        `observe(layers, params, state)` sees the engine's input (e.g. to sow the drift).
      check_overflow: (layers, params, x) -> None, or FixedPointOverflowError naming the layer
        (outside jit; a no-op in float).
    """

    name: str
    frac_bits: int | None
    encode: Callable[[PyTree], PyTree]
    decode: Callable[[PyTree], PyTree]
    additive_coupling: Callable[..., engine.InvertibleStep]
    leapfrog_step: Callable[..., engine.InvertibleStep]
    midpoint_step: Callable[..., engine.InvertibleStep]
    duplicate_state: Callable[..., engine.InvertibleStep]
    euler_start: Callable[..., engine.InvertibleStep]
    linear_step: Callable[..., engine.InvertibleStep]
    haar_step: Callable[[], engine.InvertibleStep]
    haar_inverse_step: Callable[[], engine.InvertibleStep]
    stored_transition: Callable[[engine.Transition], engine.Transition]
    run: Callable[..., tuple[PyTree, tuple]]
    check_overflow: Callable[..., None]

    def additive_coupling_with_stats(self, F, G, *, train: bool, name: str = "additive_coupling"):
        """`additive_coupling` of residual functions returning (v, batch_stats) (BN inside).

        F, G: `(variables, u, rng) -> (v, batch_stats)` (e.g. `revjax.nn.residual_with_stats`).
        In train mode the forward's aux is {"F": stats, "G": stats} (exact arithmetic:
        `fixed_point.ExactAux(overflow, stats)`), the running averages, updated once by the
        forward pass; inverse and backward use the values only, so the reconstruction
        normalises with the forward's batch statistics (same input) and updates nothing.
        """
        plain = self.additive_coupling(_value(F), _value(G), name=name)
        if not train:
            return plain

        def forward(params, x, rng=None):
            stats = {}

            def keep(key, fn):
                def residual(p, u, r=None):
                    v, stats[key] = fn(p, u, r)
                    return v

                return residual

            coupling = self.additive_coupling(keep("F", F), keep("G", G), name=name)
            out = coupling.forward(params, x, rng)
            if plain.has_aux:  # the arithmetic's own aux: an overflow flag
                return out[0], fixed_point.ExactAux(out[1], stats)
            return out, stats

        return engine.InvertibleStep(forward, plain.inverse, plain.backward, True, name)

    def zero_pad_channels_step(self, extra: int, name: str = "zero_pad_channels"):
        """Append `extra` zero channels to every state leaf (i-RevNet inj_pad); inverse crops."""
        return self.linear_step(*transitions._zero_pad_maps(extra), name=name)

    def space_to_depth_step(self) -> engine.InvertibleStep:
        """i-RevNet ψ of every state leaf, (N, H, W, C) -> (N, H/2, W/2, 4C): a permutation."""
        return self.linear_step(_s2d.space_to_depth, _s2d.depth_to_space, name="space_to_depth")

    def verlet_step(self, F, G, *, name: str = "verlet") -> engine.InvertibleStep:
        """Verlet / Hamiltonian Y' = Y + F(Z), Z' = Z − G(Y') (Chang, Meng, Haber, Ruthotto,
        Begert, Holtham 2018, arXiv:1709.03698): the additive coupling with G negated."""
        return self.additive_coupling(F, lambda p, u, rng=None: -G(p, u, rng), name=name)

    def verlet_step_with_stats(self, F, G, *, train: bool, name: str = "verlet"):
        """`verlet_step` of residual functions returning (v, batch_stats) (BN inside F, G)."""

        def negated_G(variables, u, rng=None):
            g, stats = G(variables, u, rng)
            return -g, stats

        return self.additive_coupling_with_stats(F, negated_G, train=train, name=name)


def _value(fn):
    return lambda variables, u, rng=None: fn(variables, u, rng)[0]


def _float_run(layers, params, x, *, backprop="reversible", rngs=None, observe=None):
    y, aux = engine.apply_with_aux(layers, params, x, rngs, backprop=backprop)
    if observe is not None:
        observe(layers, params, x)
    return y, aux


def float_arithmetic() -> Arithmetic:
    """Float states: `revjax.couplings`, `revjax.integrators`, `revjax.transitions`."""
    return Arithmetic(
        name="float",
        frac_bits=None,
        encode=lambda x: x,
        decode=lambda y: y,
        additive_coupling=couplings.additive_coupling,
        leapfrog_step=integrators.leapfrog_step,
        midpoint_step=integrators.midpoint_step,
        duplicate_state=integrators.duplicate_state,
        euler_start=integrators.euler_start,
        linear_step=transitions.orthogonal_step,
        haar_step=transitions.haar_step,
        haar_inverse_step=transitions.haar_inverse_step,
        stored_transition=lambda transition: transition,
        run=_float_run,
        check_overflow=lambda layers, params, x: None,
    )


def _strip_overflow(aux):
    """An exact layer's aux without its overflow flag: ExactAux -> extra, a bare flag -> None."""
    if isinstance(aux, fixed_point.ExactAux):
        return aux.extra
    if hasattr(aux, "dtype") and aux.dtype == jnp.bool_:
        return None
    return aux


def _input_overflow(x: PyTree, frac_bits: int) -> jax.Array:
    flags = [fixed_point.out_of_range(u * 2.0**frac_bits) for u in jax.tree.leaves(x)]
    return jnp.any(jnp.stack(flags))


def _exact_run(
    layers, params, x, *, frac_bits, backprop="reversible", rngs=None, observe=None
) -> tuple[PyTree, tuple]:
    """encode x, run the engine on `Fixed` states, decode (straight-through), NaN on overflow.

    The returned aux has the float body's structure: each layer's overflow flag is removed
    (`ExactAux` -> its extra, a bare flag -> None), so batch statistics come back as in float.
    """
    if any(isinstance(layer, engine.Scan) and layer.store_every is not None for layer in layers):
        raise ValueError(
            "store_every bounds float drift; exact arithmetic reconstructs bit-exactly without "
            "it (and its batch-norm blocks only in one compiled loop): leave it None"
        )
    encoded = fixed_point.encode(x, frac_bits)
    out, aux = engine.apply_with_aux(layers, params, encoded, rngs, backprop=backprop)
    leaves = jax.tree.leaves(out, is_leaf=lambda s: isinstance(s, fixed_point.Fixed))
    if not all(isinstance(s, fixed_point.Fixed) and s.q.dtype == jnp.int32 for s in leaves):
        raise TypeError(
            "exact arithmetic: the body returned non-fixed-point states; some layer was built "
            "outside the arithmetic (build every step with `arith.<step>`, not directly)"
        )
    if observe is not None:
        observe(layers, params, encoded)
    overflow = fixed_point.any_overflow(aux) | _input_overflow(x, frac_bits)
    y = jax.tree.map(lambda u: jnp.where(overflow, jnp.nan, u), fixed_point.decode(out, frac_bits))
    return y, tuple(_strip_overflow(a) for a in aux)


def _exact_check_overflow(layers, params, x, *, frac_bits) -> None:
    if bool(_input_overflow(x, frac_bits)):
        raise fixed_point.FixedPointOverflowError(
            f"the input leaves the fixed-point range |x| < 2^{31 - frac_bits}; use fewer frac_bits"
        )
    _, aux = engine.apply_with_aux(layers, params, fixed_point.encode(x, frac_bits))
    fixed_point.check_overflow(layers, aux, frac_bits)


def exact_arithmetic(frac_bits: int = DEFAULT_FRAC_BITS) -> Arithmetic:
    """int32 fixed-point states with `frac_bits` fractional bits (`revjax.fixed_point`)."""
    f = fixed_point.check_frac_bits(frac_bits)
    return Arithmetic(
        name="exact",
        frac_bits=f,
        encode=partial(fixed_point.encode, frac_bits=f),
        decode=partial(fixed_point.decode, frac_bits=f),
        additive_coupling=partial(fixed_point.exact_additive_coupling, frac_bits=f),
        leapfrog_step=partial(fixed_point.exact_leapfrog_step, frac_bits=f),
        midpoint_step=partial(fixed_point.exact_midpoint_step, frac_bits=f),
        duplicate_state=fixed_point.exact_duplicate_state,
        euler_start=partial(fixed_point.exact_euler_start, frac_bits=f),
        linear_step=fixed_point.exact_linear_step,
        haar_step=integer_haar.exact_haar_step,
        haar_inverse_step=integer_haar.exact_haar_inverse_step,
        stored_transition=partial(fixed_point.exact_stored_transition, frac_bits=f),
        run=partial(_exact_run, frac_bits=f),
        check_overflow=partial(_exact_check_overflow, frac_bits=f),
    )


FLOAT = float_arithmetic()
_FACTORIES = {"float": lambda frac_bits: FLOAT, "exact": exact_arithmetic}
ARITHMETICS = tuple(_FACTORIES)


def get(
    arithmetic: str | Arithmetic,
    frac_bits: int = DEFAULT_FRAC_BITS,
    *,
    supported: Sequence[str] = ARITHMETICS,
    why: str = "",
) -> Arithmetic:
    """The `Arithmetic` a config names: "float" or "exact" (with `frac_bits`).

    The one place where a model turns its `arithmetic: str` and `frac_bits` fields into the
    value; call it in `check_config` too, so a bad name fails at construction. A model that
    offers only some arithmetics passes `supported` (and `why`, for the error message).

    Raises:
      ValueError: an unknown or unsupported arithmetic, or frac_bits outside [0, 30].
      TypeError: frac_bits is not a Python int.
    """
    if isinstance(arithmetic, Arithmetic):
        return arithmetic
    frac_bits = fixed_point.check_frac_bits(frac_bits)
    if arithmetic not in ARITHMETICS:
        raise ValueError(f"unknown arithmetic {arithmetic!r}; expected one of {ARITHMETICS}")
    if arithmetic not in supported:
        raise ValueError(
            f"arithmetic={arithmetic!r} is not supported here (only {tuple(supported)}){why}"
        )
    return _FACTORIES[arithmetic](frac_bits)

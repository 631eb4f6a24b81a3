"""Fixed-point states for bit-exact reversibility, with straight-through gradients.

In floating point ``(x + F(z)) − F(z) ≠ x``: the rounding of every addition is amplified by
the rest of the network, so a float reversible network only reconstructs its activations
approximately (see `revjax.engine.reconstruction_error`). Keeping the *state* in fixed point,
integers ``q`` with value ``q · 2^−f`` (``f`` = `frac_bits`), and rounding every increment to
that grid before adding it makes each update an integer addition, which is exact and exactly
undone (even modulo 2³² on overflow). The increment is recomputed from a bit-identical input,
so reconstruction is **bit-exact at every depth**, whatever dtype the residual functions
compute in. This assumes the residual function is bit-reproducible: the same input bits give the
same output bits in the forward pass and in the backward pass's recomputation. XLA compiles
both alike at its default optimisation level (tested); at CPU -O0 they were seen to differ in
the last bit, and on GPU autotuned kernels or atomic reductions can differ
(`--xla_gpu_deterministic_ops=true` rules that out). `engine.reconstruction_error` shows any
such loss of exactness. (Fixed-point states for exact reversal: MacKay, Vicol, Ba, Grosse (2018),
"Reversible Recurrent Neural Networks", arXiv:1810.10999; the bit-reversible Verlet
integrator of Levesque & Verlet (1993), J. Stat. Phys. 72:519.)

State representation. A fixed-point state leaf is ``Fixed(q, g)``:

- ``q``: int32, the value ``q · 2^−f``;
- ``g``: a float array of the same shape whose *value is always exactly 0*; it is the
  straight-through gradient carrier. JAX gives integer arrays ``float0`` (no) cotangents, so
  the gradient of a fixed-point state travels on ``g``: every rounded increment ``v`` adds
  ``round(v·2^f)`` to ``q`` and ``v − stop_gradient(v)`` (= 0) to ``g``, and residual
  functions read ``real(s) = q·2^−f + g``. Autodiff therefore sees the real-valued update
  ``y = x + v`` along the fixed-point trajectory (the straight-through rule for rounding,
  Bengio, Léonard, Courville (2013), arXiv:1308.3432): the gradients are those of the
  real-valued network evaluated at the fixed-point states.

Because ``g`` is a float leaf and ``q`` an integer leaf, the engine (`revjax.engine`) runs
these steps unchanged: its one `jax.custom_vjp` passes ``float0`` cotangents for ``q`` and
float cotangents for ``g``, and its dtype check (parameters vs floating state leaves) sees the
float dtype of ``g``.

Steps (all `engine.InvertibleStep` values; parameters stay float; the residual functions may
compute in float32 or bfloat16; ⌊·⌉ = round half to even on the 2^−f grid)::

    additive coupling (Gomez et al. 2017, arXiv:1707.04585):
        y1 = x1 + ⌊F(x2)⌉,  y2 = x2 + ⌊G(y1)⌉
    Verlet / Hamiltonian (Chang et al. 2018, arXiv:1709.03698):
        Y' = Y + ⌊F(Z)⌉,    Z' = Z − ⌊G(Y')⌉
    leapfrog / hyperbolic (Chang et al. 2018; Peters, Haber, Lensink 2019,
        arXiv:1912.12137):  Y_{j+1} = 2Y_j − Y_{j−1} + ⌊h² f(Y_j)⌉
    midpoint (Chang et al. 2018):  Y_{j+1} = Y_{j−1} + ⌊2h g(Y_j)⌉

Damped leapfrog, ``(1 + γh/2) Y_{j+1} = 2Y_j − (1 − γh/2) Y_{j−1} + h² f``, is refused: the
map contracts the phase-space volume by ((1 − γh/2)/(1 + γh/2))^n, so on a fixed grid it
cannot be injective and no rounding makes it exactly invertible. Affine coupling (a
multiplicative update) and RevUp's fixed-point inverse are out of scope for the same reason.

Batch norm inside residual functions (`Arithmetic.additive_coupling_with_stats` of
`revjax.arithmetic`): the forward's batch statistics come next to the overflow flag, as
`ExactAux(overflow, stats)`; the reconstruction recomputes F and G from bit-identical inputs,
hence from the same batch statistics. Non-invertible maps between exact stages (pooling, strided
projection blocks) are `exact_stored_transition`s: float on the decoded state, re-encoded output,
input stored.

Families and models build their steps through `revjax.arithmetic.exact_arithmetic(frac_bits)`
(whose `run` encodes, runs the engine, decodes, NaN on overflow); users may build them here.

Overflow. int32 arithmetic wraps modulo 2³²: reconstruction stays exact, but the real values become
garbage. Every exact step returns, as its `aux`, a boolean "some state or increment left the
representable range |x| < 2^(31−f)" (checked on a float32 estimate, conservative within 2^12 units
of the limit; non-finite increments count as overflow). `check_overflow` turns the per-layer flags
returned by `engine.apply_with_aux` into a `FixedPointOverflowError` naming the layer and step and
the remedy (fewer `frac_bits`, a smaller step size h). The check costs a few element-wise operations
and one reduction per update (included in the exact/float step times of README).

`frac_bits`: ``DEFAULT_FRAC_BITS = 20`` gives a range |x| < 2048 with resolution
2^−20 ≈ 9.5e-7 (the float32 spacing at |x| ≈ 8). The stable bodies of
`experiments/reconstruction_drift.py` (unit-variance inputs, norm growth up to 341x at depth
1000) stay inside that range with no overflow (README); states that grow more need fewer bits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from revjax import engine
from revjax.couplings import _split_rng
from revjax.engine import InvertibleStep, Scan, Transition
from revjax.integrators import check_step_size

__all__ = [
    "DEFAULT_FRAC_BITS",
    "Fixed",
    "FixedPointOverflowError",
    "check_frac_bits",
    "encode",
    "decode",
    "real",
    "quantize",
    "out_of_range",
    "check_overflow",
    "any_overflow",
    "ExactAux",
    "exact_additive_coupling",
    "exact_verlet_step",
    "exact_leapfrog_step",
    "exact_midpoint_step",
    "exact_duplicate_state",
    "exact_euler_start",
    "exact_linear_step",
    "exact_stored_transition",
]

DEFAULT_FRAC_BITS = 20
_INT32_BITS = 31
# Largest |q| accepted, with a margin for the float32 estimate used to detect overflow.
_LIMIT = float(2**31 - 2**12)

PyTree = Any
ResidualFn = Callable[..., jax.Array]


class Fixed(NamedTuple):
    """A fixed-point state leaf: value q·2^−frac_bits; g (≡ 0) carries the gradient.

    Attributes:
      q: int32 array.
      g: float array of q's shape, value exactly 0 (straight-through gradient carrier).
    """

    q: jax.Array
    g: jax.Array


class FixedPointOverflowError(OverflowError):
    """A fixed-point state or increment left the representable range (see `check_overflow`)."""


class ExactAux(NamedTuple):
    """Aux of an exact step or transition whose float twin has an aux of its own.

    Attributes:
      overflow: scalar bool (stacked to (depth,) by a Scan), as for every exact step.
      extra: the float twin's aux (e.g. batch statistics {"F": ..., "G": ...}).
    """

    overflow: jax.Array
    extra: Any


def check_frac_bits(frac_bits: int) -> int:
    """frac_bits must be a Python int in [0, 30] (static configuration, checked before tracing)."""
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, int | np.integer):
        raise TypeError(f"frac_bits must be a Python int, got {type(frac_bits).__name__}")
    if not 0 <= frac_bits <= 30:
        raise ValueError(f"frac_bits must be in [0, 30] for int32 states, got {frac_bits}")
    return int(frac_bits)


def _is_fixed(x) -> bool:
    return isinstance(x, Fixed)


def _cotangent(s: Fixed, g: jax.Array) -> Fixed:
    """The cotangent of a fixed-point leaf: float0 (empty) for the integer q, and g."""
    return Fixed(np.zeros(jnp.shape(s.q), dtype=jax.dtypes.float0), g)


def out_of_range(x_scaled: jax.Array) -> jax.Array:
    """Scalar bool: some entry of x·2^f (a float estimate of q) is non-finite or |·| > limit."""
    x_scaled = jnp.asarray(x_scaled, jnp.float32)
    return jnp.any(~(jnp.abs(x_scaled) <= _LIMIT))


def encode(x: PyTree, frac_bits: int = DEFAULT_FRAC_BITS) -> PyTree:
    """Float pytree -> pytree of `Fixed` leaves: q = ⌊x·2^f⌉ (round half to even), g = x − sg(x).

    The VJP is the straight-through identity (x̄ = ḡ). Out-of-range or non-finite entries
    become 0; test them with `out_of_range(x * 2**frac_bits)` (the exact models do, and turn
    their output into NaN).
    """
    frac_bits = check_frac_bits(frac_bits)

    def leaf(u):
        if not jnp.issubdtype(jnp.asarray(u).dtype, jnp.floating):
            raise TypeError(f"encode needs floating inputs, got {jnp.asarray(u).dtype}")
        dq, dg, _ = quantize(u, frac_bits)
        return Fixed(dq, dg)

    return jax.tree.map(leaf, x)


def real(s: Fixed, frac_bits: int, dtype: Any = None) -> jax.Array:
    """The real value q·2^−f + g of a fixed-point leaf (in g's dtype unless `dtype` is given)."""
    dtype = s.g.dtype if dtype is None else dtype
    return s.q.astype(dtype) * (2.0**-frac_bits) + s.g.astype(dtype)


def decode(y: PyTree, frac_bits: int = DEFAULT_FRAC_BITS) -> PyTree:
    """Pytree of `Fixed` leaves -> float pytree (straight-through: ȳ flows to g)."""
    return jax.tree.map(lambda s: real(s, frac_bits), y, is_leaf=_is_fixed)


def quantize(v: jax.Array, frac_bits: int, dtype: Any = None):
    """A real increment v -> (dq, dg, overflow): dq = ⌊v·2^f⌉ int32, dg = v − sg(v) (≡ 0).

    Args:
      v: float array, cast to `dtype` (default float32, or v's dtype if wider) before scaling.
      frac_bits: f.
      dtype: dtype of dg (the gradient carrier).

    Returns:
      dq (int32; out-of-range or non-finite entries are replaced by 0 and flagged), dg (the
      straight-through carrier), overflow (scalar bool).
    """
    dtype = jnp.promote_types(v.dtype, jnp.float32) if dtype is None else dtype
    v = v.astype(dtype)
    scaled = v * (2.0**frac_bits)
    bad = ~(jnp.abs(scaled) <= _LIMIT)
    dq = jnp.round(jnp.where(bad, 0.0, scaled)).astype(jnp.int32)
    dg = v - jax.lax.stop_gradient(v)
    return dq, dg, jnp.any(bad)


def _add(s: Fixed, v: jax.Array, frac_bits: int, sign: int = 1):
    """(s + sign·⌊v⌉, overflow): the exact fixed-point update with straight-through carrier."""
    dq, dg, bad = quantize(v, frac_bits, s.g.dtype)
    q = s.q + dq if sign > 0 else s.q - dq
    estimate = s.q.astype(jnp.float32) + sign * dq.astype(jnp.float32)
    g = s.g + dg if sign > 0 else s.g - dg
    return Fixed(q, g), bad | out_of_range(estimate)


def _sub_exact(s: Fixed, v: jax.Array, frac_bits: int) -> Fixed:
    """s − ⌊v⌉ on q (the inverse of `_add`); g is a copy (its value is 0)."""
    dq, _, _ = quantize(v, frac_bits, s.g.dtype)
    return Fixed(s.q - dq, s.g)


def _residual_vjp(fn, params, s: Fixed, rng, frac_bits):
    """v = fn(params, real(s)) and its pullback ct -> (params_bar, g_bar) (ct cast to v's dtype)."""
    v, pullback = jax.vjp(lambda p, u: fn(p, u, rng), params, real(s, frac_bits))
    return v, lambda ct: pullback(ct.astype(v.dtype))


def exact_additive_coupling(
    F: ResidualFn,
    G: ResidualFn,
    *,
    frac_bits: int = DEFAULT_FRAC_BITS,
    name: str = "exact_additive_coupling",
) -> InvertibleStep:
    """RevNet coupling y1 = x1 + ⌊F(x2)⌉, y2 = x2 + ⌊G(y1)⌉ on `Fixed` halves (x1, x2).

    Params {"F": θ_F, "G": θ_G}; F, G map (params, u (float), rng) -> v of u's shape, in any
    floating dtype. Forward returns ((y1, y2), overflow). Inverse and fused backward evaluate
    F and G once each; x̄ is the straight-through (real-valued) cotangent.
    """
    frac_bits = check_frac_bits(frac_bits)

    def forward(params, x, rng=None):
        x1, x2 = x
        rf, rg = _split_rng(rng)
        y1, o1 = _add(x1, F(params["F"], real(x2, frac_bits), rf), frac_bits)
        y2, o2 = _add(x2, G(params["G"], real(y1, frac_bits), rg), frac_bits)
        return (y1, y2), o1 | o2

    def inverse(params, y, rng=None):
        y1, y2 = y
        rf, rg = _split_rng(rng)
        x2 = _sub_exact(y2, G(params["G"], real(y1, frac_bits), rg), frac_bits)
        x1 = _sub_exact(y1, F(params["F"], real(x2, frac_bits), rf), frac_bits)
        return x1, x2

    def backward(params, y, y_bar, rng=None):
        y1, y2 = y
        y1_bar, y2_bar = y_bar
        rf, rg = _split_rng(rng)
        g, g_pull = _residual_vjp(G, params["G"], y1, rg, frac_bits)
        x2 = _sub_exact(y2, g, frac_bits)
        g_params_bar, y1_from_g = g_pull(y2_bar.g)
        y1_hat = y1_bar.g + y1_from_g
        f, f_pull = _residual_vjp(F, params["F"], x2, rf, frac_bits)
        x1 = _sub_exact(y1, f, frac_bits)
        f_params_bar, x2_from_f = f_pull(y1_hat)
        x_bar = (_cotangent(x1, y1_hat), _cotangent(x2, y2_bar.g + x2_from_f))
        return (x1, x2), {"F": f_params_bar, "G": g_params_bar}, x_bar

    return InvertibleStep(forward, inverse, backward, has_aux=True, name=name)


def exact_verlet_step(
    F: ResidualFn, G: ResidualFn, *, frac_bits: int = DEFAULT_FRAC_BITS, name: str = "exact_verlet"
) -> InvertibleStep:
    """Verlet Y' = Y + ⌊F(Z)⌉, Z' = Z − ⌊G(Y')⌉ (the exact coupling with G negated)."""
    negated_G = lambda p, u, rng: -G(p, u, rng)
    return exact_additive_coupling(F, negated_G, frac_bits=frac_bits, name=name)


def exact_leapfrog_step(
    force: ResidualFn,
    h: float,
    *,
    damping: float = 0.0,
    frac_bits: int = DEFAULT_FRAC_BITS,
    name: str = "exact_leapfrog",
) -> InvertibleStep:
    """(Y_{j−1}, Y_j) -> (Y_j, 2Y_j − Y_{j−1} + ⌊h² f(Y_j)⌉) on `Fixed` states.

    Backward (straight-through): P̄ = −N̄, C̄ = C̄' + 2N̄ + h² J_f(C)^T N̄, θ̄ = h² (∂f/∂θ)^T N̄.

    Raises:
      ValueError: damping ≠ 0 (a damped step contracts volume, so it cannot be a bijection of
        the fixed-point grid; use `revjax.integrators.leapfrog_step` in float arithmetic).
    """
    h = check_step_size(h)
    frac_bits = check_frac_bits(frac_bits)
    if damping != 0:
        raise ValueError(
            f"exact (fixed-point) leapfrog cannot be damped (got damping={damping}): the damped "
            "step multiplies phase-space volume by ((1 − γh/2)/(1 + γh/2)) < 1, so it cannot be "
            "a bijection of the integer grid. Use damping=0, or float arithmetic"
        )
    h2 = h * h

    def increment(params, cur, rng):
        return h2 * force(params, real(cur, frac_bits), rng).astype(cur.g.dtype)

    def forward(params, x, rng=None):
        prev, cur = x
        dq, dg, bad = quantize(increment(params, cur, rng), frac_bits, cur.g.dtype)
        q = 2 * cur.q - prev.q + dq
        estimate = (
            2 * cur.q.astype(jnp.float32) - prev.q.astype(jnp.float32) + dq.astype(jnp.float32)
        )
        g = 2 * cur.g - prev.g + dg
        return (cur, Fixed(q, g)), bad | out_of_range(estimate)

    def inverse(params, y, rng=None):
        cur, nxt = y
        dq, _, _ = quantize(increment(params, cur, rng), frac_bits, cur.g.dtype)
        return Fixed(2 * cur.q - nxt.q + dq, nxt.g), cur

    def backward(params, y, y_bar, rng=None):
        cur, nxt = y
        cur_bar_direct, nxt_bar = y_bar
        f, pull = _residual_vjp(force, params, cur, rng, frac_bits)
        dq, _, _ = quantize(h2 * f.astype(cur.g.dtype), frac_bits, cur.g.dtype)
        prev = Fixed(2 * cur.q - nxt.q + dq, nxt.g)
        params_bar, cur_from_f = pull(nxt_bar.g * h2)
        prev_bar = _cotangent(prev, -nxt_bar.g)
        cur_bar = _cotangent(cur, cur_bar_direct.g + 2 * nxt_bar.g + cur_from_f)
        return (prev, cur), params_bar, (prev_bar, cur_bar)

    return InvertibleStep(forward, inverse, backward, has_aux=True, name=name)


def exact_midpoint_step(
    g_fn: ResidualFn, h: float, *, frac_bits: int = DEFAULT_FRAC_BITS, name: str = "exact_midpoint"
) -> InvertibleStep:
    """(Y_{j−1}, Y_j) -> (Y_j, Y_{j−1} + ⌊2h g(Y_j)⌉); P̄ = N̄, C̄ = C̄' + 2h J_g^T N̄."""
    h = check_step_size(h)
    frac_bits = check_frac_bits(frac_bits)

    def forward(params, x, rng=None):
        prev, cur = x
        v = 2 * h * g_fn(params, real(cur, frac_bits), rng).astype(cur.g.dtype)
        nxt, bad = _add(prev, v, frac_bits)
        return (cur, nxt), bad

    def inverse(params, y, rng=None):
        cur, nxt = y
        v = 2 * h * g_fn(params, real(cur, frac_bits), rng).astype(cur.g.dtype)
        return _sub_exact(nxt, v, frac_bits), cur

    def backward(params, y, y_bar, rng=None):
        cur, nxt = y
        cur_bar_direct, nxt_bar = y_bar
        v, pull = _residual_vjp(g_fn, params, cur, rng, frac_bits)
        prev = _sub_exact(nxt, 2 * h * v.astype(cur.g.dtype), frac_bits)
        params_bar, cur_from_g = pull(nxt_bar.g * (2 * h))
        x_bar = (_cotangent(prev, nxt_bar.g), _cotangent(cur, cur_bar_direct.g + cur_from_g))
        return (prev, cur), params_bar, x_bar

    return InvertibleStep(forward, inverse, backward, has_aux=True, name=name)


def exact_duplicate_state(name: str = "exact_duplicate_state") -> InvertibleStep:
    """Y0 -> (Y0, Y0) on `Fixed` leaves (zero-velocity start); Ȳ0 = P̄ + C̄. params = None."""

    def forward(params, x, rng=None):
        return x, x

    def inverse(params, y, rng=None):
        return y[1]

    def backward(params, y, y_bar, rng=None):
        x_bar = jax.tree.map(
            lambda s, a, b: _cotangent(s, a.g + b.g), y[1], *y_bar, is_leaf=_is_fixed
        )
        return y[1], jax.tree.map(jnp.zeros_like, params), x_bar

    return InvertibleStep(forward, inverse, backward, name=name)


def exact_euler_start(
    fn: ResidualFn,
    scale: float,
    *,
    frac_bits: int = DEFAULT_FRAC_BITS,
    name: str = "exact_euler_start",
) -> InvertibleStep:
    """Y0 -> (Y0, Y0 + ⌊scale·fn(Y0)⌉) (a single `Fixed` leaf); the inverse reads Y0."""
    scale = check_step_size(scale, "scale")
    frac_bits = check_frac_bits(frac_bits)

    def forward(params, x, rng=None):
        v = scale * fn(params, real(x, frac_bits), rng).astype(x.g.dtype)
        y1, bad = _add(x, v, frac_bits)
        return (x, y1), bad

    def inverse(params, y, rng=None):
        return y[0]

    def backward(params, y, y_bar, rng=None):
        x = y[0]
        first_bar, cur_bar = y_bar
        _, pull = _residual_vjp(fn, params, x, rng, frac_bits)
        params_bar, x_from_fn = pull(cur_bar.g * scale)
        return x, params_bar, _cotangent(x, first_bar.g + cur_bar.g + x_from_fn)

    return InvertibleStep(forward, inverse, backward, has_aux=True, name=name)


def exact_linear_step(
    forward_fn: Callable[[jax.Array], jax.Array],
    inverse_fn: Callable[[jax.Array], jax.Array],
    adjoint_fn: Callable[[jax.Array], jax.Array] | None = None,
    name: str = "exact_linear",
    *,
    real_fns: tuple[Callable, Callable] | None = None,
    overflow: Callable[[jax.Array], jax.Array] | None = None,
) -> InvertibleStep:
    """A dtype-agnostic linear map with integer coefficients (permutation, zero padding) applied
    to q and g of every `Fixed` leaf; exact because it only moves (or zero-fills) integers.

    Backward: x = Q^{-1} y, x̄ = Q^T ȳ (`adjoint_fn`, default Q^{-1}: orthogonal Q). params = None.
    An integer-to-integer map that rounds a real one (the lifting Haar of `revjax.integer_haar`)
    gives that real map and its inverse as `real_fns` (applied to g; `adjoint_fn` is then the
    transpose of the real forward) and `overflow(q) -> bool` (the forward's aux).
    """
    adjoint_fn = inverse_fn if adjoint_fn is None else adjoint_fn
    real_forward, real_inverse = (forward_fn, inverse_fn) if real_fns is None else real_fns

    def on_fixed(q_fn, g_fn, tree):
        return jax.tree.map(lambda s: Fixed(q_fn(s.q), g_fn(s.g)), tree, is_leaf=_is_fixed)

    def forward(params, x, rng=None):
        y = on_fixed(forward_fn, real_forward, x)
        if overflow is None:
            return y
        flags = [overflow(s.q) for s in jax.tree.leaves(x, is_leaf=_is_fixed)]
        return y, jnp.any(jnp.stack(flags)) if flags else jnp.zeros((), bool)

    def inverse(params, y, rng=None):
        return on_fixed(inverse_fn, real_inverse, y)

    def backward(params, y, y_bar, rng=None):
        x = inverse(params, y)
        x_bar = jax.tree.map(
            lambda s, b: _cotangent(s, adjoint_fn(b.g)), x, y_bar, is_leaf=_is_fixed
        )
        return x, jax.tree.map(jnp.zeros_like, params), x_bar

    return InvertibleStep(forward, inverse, backward, overflow is not None, name)


def exact_stored_transition(
    transition: Transition, frac_bits: int = DEFAULT_FRAC_BITS
) -> Transition:
    """A float `engine.Transition` (pooling, a strided projection block) between exact stages.

    y = encode(transition.apply(params, decode(x), rng)): the map runs in float on the real
    values of the `Fixed` leaves and its output is rounded to the 2^−f grid. The engine stores
    a transition's input, so the rounding costs nothing in exactness: the reconstruction
    restarts from the stored (bit-exact) input. Gradients are straight-through.
    aux: the overflow flag of the re-encoding, or ExactAux(overflow, the float aux) when the
    float transition has one (e.g. batch statistics).
    """
    frac_bits = check_frac_bits(frac_bits)

    def apply(params, x, rng=None):
        y_float, inner_aux = engine.call_layer(transition, params, decode(x, frac_bits), rng)
        carrier = jax.tree.leaves(x, is_leaf=_is_fixed)[0].g.dtype  # keep the state's dtype
        pairs = [quantize(v, frac_bits, carrier) for v in jax.tree.leaves(y_float)]
        y = jax.tree.unflatten(jax.tree.structure(y_float), [Fixed(dq, dg) for dq, dg, _ in pairs])
        overflow = jnp.any(jnp.stack([bad for _, _, bad in pairs]))
        return y, (ExactAux(overflow, inner_aux) if transition.has_aux else overflow)

    return Transition(apply, has_aux=True, name=transition.name)


def _layer_flags(layer, aux) -> np.ndarray | None:
    step = layer.step if isinstance(layer, Scan) else layer
    if not getattr(step, "has_aux", False) or aux is None:
        return None
    if isinstance(aux, ExactAux):
        aux = aux.overflow
    flags = np.asarray(jax.device_get(aux))
    return np.atleast_1d(flags) if flags.dtype == np.bool_ else None


def any_overflow(aux: Sequence[Any]) -> jax.Array:
    """Scalar bool (traceable): some exact step flagged an overflow in `aux` (per-layer aux)."""
    flags = [
        jnp.any(a) for a in jax.tree.leaves(aux) if hasattr(a, "dtype") and a.dtype == jnp.bool_
    ]
    return jnp.any(jnp.stack(flags)) if flags else jnp.zeros((), bool)


def check_overflow(
    layers: Sequence[Any], aux: Sequence[Any], frac_bits: int = DEFAULT_FRAC_BITS
) -> None:
    """Raise `FixedPointOverflowError` if any exact layer flagged an overflow (outside jit).

    Args:
      layers: the engine layers given to `engine.apply_with_aux`.
      aux: the per-layer aux it returned (a bool per exact step, (depth,) per exact Scan).
      frac_bits: for the message (the representable range is |x| < 2^(31 − frac_bits)).
    """
    for i, (layer, a) in enumerate(zip(layers, aux)):
        flags = _layer_flags(layer, a)
        if flags is None or not flags.any():
            continue
        where = f"layer {i} ({layer.name})"
        if isinstance(layer, Scan):
            where = f"steps {np.flatnonzero(flags)[:5].tolist()} of scan {where}"
        kind = "transition" if isinstance(layer, Transition) else "step"
        raise FixedPointOverflowError(
            f"fixed-point overflow at {where} ({kind}): a state or increment left the "
            f"representable range |x| < 2^{_INT32_BITS - frac_bits} = "
            f"{2.0 ** (_INT32_BITS - frac_bits):g} of int32 with frac_bits={frac_bits}. The "
            "reconstruction is still exact (integer wrap-around is invertible) but the values "
            "are wrong. Remedy: fewer frac_bits (a larger range, coarser resolution), a smaller "
            "step size h, or smaller inputs/weights"
        )

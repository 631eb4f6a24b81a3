"""Reversible ODE integrators as invertible steps (Chang et al. 2018; Lensink/Peters et al.).

Generic over the "force" functions, which are pure `(params, u, rng) -> v` (e.g. the
symmetric layer f(u) = −K^T σ(K u + b)). States are pairs.

Verlet / Hamiltonian (Chang, Meng, Haber, Ruthotto, Begert, Holtham 2018, arXiv:1709.03698,
"Hamiltonian inspired neural networks"), state (Y, Z)::

    Y' = Y + F(Z)          Z = Z' + G(Y')
    Z' = Z − G(Y')         Y = Y' − F(Z)

(the RevNet coupling with G negated; h lives inside F and G, as in the official code).

Leapfrog / hyperbolic (Chang et al. 2018, leapfrog network; Lensink, Peters, Haber 2019,
arXiv:1912.12137), state (P, C) = (Y_{j−1}, Y_j), damping γ ≥ 0::

    (1 + γh/2) N = 2C − (1 − γh/2) P + h² f(C)          N = Y_{j+1}
    inverse:   P = [2C − (1 + γh/2) N + h² f(C)] / (1 − γh/2)
    VJP (γ = 0): P̄ = −N̄,  C̄ = C̄' + 2N̄ + h² J_f(C)^T N̄,  θ̄ = h² (∂f/∂θ)^T N̄

Midpoint (Chang et al. 2018, midpoint network), state (P, C)::

    N = P + 2h g(C);   inverse P = N − 2h g(C);   P̄ = N̄,  C̄ = C̄' + 2h J_g(C)^T N̄

Start rules turn one input tensor Y0 into the two-state pair (injective, exactly undone):
`duplicate_state` (Y_{−1} = Y0, zero velocity; Ȳ0 = P̄ + C̄) and `euler_start(fn, scale)`
(pair (Y0, Y0 + scale·fn(Y0)): the midpoint forward-Euler start with scale = h, or the
second-order leapfrog start with scale = h²/2 and fn = f).

All fused backward rules evaluate the force once per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from revjax.couplings import additive_coupling
from revjax.engine import InvertibleStep

__all__ = [
    "check_step_size",
    "verlet_step",
    "leapfrog_step",
    "midpoint_step",
    "duplicate_state",
    "euler_start",
]

ForceFn = Callable[..., jax.Array]


def check_step_size(h: float, name: str = "h") -> float:
    """The library's one step-size rule: h must be a finite number > 0, a concrete value.

    Every `h` of the zoo (Verlet, leapfrog and midpoint steps, Chang et al. 2018, arXiv:1709.03698,
    Sec. 3; the reaction-diffusion steps of Ephrath et al. 2019, arXiv:1805.07821, Sec. 3; the
    hyperbolic units of Lensink, Peters, Haber 2019, arXiv:1912.12137) is the time step of a
    discretised ODE/PDE and is checked here, before tracing. h = 0 is rejected because it makes
    every step the identity, so the network silently ignores its body parameters (their gradient is
    zero); h < 0 runs the dynamics backwards (and makes the implicit step's I + h KᵀK indefinite); a
    traced h is refused because the stability of a step (e.g. h²λ_max(KᵀK) ≤ 4 for Verlet) is a
    property of the configuration. Returns float(h).
    """
    try:
        value = float(h)
    except TypeError as err:  # a tracer: the step size must be static configuration
        raise TypeError(f"{name} must be a Python number, not a traced value") from err
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"step size {name} must be finite and > 0, got {h}")
    return value


def verlet_step(F: ForceFn, G: ForceFn, name: str = "verlet") -> InvertibleStep:
    """Y' = Y + F(Z), Z' = Z − G(Y'); params {"F": ..., "G": ...}, state (Y, Z)."""
    return additive_coupling(F, lambda p, u, rng: -G(p, u, rng), name=name)


def leapfrog_step(
    force: ForceFn, h: float, *, damping: float = 0.0, name: str = "leapfrog"
) -> InvertibleStep:
    """(Y_{j−1}, Y_j) -> (Y_j, Y_{j+1}), Y_{j+1} = 2Y_j − Y_{j−1} + h² f(Y_j) (γ = `damping`)."""
    h = check_step_size(h)
    if not (math.isfinite(damping) and 0 <= damping * h / 2 < 1):
        raise ValueError(
            f"damping must satisfy 0 <= damping*h/2 < 1 for an invertible step, got "
            f"damping={damping}, h={h}"
        )
    h2 = h * h
    a = 1.0 + damping * h / 2  # multiplies Y_{j+1}
    b = 1.0 - damping * h / 2  # multiplies Y_{j−1}

    def forward(params, x, rng=None):
        prev, cur = x
        return cur, (2 * cur - b * prev + h2 * force(params, cur, rng)) / a

    def inverse(params, y, rng=None):
        cur, nxt = y
        return (2 * cur - a * nxt + h2 * force(params, cur, rng)) / b, cur

    def backward(params, y, y_bar, rng=None):
        cur, nxt = y
        cur_bar_direct, nxt_bar = y_bar
        f, pullback = jax.vjp(lambda p, u: force(p, u, rng), params, cur)
        prev = (2 * cur - a * nxt + h2 * f) / b
        params_bar, cur_from_f = pullback(nxt_bar * (h2 / a))
        prev_bar = -nxt_bar * (b / a)
        cur_bar = cur_bar_direct + nxt_bar * (2 / a) + cur_from_f
        return (prev, cur), params_bar, (prev_bar, cur_bar)

    return InvertibleStep(forward, inverse, backward, name=name)


def midpoint_step(g: ForceFn, h: float, name: str = "midpoint") -> InvertibleStep:
    """(Y_{j−1}, Y_j) -> (Y_j, Y_{j−1} + 2h g(Y_j))."""
    h = check_step_size(h)

    def forward(params, x, rng=None):
        prev, cur = x
        return cur, prev + 2 * h * g(params, cur, rng)

    def inverse(params, y, rng=None):
        cur, nxt = y
        return nxt - 2 * h * g(params, cur, rng), cur

    def backward(params, y, y_bar, rng=None):
        cur, nxt = y
        cur_bar_direct, nxt_bar = y_bar
        v, pullback = jax.vjp(lambda p, u: g(p, u, rng), params, cur)
        params_bar, cur_from_g = pullback(nxt_bar * (2 * h))
        return (nxt - 2 * h * v, cur), params_bar, (nxt_bar, cur_bar_direct + cur_from_g)

    return InvertibleStep(forward, inverse, backward, name=name)


def duplicate_state(name: str = "duplicate_state") -> InvertibleStep:
    """Y0 -> (Y0, Y0): the zero-velocity start Y_{−1} = Y0. Parameter-free (params = None).

    Injective; the inverse reads the second state. The cotangent is the sum of both
    branches (the first step of a two-state integrator needs both states: Y_{-1} is set to Y_0).
    """

    def forward(params, x, rng=None):
        return x, x

    def inverse(params, y, rng=None):
        return y[1]

    def backward(params, y, y_bar, rng=None):
        return y[1], jax.tree.map(jnp.zeros_like, params), jax.tree.map(lambda u, v: u + v, *y_bar)

    return InvertibleStep(forward, inverse, backward, name=name)


def euler_start(fn: ForceFn, scale: float, name: str = "euler_start") -> InvertibleStep:
    """Y0 -> (Y0, Y0 + scale·fn(Y0)); the inverse reads the first state exactly."""
    scale = check_step_size(scale, "scale")

    def forward(params, x, rng=None):
        return x, x + scale * fn(params, x, rng)

    def inverse(params, y, rng=None):
        return y[0]

    def backward(params, y, y_bar, rng=None):
        x = y[0]
        x_bar_first, cur_bar = y_bar
        _, pullback = jax.vjp(lambda p, u: fn(p, u, rng), params, x)
        params_bar, x_from_fn = pullback(cur_bar * scale)
        return x, params_bar, x_bar_first + cur_bar + x_from_fn

    return InvertibleStep(forward, inverse, backward, name=name)

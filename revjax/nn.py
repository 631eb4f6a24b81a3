"""Flax (linen) modules over the pure engine.

Linen modules here only *own parameters*; the mathematics stays in the pure step functions.
A residual function is written as an ordinary linen module (a template, never bound);
`residual_fn` turns it into the pure `(variables, u, rng) -> v` the engine expects, and
`init_stacked` creates `depth` independent copies of its parameters stacked on axis 0 for a
`Scan`. A reversible stack is then written like any Flax model::

    class Residual(nn.Module):
        @nn.compact
        def __call__(self, u):
            c = u.shape[-1]
            h = nn.relu(nn.Conv(c, (3, 3))(u))
            return nn.Conv(c, (3, 3), kernel_init=nn.initializers.zeros)(h)

    stack = CouplingStack(F=Residual(), G=Residual(), depth=32)
    variables = stack.init(key, x)                 # x: (N, H, W, 2C)
    y = stack.apply(variables, x)                  # gradients by reconstruction
    stack.reconstruction_error(variables, x)       # the drift guard: worst relative error

Initialise deep stacks so that each step starts near the identity: the last layer of F and G
zero-initialised, as above (Fixup, Zhang, Dauphin, Ma 2019, arXiv:1901.09321; SkipInit, De &
Smith 2020, arXiv:2002.10444), or a small output scale. At Flax's default initialisation the
stack above multiplies the norm of its input by several hundred in float32 and the
reconstructed inputs, hence the reversible gradients, are percent-level wrong; the drift guard
(`reconstruction_error`, also `revjax.models.model_reconstruction_error(stack, variables, x)`
and the trainer's `drift_check_every`) reports it.

Stochastic residual functions draw from the "dropout" rng stream; `CouplingStack` splits
one key per step from `self.make_rng("dropout")` when `deterministic=False`, so the backward
pass replays the same masks. F and G written the usual Flax way, with a `deterministic`
argument in `__call__` (e.g. passed on to `nn.Dropout`), receive `CouplingStack`'s
`deterministic`; F and G without one can test `self.has_rng("dropout")` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

from revjax import engine
from revjax.couplings import additive_coupling, affine_coupling, merge_halves, split_halves
from revjax.drift import ReversibleModel, _takes, sow_reconstruction_error

__all__ = [
    "residual_fn",
    "residual_with_stats",
    "init_stacked",
    "accepts_deterministic",
    "CouplingStack",
]


def residual_fn(module: nn.Module, **call_kwargs: Any) -> Callable[..., Any]:
    """Pure (variables, u, rng) -> module.apply(variables, u, **call_kwargs).

    `variables` is the module's {"params": ...} dict (the engine differentiates it); `rng`, when
    given, feeds the "dropout" stream.
    """
    module = module.clone(parent=None)

    def fn(variables, u, rng=None):
        rngs = None if rng is None else {"dropout": rng}
        return module.apply(variables, u, rngs=rngs, **call_kwargs)

    return fn


def residual_with_stats(module: nn.Module, train: bool):
    """Pure (variables, u, rng) -> (v, batch_stats) for a linen residual module with BN.

    `variables` is {"params": ..., "batch_stats": ...}. Train mode normalises with the batch
    statistics of u and returns the running averages updated once,
    momentum * old + (1 − momentum) * batch; eval mode uses (and returns) the stored ones.
    """
    module = module.clone(parent=None)

    def fn(variables, u, rng=None):
        if train:
            v, updates = module.apply(variables, u, train=True, mutable=["batch_stats"])
            return v, updates["batch_stats"]
        return module.apply(variables, u, train=False), variables["batch_stats"]

    return fn


def accepts_deterministic(module: nn.Module) -> bool:
    """Whether `module.__call__` takes a `deterministic` argument (by name or via **kwargs)."""
    return _takes(module, "deterministic")


def init_stacked(module: nn.Module, key: jax.Array, depth: int, *example_args, **kwargs):
    """`depth` independent initialisations of `module`, stacked on a leading axis."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    module = module.clone(parent=None)
    keys = jax.random.split(key, depth)
    return jax.vmap(lambda k: module.init(k, *example_args, **kwargs))(keys)


class CouplingStack(ReversibleModel, nn.Module):
    """`depth` RevNet couplings y1 = x1 + F(x2), y2 = x2 + G(y1) (or affine), one Scan.

    Attributes:
      F, G: linen module templates mapping (N, ..., C/2) -> (N, ..., C/2) (affine: a pair);
        when their `__call__` takes `deterministic`, they get the stack's.
      depth: number of coupling steps.
      coupling: "additive" or "affine".
      backprop: "reversible" | "store" | "remat".
      max_log_scale: affine scale bound (see `affine_coupling`).

    Input and output: (N, ..., C) with C even; the halves are the first/second C/2 channels.
    Parameters: `variables["params"]["F_blocks"]` and `["G_blocks"]`, the stacked variables
    of F and G (leading axis `depth`).
    """

    F: nn.Module
    G: nn.Module
    depth: int
    coupling: str = "additive"
    backprop: str = "reversible"
    max_log_scale: float = 2.0

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        x1, x2 = split_halves(x)
        F, G = self.F.clone(parent=None), self.G.clone(parent=None)
        # F and G that take `deterministic` get this call's value; at init they are deterministic.
        f_init = {"deterministic": True} if accepts_deterministic(F) else {}
        g_init = {"deterministic": True} if accepts_deterministic(G) else {}
        f_call = {"deterministic": deterministic} if f_init else {}
        g_call = {"deterministic": deterministic} if g_init else {}
        f_vars = self.param("F_blocks", lambda k: init_stacked(F, k, self.depth, x2, **f_init))
        g_vars = self.param("G_blocks", lambda k: init_stacked(G, k, self.depth, x1, **g_init))
        f_fn, g_fn = residual_fn(F, **f_call), residual_fn(G, **g_call)
        if self.coupling == "additive":
            step = additive_coupling(f_fn, g_fn)
        elif self.coupling == "affine":
            step = affine_coupling(f_fn, g_fn, max_log_scale=self.max_log_scale)
        else:
            raise ValueError(f"unknown coupling {self.coupling!r}; use 'additive' or 'affine'")
        rngs = None if deterministic else (jax.random.split(self.make_rng("dropout"), self.depth),)
        layers, params = [engine.Scan(step)], [{"F": f_vars, "G": g_vars}]
        y = engine.apply(layers, params, (x1, x2), rngs, backprop=self.backprop)
        sow_reconstruction_error(self, layers, params, (x1, x2), rngs)
        return merge_halves(y)

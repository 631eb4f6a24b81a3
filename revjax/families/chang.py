"""Hamiltonian, midpoint and leapfrog networks (Chang, Meng, Haber, Ruthotto, Begert, Holtham 2018,
"Reversible Architectures for Arbitrarily Deep Residual Neural Networks", AAAI, arXiv:1709.03698).

Pure steps, parameter initialisation, body layouts and the weight-smoothness regulariser
(Chang et al. 2018, Sec. 3). Every step is built through an `Arithmetic` (`revjax.arithmetic`: the
integrators' fused backward rules, in float or fixed point); nothing here writes a VJP. Convolutions
are `revjax.conv.conv` (K) and `revjax.conv.conv_transpose` (its exact adjoint K^T, same weights).

Hamiltonian block (Chang et al. 2018, Sec. 3, "Hamiltonian Inspired Neural Networks", in the form of
the official code, github.com/changebo/revnet-public `hamiltonian_model.py`), state (Y, Z) = channel
halves (C/2 each), K: 3x3 kernel (3, 3, C/2, C/2), per-channel biases β₁, β₂ ∈ R^{C/2}::

    F(z) = h · K^T ReLU(K (z + β₁) + β₂)          (β₁ omitted in the network's first block)
    Y' = Y + F(Z),   Z' = Z − G(Y')               (`arith.verlet_step`; G like F)

h is folded into F and G once (as in the official code); the official default is h = 1.

Midpoint step (Chang et al. 2018, Sec. 3, "Midpoint Network"; anti-symmetric operator
K = W − W^T), state (Y_{j−1}, Y_j), C channels each, W: (3, 3, C, C), b ∈ R^C::

    K Y = W Y − W^T Y   (anti-symmetric:  ⟨K u, v⟩ = −⟨u, K v⟩)
    g(Y) = ReLU(K Y + b),   Y_{j+1} = Y_{j−1} + 2h g(Y_j)
    start: (Y_0, Y_0 + h g_0(Y_0))                (`arith.euler_start`)

Leapfrog step (Chang et al. 2018, Sec. 3, "Leapfrog Network"), state (Y_{j−1}, Y_j),
K: (3, 3, C, C), b ∈ R^C::

    f(Y) = −K^T ReLU(K Y + b),   Y_{j+1} = 2Y_j − Y_{j−1} + h² f(Y_j)
    start "zero_velocity": (Y_0, Y_0)                               (default; Meganet, HyperNet)
    start "second_order":  (Y_0, Y_0 + (h²/2) f_0(Y_0))

Body layout (3 stages of `units[s]` blocks each; `widths[s]` = state channels of stage s)::

    stage 1:  [start]  first  Scan(rest)                     at widths[0]
    stage s:  first (at widths[s−1])  transition  Scan(rest) at widths[s]

"first" is one block (for the midpoint net and the second-order leapfrog start it is the
start rule itself, which carries the parameters of block 0); "rest" holds `units[s] − 1`
blocks stacked on a leading axis. The transition is `transitions.pool_pad_transition`
("stored": 2x2 average pool + symmetric zero channel padding of every state, input stored) or
`transitions.space_to_depth_step` ("reversible": (H, W, C) -> (H/2, W/2, 4C) of every state;
nothing stored), which forces widths[s] = 4 widths[s−1].

Arithmetic: every step, start rule and transition is built through the `Arithmetic` passed to
`body_plan` (`revjax.arithmetic`; default float), so the same body runs on int32 fixed-point
states with bit-exact reconstruction under `exact_arithmetic(frac_bits)`; the "stored"
transition runs in float between stages (its input is stored) and re-encodes its output.

Parameter tree (one entry per stage, the layout `weight_smoothness` relies on)::

    {"stage1": {"first": block, "rest": stacked blocks}, "stage2": {...}, "stage3": {...}}
    hamiltonian block: {"F": {"K", "b1", "b2"}, "G": {"K", "b1", "b2"}} (no F/b1 in block 0)
    midpoint block:    {"W", "b"};   leapfrog block: {"K", "b"}

Kernels use the reference init: truncated normal, std sqrt(2 / (9 C_out)); biases 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import reduce
from operator import getitem
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from revjax import engine, integrators, tasks, transitions
from revjax.arithmetic import FLOAT, Arithmetic
from revjax.conv import conv, conv_transpose

__all__ = [
    "FAMILIES",
    "BLOCKS",
    "TRANSITIONS",
    "START_RULES",
    "WEIGHT_SMOOTH_RATE",
    "hamiltonian_residual",
    "init_stage_params",
    "hamiltonian_block_step",
    "antisymmetric_conv",
    "midpoint_residual",
    "midpoint_block_step",
    "midpoint_start",
    "leapfrog_force",
    "leapfrog_block_step",
    "leapfrog_start",
    "init_block",
    "init_stage",
    "ChangConfig",
    "make_config",
    "check_input",
    "reversible_widths",
    "body_plan",
    "body_layers",
    "body_params",
    "init_body_params",
    "to_state",
    "from_state",
    "weight_smoothness",
]

FAMILIES = ("hamiltonian", "midpoint", "leapfrog")
TRANSITIONS = ("stored", "reversible")
BLOCKS = {"hamiltonian": ("bn", "bias"), "midpoint": ("bias",), "leapfrog": ("bias",)}
START_RULES = {
    "hamiltonian": (None,),
    "midpoint": ("euler",),
    "leapfrog": ("zero_velocity", "second_order"),
}
WEIGHT_SMOOTH_RATE = 2e-4  # official code's `weight_smooth_rate` (Chang et al. 2018, Sec. 3)
KERNEL_SIZE = 3
_KERNEL_NAMES = ("K", "W")

PyTree = Any


# -------------------------------------------------------------- Residual functions and steps (pure)


def hamiltonian_residual(h: float) -> Callable[..., jax.Array]:
    """F(p, z) = h · K^T ReLU(K (z + β₁) + β₂); β₁ = p["b1"] is optional (first block).

    Shapes: z (N, H, W, C/2), p["K"] (3, 3, C/2, C/2), p["b1"], p["b2"] (C/2,).
    """
    h = integrators.check_step_size(h)

    def residual(p, z, rng=None):
        if "b1" in p:
            z = z + p["b1"]
        return h * conv_transpose(jax.nn.relu(conv(z, p["K"]) + p["b2"]), p["K"])

    return residual


def hamiltonian_block_step(h: float = 1.0, arith: Arithmetic = FLOAT) -> engine.InvertibleStep:
    """Verlet block Y' = Y + F(Z), Z' = Z − G(Y'); params {"F": ..., "G": ...}, state (Y, Z)."""
    residual = hamiltonian_residual(h)
    return arith.verlet_step(residual, residual, name="hamiltonian")


def antisymmetric_conv(y: jax.Array, kernel: jax.Array) -> jax.Array:
    """K y = W y − W^T y for a square kernel W (3, 3, C, C): an anti-symmetric operator."""
    if kernel.shape[-1] != kernel.shape[-2]:
        raise ValueError(f"anti-symmetric conv needs a square kernel, got {kernel.shape}")
    return conv(y, kernel) - conv_transpose(y, kernel)


def midpoint_residual(p, y, rng=None) -> jax.Array:
    """g(Y) = ReLU((W − W^T) Y + b); Y (N, H, W, C), p["W"] (3, 3, C, C), p["b"] (C,)."""
    return jax.nn.relu(antisymmetric_conv(y, p["W"]) + p["b"])


def midpoint_block_step(h: float, arith: Arithmetic = FLOAT) -> engine.InvertibleStep:
    """(Y_{j−1}, Y_j) -> (Y_j, Y_{j−1} + 2h g(Y_j))."""
    return arith.midpoint_step(midpoint_residual, h, name="midpoint")


def midpoint_start(h: float, arith: Arithmetic = FLOAT) -> engine.InvertibleStep:
    """Forward-Euler start Y_0 -> (Y_0, Y_0 + h g_0(Y_0)); params of block 0."""
    return arith.euler_start(midpoint_residual, h, name="midpoint_start")


def leapfrog_force(p, y, rng=None) -> jax.Array:
    """f(Y) = −K^T ReLU(K Y + b); Y (N, H, W, C), p["K"] (3, 3, C, C), p["b"] (C,)."""
    return -conv_transpose(jax.nn.relu(conv(y, p["K"]) + p["b"]), p["K"])


def leapfrog_block_step(h: float, arith: Arithmetic = FLOAT) -> engine.InvertibleStep:
    """(Y_{j−1}, Y_j) -> (Y_j, 2Y_j − Y_{j−1} + h² f(Y_j))."""
    return arith.leapfrog_step(leapfrog_force, h, name="leapfrog")


def leapfrog_start(rule: str, h: float, arith: Arithmetic = FLOAT) -> engine.InvertibleStep:
    """ "zero_velocity": Y_0 -> (Y_0, Y_0); "second_order": Y_0 -> (Y_0, Y_0 + (h²/2) f_0(Y_0))."""
    h = integrators.check_step_size(h)
    if rule == "zero_velocity":
        return arith.duplicate_state()
    if rule == "second_order":
        return arith.euler_start(leapfrog_force, h * h / 2, name="leapfrog_start")
    raise ValueError(f"unknown leapfrog start rule {rule!r}; use one of {START_RULES['leapfrog']}")


# --------------------------------------------------------------------------- Parameters


def _kernel(key, channels_in, channels_out, dtype):
    std = (2.0 / (KERNEL_SIZE * KERNEL_SIZE * channels_out)) ** 0.5
    shape = (KERNEL_SIZE, KERNEL_SIZE, channels_in, channels_out)
    return jax.nn.initializers.truncated_normal(stddev=std, dtype=dtype)(key, shape)


def init_block(
    key: jax.Array, family: str, width: int, *, input_bias: bool = True, dtype=jnp.float32
) -> dict:
    """Parameters of one block acting on a state of `width` channels (see module docstring)."""
    if family == "hamiltonian":
        half = width // 2
        parts = {}
        for name, k in zip(("F", "G"), jax.random.split(key)):
            parts[name] = {"K": _kernel(k, half, half, dtype), "b2": jnp.zeros(half, dtype)}
            if input_bias or name == "G":
                parts[name]["b1"] = jnp.zeros(half, dtype)
        return parts
    name = {"midpoint": "W", "leapfrog": "K"}[family]
    return {name: _kernel(key, width, width, dtype), "b": jnp.zeros(width, dtype)}


def init_stage(
    key: jax.Array,
    family: str,
    first_width: int,
    width: int,
    units: int,
    *,
    first_input_bias: bool = True,
    dtype=jnp.float32,
) -> dict:
    """{"first": block at `first_width`, "rest": `units − 1` blocks at `width`, stacked}."""
    k_first, k_rest = jax.random.split(key)
    stage = {
        "first": init_block(k_first, family, first_width, input_bias=first_input_bias, dtype=dtype)
    }
    if units > 1:
        keys = jax.random.split(k_rest, units - 1)
        stage["rest"] = jax.vmap(lambda k: init_block(k, family, width, dtype=dtype))(keys)
    return stage


# -------------------------------------------------------------------- Configuration and body layout


class ChangConfig(NamedTuple):
    """A validated body configuration.

    Attributes:
      family: "hamiltonian" | "midpoint" | "leapfrog".
      units: blocks per stage (each >= 1).
      widths: state channels per stage (a Hamiltonian state splits into two halves).
      h: step size (folded into F, G for the Hamiltonian block).
      transition: "stored" (pool + pad, input stored) | "reversible" (space-to-depth).
      start: start rule (None for the Hamiltonian, "euler" for the midpoint net,
        "zero_velocity" | "second_order" for the leapfrog net).
      block: Hamiltonian residual function: "bn" (BN inside, no biases; the official code's
        final version) or "bias" (bias-only); the midpoint and leapfrog nets are "bias".
    """

    family: str
    units: tuple[int, ...]
    widths: tuple[int, ...]
    h: float
    transition: str
    start: str | None
    block: str = "bias"


def reversible_widths(widths: Sequence[int]) -> tuple[int, ...]:
    """(w0, 4 w0, 16 w0, ...): the stage widths a space-to-depth transition produces from w0."""
    widths = tuple(int(w) for w in widths)
    return tuple(widths[0] * 4**s for s in range(len(widths)))


def make_config(
    family: str,
    units: Sequence[int],
    widths: Sequence[int],
    h: float,
    transition: str = "stored",
    start: str | None = None,
    block: str = "bias",
) -> ChangConfig:
    """Validate and freeze a body configuration (errors before anything is traced).

    `start=None` picks the family default (midpoint "euler", leapfrog "zero_velocity").
    `block="bn"` (Hamiltonian only) declares that the caller supplies batch-normalised
    residual functions (`body_plan(config, step, first_step)`; see `revjax.models.chang`).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; use one of {FAMILIES}")
    if block not in BLOCKS[family]:
        raise ValueError(
            f"block {block!r} does not apply to the {family} network; use one of {BLOCKS[family]}"
        )
    if transition not in TRANSITIONS:
        raise ValueError(f"unknown transition {transition!r}; use one of {TRANSITIONS}")
    if start is None:
        start = START_RULES[family][0]
    if start not in START_RULES[family]:
        raise ValueError(
            f"start rule {start!r} does not apply to the {family} network; "
            f"use one of {START_RULES[family]}"
        )
    units = tuple(int(u) for u in units)
    widths = tuple(int(w) for w in widths)
    if len(units) != len(widths) or not units:
        raise ValueError(f"need one width per stage: units {units}, widths {widths}")
    if min(units) < 1:
        raise ValueError(f"every stage needs >= 1 block, got units {units}")
    if min(widths) < 1:
        raise ValueError(f"widths must be >= 1, got {widths}")
    h = integrators.check_step_size(h)
    if family == "hamiltonian" and any(w % 2 for w in widths):
        raise ValueError(
            f"Hamiltonian widths {widths} must be even: the state splits into two equal "
            "channel halves (Y, Z)"
        )
    state = widths if family != "hamiltonian" else tuple(w // 2 for w in widths)
    for s in range(1, len(widths)):
        old, new = state[s - 1], state[s]
        if transition == "reversible" and new != 4 * old:
            raise ValueError(
                f"transition='reversible' (space-to-depth) maps {widths[s - 1]} channels to "
                f"{4 * widths[s - 1]}, but stage {s + 1} has width {widths[s]}; use widths "
                "w, 4w, 16w (`reversible_widths`)"
            )
        if transition == "stored" and (new < old or (new - old) % 2):
            raise ValueError(
                f"transition='stored' zero-pads each state from {old} to {new} channels "
                "symmetrically: the difference must be even and >= 0"
            )
    return ChangConfig(family, units, widths, h, transition, start, block)


def check_input(shape: Sequence[int], config: ChangConfig) -> None:
    """The spatial size must be halvable at every one of the len(widths) − 1 transitions."""
    spatial = list(shape[1:-1])
    for s in range(1, len(config.widths)):
        transitions.check_halvable(
            (shape[0], *spatial, shape[-1]), f"stage {s + 1} transition of the {config.family} net"
        )
        spatial = [size // 2 for size in spatial]


def _start(config: ChangConfig, arith: Arithmetic) -> engine.InvertibleStep | None:
    if config.family == "midpoint":
        return midpoint_start(config.h, arith)
    if config.family == "leapfrog":
        return leapfrog_start(config.start, config.h, arith)
    return None


def _transition(config: ChangConfig, stage: int, arith: Arithmetic) -> engine.Layer:
    if config.transition == "reversible":
        return arith.space_to_depth_step()
    width = config.widths[stage]
    out = width // 2 if config.family == "hamiltonian" else width
    return arith.stored_transition(transitions.pool_pad_transition(out))


def body_plan(
    config: ChangConfig,
    arith: Arithmetic = FLOAT,
    step: engine.InvertibleStep | None = None,
    first_step: engine.InvertibleStep | None = None,
) -> list[tuple[engine.Layer, tuple[str, ...] | None]]:
    """The body as (layer, params path) pairs; a path indexes `init_body_params`' tree.

    Every layer is built through `arith`. `step` (default: the family's bias-only step) runs
    every block; `first_step` (default `step`) runs the network's very first block, whose
    residual function F skips its input bias or input batch norm.
    """
    if step is None:
        steps = {"hamiltonian": hamiltonian_block_step, "midpoint": midpoint_block_step}
        step = steps.get(config.family, leapfrog_block_step)(config.h, arith)
    first_step = step if first_step is None else first_step
    plan: list[tuple[engine.Layer, tuple[str, ...] | None]] = []
    start = _start(config, arith)
    start_has_params = config.family == "midpoint" or config.start == "second_order"
    for s, units in enumerate(config.units):
        key = f"stage{s + 1}"
        if s == 0 and start_has_params:
            plan.append((start, (key, "first")))
        else:
            if s == 0 and start is not None:
                plan.append((start, None))
            plan.append((first_step if s == 0 else step, (key, "first")))
        if s > 0:
            plan.append((_transition(config, s, arith), None))
        if units > 1:
            plan.append((engine.Scan(step, name=f"{key}_rest"), (key, "rest")))
    return plan


def body_layers(config: ChangConfig, arith: Arithmetic = FLOAT) -> list[engine.Layer]:
    """The engine layers of the body (see module docstring and `body_plan`)."""
    return [layer for layer, _ in body_plan(config, arith)]


def body_params(tree: dict, config: ChangConfig) -> list[PyTree]:
    """Parameters aligned with `body_layers(config)`, read from the stage tree."""
    return [None if path is None else reduce(getitem, path, tree) for _, path in body_plan(config)]


def init_stage_params(key: jax.Array, config: ChangConfig, stage: int, dtype=jnp.float32):
    """Parameters of stage `stage` (0-based): its first block sits at the previous width."""
    sizes = (config.widths[max(stage - 1, 0)], config.widths[stage], config.units[stage])
    first_input_bias = not (stage == 0 and config.family == "hamiltonian")
    return init_stage(key, config.family, *sizes, first_input_bias=first_input_bias, dtype=dtype)


def init_body_params(key: jax.Array, config: ChangConfig, dtype=jnp.float32) -> dict:
    """{"stage1": ..., "stage2": ..., ...}, as described in the module docstring."""
    keys = jax.random.split(key, len(config.units))
    return {f"stage{s + 1}": init_stage_params(k, config, s, dtype) for s, k in enumerate(keys)}


def to_state(x: jax.Array, config: ChangConfig) -> PyTree:
    """Body input: (Y, Z) channel halves for the Hamiltonian net, else the tensor Y_0."""
    return tuple(jnp.split(x, 2, axis=-1)) if config.family == "hamiltonian" else x


def from_state(state: PyTree, config: ChangConfig) -> jax.Array:
    """Features for the head: concat(Y, Z) for the Hamiltonian net, else the current Y_N."""
    return jnp.concatenate(state, axis=-1) if config.family == "hamiltonian" else state[1]


# -------------------------------------------------------------------------- Weight smoothness decay


def _stage_nodes(tree: PyTree):
    """Every dict in `tree` that holds stacked blocks under "rest"."""
    if isinstance(tree, dict) or hasattr(tree, "items"):
        if "rest" in tree:
            yield tree
        else:
            for value in tree.values():
                yield from _stage_nodes(value)


def _lookup(tree: PyTree, path) -> jax.Array | None:
    node = tree
    for entry in path:
        key = getattr(entry, "key", None)
        if key is None or not hasattr(node, "keys") or key not in node:
            return None
        node = node[key]
    return node


@tasks.register_regulariser("weight_smoothness")
def weight_smoothness(params: PyTree, rate: float = WEIGHT_SMOOTH_RATE) -> jax.Array:
    """R = rate · Σ_stages Σ_j ½‖K_{j+1} − K_j‖²_F, over consecutive blocks of each stage.

    Official form (Chang et al. 2018, Sec. 3, "Regularization", as in the official code:
    `tf.nn.l2_loss` includes the ½; rate = 2e-4). Kernels are the leaves named "K" or "W"
    (each Hamiltonian F- and G-kernel sequence separately); biases are not smoothed. In a stage
    the sequence is the "first" block followed by the stacked "rest" blocks; pairs of different
    shapes (a first block at the previous stage's width) are skipped.

    Args:
      params: a model's variables (or their "params" entry), or a body tree from
        `init_body_params`: any pytree whose stage dicts hold "first" and "rest".
      rate: λ_s.

    Returns:
      A scalar, differentiable in `params` (add it to the loss).

    Raises:
      ValueError: `params` contains no stage of stacked blocks (not a Chang et al. model).
    """
    if hasattr(params, "keys") and "params" in params:
        params = params["params"]
    stages = list(_stage_nodes(params))
    if not stages:
        raise ValueError(
            "weight_smoothness found no stage of stacked blocks (dicts with 'first'/'rest') in "
            "these parameters; it applies to Chang et al.'s networks (hamiltonian*, midpoint*, "
            "leapfrog*) only"
        )
    total = jnp.zeros(())
    for stage in stages:
        for path, stacked in jax.tree_util.tree_flatten_with_path(stage["rest"])[0]:
            if getattr(path[-1], "key", None) not in _KERNEL_NAMES:
                continue
            total = total + 0.5 * jnp.sum(jnp.square(stacked[1:] - stacked[:-1]))
            first = _lookup(stage.get("first"), path)
            if first is not None and first.shape == stacked.shape[1:]:
                total = total + 0.5 * jnp.sum(jnp.square(stacked[0] - first))
    return rate * total

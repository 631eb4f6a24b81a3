"""RevUp classifiers: Fixup-initialised invertible residual networks, no batch norm.

"Reversible Fixup Networks for Memory-Efficient Training" (RevUp, 2019) survives as an abstract;
the design (revjax.families.revup) combines i-ResNet blocks (Behrmann et al. (2019),
arXiv:1811.00995) with Fixup initialisation (Zhang, Dauphin, Ma (2019), arXiv:1901.09321).

Layout (NHWC)::

    stem -> [stage 0: n_0 blocks] -> down -> [stage 1: n_1 blocks] -> ... -> head

- Blocks: `revup.invertible_residual_step` over the Fixup branch (spectrally normalised 3x3
  convs, coefficient c), one `engine.Scan` per stage; gradients by fixed-point reconstruction.
- `transition="stored"` (default): the first block of each later stage is the Fixup strided
  block (an `engine.Transition`, input stored, widths exactly `widths`), so the network has
  exactly the parameters of the Fixup ResNet it replaces, as the RevUp abstract states ("no
  extra parameters"): revup20 has 268,393 (FixupResNet-20), revup110 1,720,138.
  `transition="reversible"`: i-RevNet space-to-depth ψ between stages (Jacobsen, Smeulders,
  Oyallon (2018), arXiv:1802.07088; fully invertible, nothing stored). It costs parameters: the
  state has 4^s·C_0 channels in stage s and every block's W1: 4^s·C_0 -> widths[s],
  W2: widths[s] -> 4^s·C_0 are wider, so revup20 has 1,012,201 parameters (3.8x FixupResNet-20).
- `stem="conv"`: ReLU(conv_{k×k, stride}(x) + b) (+ 3x3/2 max-pool when `stem_pool`), stored
  (Transition; its input is the image). `stem="pad"`: injective zero-channel padding to
  `widths[0]` (i-RevNet style, invertible, no parameters).
- Head: global average pool of ReLU(x), + scalar bias, dense; weights and bias 0 (Fixup).

Spectral-norm power-iteration vectors (right v_i and left u_i = K_i v_i/‖K_i v_i‖ per
convolution per block, one example's shape each) live in the "spectral_stats" collection. They
advance `n_power_iterations` times per call, one block at a time, when `train=True`, which
therefore requires the collection to be mutable (a ValueError otherwise, as Flax's BatchNorm
raises for an immutable "batch_stats")::

    y, updates = model.apply(variables, x, train=True, mutable=["spectral_stats"])

With `train=False` they are used as stored. Each block normalises its own raw weights inside
the engine step with σ̂_i = u_iᵀ K_i v_i (`revup.spectral_fixup_branch`), so the reversible
training step keeps no per-block activation for the norm estimate and no depth-stacked
normalised weights: its compiled temp memory does not grow with depth (tested; numbers in README).

Nothing depends on the mini-batch (no BN): an example's logits are the same alone or in a batch.
`model.apply(variables, x, method="fixed_point_trace")` returns the `FixedPointInfo` of every
solve the reversible backward pass performs (iterations, residual, converged).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from revjax import arithmetic, engine
from revjax.conv import conv
from revjax.drift import ReversibleModel, sow_reconstruction_error
from revjax.families import revup
from revjax.models.heads import check_num_classes, conv_init
from revjax.models.registry import CheckedConfig, preset, register
from revjax.spectral_norm import check_coefficient
from revjax.transitions import check_halvable, space_to_depth_step, zero_pad_channels_step

__all__ = ["RevUp", "TRANSITIONS", "STEM_MODES"]

TRANSITIONS = ("reversible", "stored")
STEM_MODES = ("conv", "pad")
STATS = "spectral_stats"


def _stem_transition(pool: bool, stride: int) -> engine.Transition:
    def apply(p, x, rng=None):
        h = jax.nn.relu(conv(x, p["w"], stride=stride) + p["b"])
        if pool:
            h = nn.max_pool(h, (3, 3), strides=(2, 2), padding="SAME")
        return h

    return engine.Transition(apply, name="stem")


_FLOAT_ONLY = (
    ": RevUp's i-ResNet blocks are inverted by a fixed-point iteration, not by subtracting a "
    "recomputed increment, so fixed-point states cannot make them exactly invertible (exact "
    "arithmetic: revnet*, hamiltonian*, midpoint*, leapfrog*, hyperbolic*, lean_hamiltonian*)"
)


class RevUp(CheckedConfig, ReversibleModel, nn.Module):
    """RevUp classifier. Input (N, H, W, C_in) -> logits (N, num_classes).

    Attributes:
      units: residual blocks per stage (n_s ≥ 1).
      widths: branch widths per stage (CIFAR: 16, 32, 64).
      num_classes: logits.
      c: spectral-norm coefficient in (0, 1); Lip(g) < c.
      max_iter, tol: fixed-point budget of the inverse (tol relative to ‖y‖ per example).
      on_nonconvergence: "error" | "flag" (see revjax.families.revup).
      transition: "stored" (default: the Fixup ResNet's parameters) | "reversible" (ψ; more
        parameters, see the module docstring).
      stem: "conv" | "pad"; stem_kernel, stem_strides, stem_pool configure the conv stem.
      activation: "relu" | "elu".
      n_power_iterations: power-iteration steps per training call (i-ResNet block default 5;
        the CIFAR script uses 1, which lags behind W2 growing from 0 under Adam).
      n_init_power_iterations: warm-up steps at init (so σ̂ is accurate from the start).
      backprop: "reversible" | "store" | "remat".
      arithmetic: "float" only. The field exists so that `arithmetic="exact"` (the int32
        fixed-point states of `revjax.fixed_point`, offered by every additive family) is
        refused with a clear error: an i-ResNet block's inverse is a fixed-point iteration,
        not the subtraction of a recomputed increment, so rounding cannot make it exact.
      dtype: dtype of parameters, statistics and activations.
    """

    units: Sequence[int] = (3, 3, 3)
    widths: Sequence[int] = (16, 32, 64)
    num_classes: int = 10
    c: float = 0.9
    max_iter: int = 100
    tol: float = 1e-5
    on_nonconvergence: str = "error"
    transition: str = "stored"
    stem: str = "conv"
    stem_kernel: int = 3
    stem_strides: int = 1
    stem_pool: bool = False
    activation: str = "relu"
    n_power_iterations: int = 5
    n_init_power_iterations: int = 20
    backprop: str = "reversible"
    arithmetic: str = "float"
    dtype: jnp.dtype = jnp.float32

    def check_config(self) -> None:
        """ValueError for a configuration that cannot be built (before any tracing)."""
        arithmetic.get(self.arithmetic, supported=("float",), why=_FLOAT_ONLY)
        check_coefficient(self.c)
        revup.check_fixed_point_config(self.max_iter, self.tol, self.on_nonconvergence)
        check_num_classes(self.num_classes)
        engine.check_backprop(self.backprop)
        if self.transition not in TRANSITIONS:
            raise ValueError(f"transition must be one of {TRANSITIONS}, got {self.transition!r}")
        if self.stem not in STEM_MODES:
            raise ValueError(f"stem must be one of {STEM_MODES}, got {self.stem!r}")
        if self.activation not in revup.ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(revup.ACTIVATIONS)}")
        if len(self.units) != len(self.widths) or not self.units:
            raise ValueError("units and widths must be non-empty and of equal length")
        if any(int(n) < 1 for n in self.units) or any(int(w) < 1 for w in self.widths):
            raise ValueError(f"units and widths must be >= 1: {self.units}, {self.widths}")
        if self.n_power_iterations < 0 or self.n_init_power_iterations < 0:
            raise ValueError("power-iteration counts must be >= 0")

    def _body(self, x: jax.Array, train: bool):
        """(layers, params, residual_fns) of the engine body, and the stats updates applied."""
        dtype = self.dtype
        num_branches = sum(self.units)
        update = train and not self.is_initializing() and self.n_power_iterations > 0
        if update and not self.is_mutable_collection(STATS):
            raise ValueError(
                "RevUp(train=True) advances the spectral-norm power iteration, whose state is "
                f"the {STATS!r} collection, but that collection is not mutable here, so the "
                "update would be silently dropped and the Lipschitz bound would rest on a stale "
                "norm estimate. Pass it as mutable and keep the returned state:\n"
                f"    logits, updates = model.apply(variables, x, train=True, mutable=[{STATS!r}])"
                "\nor mutable=[k for k in variables if k != 'params'] (as revjax.train does); "
                "use train=False to apply the model with the stored state."
            )
        layers, params, fns = [], [], []

        def add(layer, p=None, g=None):
            layers.append(layer)
            params.append(p)
            fns.append(g)

        n, h, w, ch = x.shape
        if self.stem == "conv":
            k, width = self.stem_kernel, self.widths[0]
            stem = {
                "w": self.param("stem_w", conv_init(k, width), (k, k, ch, width), dtype),
                "b": self.param("stem_b", nn.initializers.zeros, (), dtype),
            }
            add(_stem_transition(self.stem_pool, self.stem_strides), stem)
            h, w = -(-h // self.stem_strides), -(-w // self.stem_strides)
            if self.stem_pool:
                h, w = -(-h // 2), -(-w // 2)
        else:
            if ch > self.widths[0]:
                raise ValueError(f"stem='pad' needs widths[0] >= input channels ({ch})")
            add(zero_pad_channels_step(self.widths[0] - ch))
        ch = self.widths[0]

        for s, (blocks, width) in enumerate(zip(self.units, self.widths)):
            if s > 0:
                check_halvable((n, h, w, ch), f"stage {s} downsampling")
                if self.transition == "reversible":
                    add(space_to_depth_step())
                    ch = 4 * ch
                else:
                    down = self.param(
                        f"down{s}", revup.init_fixup_downsample, ch, width, num_branches, dtype
                    )
                    add(revup.fixup_downsample_block(width, self.activation), down)
                    ch, blocks = width, blocks - 1
                h, w = h // 2, w // 2
            if blocks == 0:
                continue

            def init_branch(key, ch=ch, width=width):
                return revup.init_fixup_branch(key, ch, width, num_branches, self.c, dtype)

            def init_raw(key, blocks=blocks, init_branch=init_branch):
                return jax.vmap(init_branch)(jax.random.split(key, blocks))

            def init_stats(raw, blocks=blocks, spatial=(h, w)):
                keys = jax.random.split(self.make_rng("params"), blocks)
                iterations = self.n_init_power_iterations
                return jax.vmap(
                    partial(revup.init_branch_stats, spatial=spatial, num_iterations=iterations)
                )(keys, raw)

            raw = self.param(f"stage{s}", init_raw)
            stats = self.variable(STATS, f"stage{s}", init_stats, raw)
            if update:
                # One block at a time (lax.map, not vmap): the iteration's working set is one
                # block's, not a depth-stacked copy.
                stats.value = jax.lax.map(
                    lambda rs: revup.advance_branch_stats(*rs, self.n_power_iterations),
                    (raw, stats.value),
                )
            # Raw weights + state go into the engine; each block normalises its own weights.
            p = {**raw, **stats.value}
            g = partial(revup.spectral_fixup_branch, c=self.c, activation=self.activation)
            step = revup.invertible_residual_step(
                g,
                max_iter=self.max_iter,
                tol=self.tol,
                on_nonconvergence=self.on_nonconvergence,
                name=f"revup_stage{s}",
            )
            add(engine.Scan(step, name=f"stage{s}"), p, g)
        return layers, params, fns

    def _head(self, h: jax.Array) -> jax.Array:
        feats = jnp.mean(jax.nn.relu(h), axis=(1, 2))
        feats = feats + self.param("head_bias", nn.initializers.zeros, (), self.dtype)
        return nn.Dense(
            check_num_classes(self.num_classes),
            kernel_init=nn.initializers.zeros,
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            param_dtype=self.dtype,
            name="head",
        )(feats)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, *, trace: bool = False):
        """Logits (N, num_classes); with `trace=True` the body's fixed-point trace instead."""
        x = x.astype(self.dtype)
        layers, params, fns = self._body(x, train)
        if trace:
            return revup.reconstruction_trace(
                layers, params, fns, x, max_iter=self.max_iter, tol=self.tol
            )
        h = engine.apply(layers, params, x, backprop=self.backprop)
        sow_reconstruction_error(self, layers, params, x)
        return self._head(h)

    def fixed_point_trace(self, x: jax.Array) -> tuple:
        """Per-layer `FixedPointInfo` of the reversible backward pass at input x (eval mode).

        One entry per body layer (stem, stages, transitions); residual stages give
        FixedPointInfo with (depth,) leaves, other layers None.
        """
        return self(x, train=False, trace=True)


RENAMED = {
    "stage_sizes": "units (blocks per stage)",
    "downsample": "transition",
    "stem_stride": "stem_strides",
}

# RevUp-(6n+2) on CIFAR: n blocks in each of three stages, widths 16/32/64.
for _n in (3, 9, 18):
    register(f"revup{6 * _n + 2}", stages=True, renamed=RENAMED)(
        preset(RevUp, units=(_n, _n, _n), widths=(16, 32, 64))
    )

# ImageNet-shaped RevUp: 7x7/2 conv stem + max-pool, [2,2,2,2] blocks, widths 64..512, stored
# strided transitions (ResNet-18 layout); `transition="reversible"` makes the state 64·4^s
# channels wide (large).
register("revup_imagenet", stages=True, renamed=RENAMED)(
    preset(
        RevUp,
        units=(2, 2, 2, 2),
        widths=(64, 128, 256, 512),
        num_classes=1000,
        stem_kernel=7,
        stem_strides=2,
        stem_pool=True,
        transition="stored",
    )
)

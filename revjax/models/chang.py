"""Chang et al. (2018) classifiers: Hamiltonian, midpoint and leapfrog networks.

Chang, Meng, Haber, Ruthotto, Begert, Holtham, "Reversible Architectures for Arbitrarily Deep
Residual Neural Networks", AAAI 2018, arXiv:1709.03698 (Sections 3-4; official TensorFlow code
`changebo/revnet-public`, `hamiltonian_model.py`, `cifar_configs.py`).

    x (N, H, W, 3) -> Stem: conv3x3(3 -> f0) + BN + ReLU            (stored, autodiff)
      -> body: 3 stages of reversible blocks (`revjax.families.chang`)   (reconstructed)
      -> ClassifierHead: BN + ReLU + global average pool + dense        (stored, autodiff)

`widths = (w1, w2, w3)`: the state width of each stage; the stem outputs w1 channels.
Stage transitions: "stored" (the paper's: the first block of a new stage runs at the old width, then
2x2 average pool + zero channel padding, input stored) or "reversible" (space-to-depth of every
state, so widths must be w1, 4 w1, 16 w1; a factory called with transition="reversible" and no
`widths` uses `reversible_widths` of its defaults, e.g. hamiltonian74 -> (32, 128, 512)).

Hamiltonian block, `block=` (state (Y, Z) = channel halves, K a 3x3 kernel C/2 -> C/2 shared
by the convolution and its adjoint K^T)::

    "bn"   (default; the official code's final version, commit 689054c):
           F(z) = h · K^T ReLU(BN₂(K · BN₁(z)))     no biases; BN₁ skipped in the network's
                                                     very first F ("no_activation")
    "bias" (the earlier official version):
           F(z) = h · K^T ReLU(K (z + β₁) + β₂)     β₁ omitted in the very first F
    Y' = Y + F(Z),   Z' = Z − G(Y')                  (G of the same form, own K and BNs)

Why "bn" is the default, and why h = 0.1: with the reference initialisation λ_max(K^T K) ≈ 6.8 for a
stage-1 kernel, so the bias-only block at the official h = 1 has h²λ ≈ 7 ≫ 4, beyond the Verlet
step's frozen-coefficient stability bound h²λ_max ≤ 4: at the depth of hamiltonian218 the state
grows by ~10¹² and float32 reconstruction (hence the reversible gradient) is lost. BN₂ renormalises
the pre-activation of every block, so each block's increment stays O(h) whatever the state's scale,
but BN₁'s 1/std(z) factor still amplifies reconstruction error at large h. Measured at
initialisation (float32, CIFAR-shaped input, batch 4-8, training-mode BN): BN block at h = 1,
hamiltonian74: body reconstruction error 1.7e-3, reversible vs stored gradients 2.3e-3 relative; at
h = 0.5, hamiltonian218: 7.7e-5 and 4.1e-5; at h = 0.1, hamiltonian218: 6.8e-6 and 3.0e-4. The
default is therefore h = 0.1 for both blocks (the value some official commits hard-code); BN₂'s
learnable scale lets training grow the increments where the data needs it. Batch norm follows the
RevNet recipe (`revjax.models.revnet`): the reconstruction normalises with the forward pass's batch
statistics, and the running averages are updated once per training step.
`tests/test_zoo_defaults.py` checks every registered depth at its defaults.

Registered names and depth formulas (a "layer" is one conv operation K or K^T):

- hamiltonianD: 4 convs per block (K, K^T in F and G): D = 3 · 4n + 2 = 12n + 2. hamiltonian74
  (n = 6, widths 32,64,112), hamiltonian218 (n = 18, 32,64,128), hamiltonian1202
  (n = 100, 32,64,128). With `block="bias"` the parameter counts are those of the official
  configurations (429,690 / 1,683,034 / 9,654,746 for 10 classes); the BN block replaces each
  residual function's two bias vectors (C/2 each) by two BN scale/offset pairs (2 · C/2 each), minus
  the first F's BN₁.
- midpointD, leapfrogD: 2 convs per block (W and W^T, or K and K^T; the start block counts
  as block 0): D = 3 · 2n + 2 = 6n + 2. midpoint62 / leapfrog62 (n = 10) use widths 16,32,56 (no
  reference configuration exists for them: the official code has only the Hamiltonian net): the
  state is not split, so their 3x3 kernels have the shapes of the Hamiltonian-74 kernels.

Default step sizes: h = 0.1 for the Hamiltonian net (either block; see above). No reference exists
for the other two; the defaults h = 0.1 (midpoint) and h = 0.5 (leapfrog) satisfy the
frozen-coefficient conditions at the reference initialisation (power iteration, 16x16 images, 16-56
channels: λ_max(K^T K) ≈ 6.1-6.3, so h²λ_max ≈ 1.6 < 4; ω_max(W − W^T) ≈ 3.6-3.9, so
hω_max ≈ 0.39 < 1), and their float32 reconstruction at initialisation is within 1e-4
(tests/test_zoo_defaults.py).

Exact arithmetic, `arithmetic="exact"` (and `frac_bits`, default 20), on all three families and both
blocks: the body is built through `revjax.arithmetic.get(arithmetic, frac_bits)`, so the stem's
output is encoded to int32 fixed-point states and every block, start rule and "reversible"
transition is exact: the body's reconstruction is bit-exact at any depth. The "stored" transition
(pool + pad, its input stored) runs in float and re-encodes its output; stem and head are float
(autodiff). The "bn" block's batch norm works unchanged (the reconstruction normalises with the same
batch, the running averages are updated once). Gradients are the straight-through ones; a
fixed-point overflow makes the logits NaN.

All fields are overridable: `create("hamiltonian74", units=(334, 333, 333))`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from revjax import arithmetic, engine
from revjax.arithmetic import DEFAULT_FRAC_BITS
from revjax.conv import conv, conv_transpose
from revjax.drift import ReversibleModel, sow_reconstruction_error
from revjax.families import chang
from revjax.families.revnet import initial_batch_stats
from revjax.models.heads import ClassifierHead, Stem, batch_norm, check_num_classes, conv_init
from revjax.models.registry import CheckedConfig, register
from revjax.nn import residual_with_stats

__all__ = ["ChangNet", "HamiltonianResidual", "DEFAULT_STEP_SIZES", "default_step_size"]

DEFAULT_STEP_SIZES = {
    ("hamiltonian", "bn"): 0.1,
    ("hamiltonian", "bias"): 0.1,
    ("midpoint", "bias"): 0.1,
    ("leapfrog", "bias"): 0.5,
}
DEFAULT_BLOCK = {"hamiltonian": "bn", "midpoint": "bias", "leapfrog": "bias"}


def default_step_size(family: str, block: str | None = None) -> float:
    """The registered default h of a family and block (see the module docstring)."""
    return DEFAULT_STEP_SIZES[(family, block or DEFAULT_BLOCK[family])]


class HamiltonianResidual(nn.Module):
    """F(z) = h · K^T ReLU(BN₂(K · BN₁(z))) on z (N, H, W, C); K (3, 3, C, C), no biases.

    C is read from z. `input_norm=False` drops BN₁ (the network's very first F).
    Parameters {"K", "bn2"[, "bn1"]}; batch statistics {"bn2"[, "bn1"]}.
    """

    h: float
    input_norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
        c = z.shape[-1]
        shape = (chang.KERNEL_SIZE, chang.KERNEL_SIZE, c, c)
        kernel = self.param("K", conv_init(chang.KERNEL_SIZE, c), shape, self.dtype)
        if self.input_norm:
            z = batch_norm(self.dtype, "bn1")(z, use_running_average=not train)
        v = batch_norm(self.dtype, "bn2")(conv(z, kernel), use_running_average=not train)
        return self.h * conv_transpose(jax.nn.relu(v), kernel)


class ChangNet(CheckedConfig, ReversibleModel, nn.Module):
    """Stem + reversible body of Hamiltonian / midpoint / leapfrog blocks + classifier head.

    Attributes:
      family: "hamiltonian" | "midpoint" | "leapfrog".
      units: blocks per stage.
      widths: state width per stage (the stem outputs widths[0] channels).
      h: step size (> 0, `revjax.integrators.check_step_size`); None:
        `default_step_size(family, block)`.
      block: Hamiltonian residual function, "bn" | "bias" (None: "bn" for the Hamiltonian
        net; the midpoint and leapfrog nets are "bias").
      num_classes: logits per example (>= 1).
      backprop: "reversible" | "store" | "remat".
      transition: "stored" | "reversible".
      start: start rule (None: family default; leapfrog "zero_velocity" | "second_order").
      arithmetic: "float" or "exact" (int32 fixed-point body states, bit-exact
        reconstruction; see the module docstring).
      frac_bits: fractional bits of the exact states.
      dtype: dtype of parameters and activations.
      store_every: None, or k: every stage's stack stores its state every k blocks and the
        reversible backward pass restarts from each (`revjax.engine.Scan.store_every`), so float
        drift accumulates over at most k blocks; memory grows by about depth/k states. For float32
        networks too deep to reconstruct accurately (hamiltonian1202); float arithmetic only.

    Parameters: params["stage{s}"] = {"first": block, "rest": stacked blocks}; a "bn" block is
    {"F": {"K", "bn1", "bn2"}, "G": {...}} with its running averages in batch_stats["stage{s}"]
    (same layout). Train mode with the "bn" block needs `mutable=["batch_stats"]`.

    Input (N, H, W, C_in) with H, W divisible by 2^(stages − 1); output (N, num_classes).
    """

    family: str = "hamiltonian"
    units: tuple[int, ...] = (6, 6, 6)
    widths: tuple[int, ...] = (32, 64, 112)
    h: float | None = None
    block: str | None = None
    num_classes: int = 10
    backprop: str = "reversible"
    transition: str = "stored"
    start: str | None = None
    arithmetic: str = "float"
    frac_bits: int = DEFAULT_FRAC_BITS
    dtype: jnp.dtype = jnp.float32
    store_every: int | None = None

    def check_config(self) -> None:
        """ValueError for a configuration that cannot be built (before any tracing)."""
        self.config()
        arithmetic.get(self.arithmetic, self.frac_bits)
        engine.check_store_every(self.store_every)

    def config(self) -> chang.ChangConfig:
        """The validated body configuration (raises ValueError on a bad one)."""
        check_num_classes(self.num_classes)
        engine.check_backprop(self.backprop)
        if self.family not in chang.FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; use one of {chang.FAMILIES}")
        block = self.block or DEFAULT_BLOCK[self.family]
        h = default_step_size(self.family, block) if self.h is None else self.h
        return chang.make_config(
            self.family, self.units, self.widths, h, self.transition, self.start, block
        )

    def _bn_body(self, config: chang.ChangConfig, arith: arithmetic.Arithmetic, train: bool):
        """Engine layers, parameters and stats variables of the "bn" Hamiltonian body."""
        residual = HamiltonianResidual(config.h, True, self.dtype, parent=None)
        first_residual = HamiltonianResidual(config.h, False, self.dtype, parent=None)

        def init_block(key, width, first):
            kf, kg = jax.random.split(key)
            example = jnp.zeros((1, 4, 4, width // 2), self.dtype)
            F = first_residual if first else residual
            return {"F": F.init(kf, example), "G": residual.init(kg, example)}

        def init_stage(key, s):
            k_first, k_rest = jax.random.split(key)
            first_width = config.widths[max(s - 1, 0)]
            stage = {"first": init_block(k_first, first_width, first=s == 0)}
            if config.units[s] > 1:
                keys = jax.random.split(k_rest, config.units[s] - 1)
                stage["rest"] = jax.vmap(lambda k: init_block(k, config.widths[s], False))(keys)
            return stage

        def collection(tree, name):
            return jax.tree.map(
                lambda v: v[name], tree, is_leaf=lambda v: isinstance(v, dict) and name in v
            )

        def init_stats(s):
            shapes = jax.eval_shape(lambda k: init_stage(k, s), jax.random.key(0))
            return initial_batch_stats(collection(shapes, "batch_stats"))

        params, stats = {}, {}
        for s in range(len(config.units)):
            name = f"stage{s + 1}"
            params[name] = self.param(name, lambda k, s=s: collection(init_stage(k, s), "params"))
            stats[name] = self.variable("batch_stats", name, init_stats, s)
        # Per block {"F": {"params", "batch_stats"}, "G": ...}: the residual functions' variables.
        merged = {
            name: jax.tree.map(
                lambda p, v: {"params": p, "batch_stats": v},
                params[name],
                stats[name].value,
                is_leaf=lambda t: isinstance(t, dict) and "K" in t,
            )
            for name in params
        }

        def step(F):
            pair = (residual_with_stats(F, train), residual_with_stats(residual, train))
            return arith.verlet_step_with_stats(*pair, train=train, name="hamiltonian")

        plan = chang.body_plan(config, arith, step(residual), step(first_residual))
        layers = [layer for layer, _ in plan]
        return layers, chang.body_params(merged, config), plan, stats

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        config, arith = self.config(), arithmetic.get(self.arithmetic, self.frac_bits)
        chang.check_input(x.shape, config)
        x = Stem(config.widths[0], dtype=self.dtype, name="stem")(x.astype(self.dtype), train)
        state = chang.to_state(x, config)
        if config.block == "bn":
            layers, params, plan, stats = self._bn_body(config, arith, train)
        else:
            names = [f"stage{s + 1}" for s in range(len(config.units))]
            tree = {
                name: self.param(name, chang.init_stage_params, config, s, self.dtype)
                for s, name in enumerate(names)
            }
            layers, params = chang.body_layers(config, arith), chang.body_params(tree, config)
        layers = engine.store_every(layers, self.store_every)
        observe = partial(sow_reconstruction_error, self)
        out, aux = arith.run(layers, params, state, backprop=self.backprop, observe=observe)
        if config.block == "bn" and train and self.is_mutable_collection("batch_stats"):
            new = {name: dict(v.value) for name, v in stats.items()}
            for (_, path), stats_update in zip(plan, aux):
                if path is not None and stats_update is not None:
                    new[path[0]][path[1]] = stats_update
            for name, variable in stats.items():
                variable.value = new[name]
        return ClassifierHead(self.num_classes, dtype=self.dtype, name="head")(
            chang.from_state(out, config), train
        )


def _factory(family: str, units: tuple[int, ...], widths: tuple[int, ...]):
    def build(**overrides) -> ChangNet:
        fields = {"family": family, "units": units, "widths": widths}
        if overrides.get("transition") == "reversible" and "widths" not in overrides:
            fields["widths"] = chang.reversible_widths(widths)
        fields.update(overrides)
        fields["units"] = tuple(fields["units"])
        fields["widths"] = tuple(fields["widths"])
        return ChangNet(**fields)  # validated on construction (`check_config`)

    return build


RENAMED = {"filters": "widths (one width per stage; the stem outputs widths[0] channels)"}
_CONFIGS = {
    "hamiltonian74": ("hamiltonian", (6, 6, 6), (32, 64, 112)),
    "hamiltonian218": ("hamiltonian", (18, 18, 18), (32, 64, 128)),
    "hamiltonian1202": ("hamiltonian", (100, 100, 100), (32, 64, 128)),
    "midpoint62": ("midpoint", (10, 10, 10), (16, 32, 56)),
    "leapfrog62": ("leapfrog", (10, 10, 10), (16, 32, 56)),
}
for _name, _config in _CONFIGS.items():
    register(_name, stages=True, renamed=RENAMED)(_factory(*_config))

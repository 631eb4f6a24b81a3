"""RevNet classifier, its batch-norm blocks, and the registry entries for RevNet and its ResNet
baselines (Gomez, Ren, Urtasun, Grosse 2017, "The Reversible Residual Network",
arXiv:1707.04585, Sec. 3 and Table 1). The block equations, transitions and body widths are in
`revjax.families.revnet`.

`widths` are the base widths per stage (the stem outputs `stem_width`, default widths[0]);
bottleneck nets multiply the stage widths by 4.
Parameter counts (10 / 1000 classes) equal those of Gomez et al. 2017, Table 1:

    resnet32 464,154   revnet38 464,890   resnet110 1,727,962   revnet110 1,729,194
    resnet164 1,703,258   revnet164 1,748,778   resnet101 44,541,480   revnet104 45,428,072

Every field is overridable: `create("revnet110", units=(3, 3, 3), transition="reversible")`.

Batch norm (not invertible as a map of the batch, so it lives inside F and G). In train mode
F and G normalise with the current batch statistics, and the running averages are updated
exactly once per training step, from the forward pass:

- each residual function is run as a pure `(variables, u, rng) -> (v, batch_stats)` with
  `variables = {"params": ..., "batch_stats": ...}` riding in the step's parameter pytree (nothing
  is closed over inside the engine's custom_vjp; running averages get zero cotangents);
- the step's forward has `has_aux=True` and returns `(y, {"F": stats, "G": stats})`, the
  updated running averages computed in the forward pass; the engine hands this aux to the
  caller once;
- the fused backward (`couplings.additive_coupling`'s rule) recomputes F and G with the same
  batch statistics (the reconstructed input is the forward input) and discards any update.

In eval mode the running averages are used and the step has no aux.

Exact arithmetic, `arithmetic="exact"` (and `frac_bits`, default 20): the body is built through
`revjax.arithmetic.get(arithmetic, frac_bits)`, so the stem's output is encoded to int32
fixed-point halves and every coupling, y1 = x1 + ⌊F(x2)⌉, y2 = x2 + ⌊G(y1)⌉ (batch norm inside
F and G as above), and the "reversible" transitions (space-to-depth and zero channel padding,
permutations) are exact: bit-exact reconstruction at any depth. The "stored" transition blocks
(the first block of a stage with a strided / widening shortcut) run in float on the decoded
halves and re-encode their output (`arith.stored_transition`): the engine stores their input
anyway, so they cost nothing in exactness. Stem and head are float (autodiff). Gradients are
the straight-through ones. A fixed-point overflow makes the logits NaN. Affine coupling has no
exact form (a multiplicative update is not a bijection of the grid) and is not offered.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from revjax import arithmetic, engine
from revjax import conv as conv_ops
from revjax.arithmetic import DEFAULT_FRAC_BITS, FLOAT, Arithmetic
from revjax.couplings import merge_halves, split_halves
from revjax.drift import ReversibleModel, sow_reconstruction_error
from revjax.families.resnet import check_classifier_config, check_input_shape, pool_pad_shortcut
from revjax.families.revnet import TRANSITIONS, body_widths, initial_batch_stats
from revjax.models.heads import ClassifierHead, Stem, conv_init
from revjax.models.registry import CheckedConfig, preset, register
from revjax.models.resnet import ResNet, residual_module, stem_width_of
from revjax.nn import init_stacked, residual_with_stats

__all__ = ["bn_coupling", "stored_transition_block", "RevNet"]


def _split_rng(rng):
    return (None, None) if rng is None else tuple(jax.random.split(rng))


def bn_coupling(
    F: nn.Module,
    G: nn.Module,
    *,
    train: bool,
    name: str = "revnet_block",
    arith: Arithmetic = FLOAT,
):
    """RevNet block y1 = x1 + F(x2), y2 = x2 + G(y1) with BN inside F and G, built by `arith`.

    Params: {"F": {"params", "batch_stats"}, "G": {...}}. State: (x1, x2), each
    (N, H, W, C/2). In train mode the forward returns ((y1, y2), {"F": stats, "G": stats})
    (`has_aux=True`; exact arithmetic: `ExactAux(overflow, stats)`); inverse and fused backward
    use the output values only, so reconstruction never updates the statistics.
    """
    pair = (residual_with_stats(F, train), residual_with_stats(G, train))
    return arith.additive_coupling_with_stats(*pair, train=train, name=name)


def stored_transition_block(
    F: nn.Module,
    G: nn.Module,
    *,
    out_channels: int,
    strides: int,
    projection: bool,
    train: bool,
    name: str = "revnet_transition",
) -> engine.Transition:
    """First block of a stage (non-invertible; the engine stores its input), Gomez et al. 2017.

    y1 = S(x1) + F(x2), y2 = S(x2) + G(y1): (N, H, W, C_in/2) halves -> (N, H/s, W/s, C_out/2).
    S is a 1x1 strided projection per half (`projection`, params["shortcut"] = {"x1": W1,
    "x2": W2}, each (1, 1, C_in/2, C_out/2)) or pool_pad_shortcut. Aux as `bn_coupling`.
    """
    f_fn, g_fn = residual_with_stats(F, train), residual_with_stats(G, train)

    def shortcut(params, key, u):
        if projection:
            return conv_ops.conv(u, params["shortcut"][key], strides, "SAME")
        return pool_pad_shortcut(u, out_channels, strides)

    def apply(params, x, rng=None):
        x1, x2 = x
        rf, rg = _split_rng(rng)
        f, f_stats = f_fn(params["F"], x2, rf)
        y1 = shortcut(params, "x1", x1) + f
        g, g_stats = g_fn(params["G"], y1, rg)
        y = (y1, shortcut(params, "x2", x2) + g)
        return (y, {"F": f_stats, "G": g_stats}) if train else y

    return engine.Transition(apply, has_aux=train, name=name)


def _init_variables(module, key, depth, shape, dtype):
    example = jnp.zeros(shape, dtype)
    if depth is None:
        return module.clone(parent=None).init(key, example, train=False)
    return init_stacked(module, key, depth, example, train=False)


class RevNet(CheckedConfig, ReversibleModel, nn.Module):
    """RevNet classifier: Stem -> reversible body (one `engine.apply`) -> ClassifierHead.

    The body is [Transition, Scan, Transition, Scan, ...] ("stored") or [ψ?, pad?, coupling...,
    Scan, ψ, pad?, Scan, ...] ("reversible"); stage s has `units[s]` blocks (counting its first).
    Per body layer i the parameters live in params["body_{i}"] = {"F", "G"[, "shortcut"]} and the
    running averages in batch_stats["body_{i}"] = {"F", "G"} (stacked on a leading axis for a Scan).
    Train mode needs `mutable=["batch_stats"]`; the running averages are then updated once per call.

    Attributes:
      units: blocks per stage.
      widths: base width per stage (x4 for bottleneck stages); even.
      stem_width: channels out of the stem (None: widths[0]); even.
      strides: per-stage stride (1 or 2).
      bottleneck: bottleneck (3 convs per F/G) or basic (2 convs) residual functions.
      num_classes: logits.
      backprop: "reversible" | "store" | "remat" (engine strategies).
      transition: "stored" | "reversible" (see module docstring).
      stem_kernel, stem_strides, stem_pool: CIFAR 3/1/False, ImageNet 7/2/True.
      arithmetic: "float" or "exact" (int32 fixed-point body states, bit-exact
        reconstruction; see the module docstring).
      frac_bits: fractional bits of the exact states.
      dtype: parameter, statistics and compute dtype.

    Input (N, H, W, C) -> logits (N, num_classes).
    """

    units: Sequence[int] = (9, 9, 9)
    widths: Sequence[int] = (32, 64, 128)
    stem_width: int | None = None
    strides: Sequence[int] = (1, 2, 2)
    bottleneck: bool = False
    num_classes: int = 10
    backprop: str = "reversible"
    transition: str = "stored"
    stem_kernel: int = 3
    stem_strides: int = 1
    stem_pool: bool = False
    arithmetic: str = "float"
    frac_bits: int = DEFAULT_FRAC_BITS
    dtype: jnp.dtype = jnp.float32

    def check_config(self) -> None:
        """ValueError for a configuration that cannot be built (before any tracing)."""
        engine.check_backprop(self.backprop)
        arithmetic.get(self.arithmetic, self.frac_bits)
        if self.transition not in TRANSITIONS:
            raise ValueError(f"unknown transition {self.transition!r}; use one of {TRANSITIONS}")
        check_classifier_config(
            self.units, self.widths, self.strides, self.num_classes, self.bottleneck,
            stem_width_of(self),
        )  # fmt: skip
        widths = self._body_widths()
        odd = [w for w in widths if w % 2]
        if odd:
            raise ValueError(
                f"RevNet widths {widths} include odd channel counts {odd}, which cannot be "
                "split into two equal halves; use even widths"
            )
        if self.bottleneck and any(w % 8 for w in widths[1:]):
            raise ValueError(
                f"bottleneck RevNet widths {widths[1:]} must be multiples of 8 (each half "
                "has an inner width of C/8)"
            )
        if self.transition == "stored" and not self.bottleneck:
            for w_in, w_out in zip(widths, widths[1:]):
                if w_out < w_in or (w_out - w_in) % 4:
                    raise ValueError(
                        f"basic RevNet stage {w_in} -> {w_out} channels: the zero-padding "
                        "shortcut needs w_out >= w_in with (w_out - w_in)/2 even per half"
                    )

    def _body_widths(self) -> tuple[int, ...]:
        return body_widths(
            stem_width_of(self), self.widths, self.strides, self.bottleneck, self.transition
        )

    def _residual(self, features, strides=1, preactivate=True):
        return residual_module(self.bottleneck, features, strides, preactivate, self.dtype)

    def _layer_variables(self, name, F, G, f_shape, g_shape, depth=None, projection=None):
        """Create params/batch_stats for one body layer; returns the engine's param pytree."""

        def init_params(key):
            kf, kg, k1, k2 = jax.random.split(key, 4)
            out = {
                "F": _init_variables(F, kf, depth, f_shape, self.dtype)["params"],
                "G": _init_variables(G, kg, depth, g_shape, self.dtype)["params"],
            }
            if projection is not None:
                init = conv_init(1, projection[-1])
                out["shortcut"] = {
                    "x1": init(k1, projection, self.dtype),
                    "x2": init(k2, projection, self.dtype),
                }
            return out

        def stats_of(module, shape):
            variables = jax.eval_shape(
                lambda k: _init_variables(module, k, depth, shape, self.dtype), jax.random.key(0)
            )
            return initial_batch_stats(variables["batch_stats"])

        params = self.param(name, init_params)
        stats = self.variable(
            "batch_stats", name, lambda: {"F": stats_of(F, f_shape), "G": stats_of(G, g_shape)}
        )
        merged = {k: {"params": params[k], "batch_stats": stats.value[k]} for k in ("F", "G")}
        if projection is not None:
            merged["shortcut"] = params["shortcut"]
        return merged, stats

    def _body(self, shape, train):
        """(layers, params, stats variables per layer or None, arithmetic) for a stem output."""
        widths = self._body_widths()
        batch, height, width = shape[:3]
        arith = arithmetic.get(self.arithmetic, self.frac_bits)
        layers, params, stats = [], [], []

        def add(layer, p=None, s=None):
            layers.append(layer)
            params.append(p)
            stats.append(s)

        def add_coupling(c, depth, preactivate=True):
            half = (batch, height, width, c // 2)
            F = self._residual(c // 2, 1, preactivate)
            G = self._residual(c // 2)
            name = f"body_{len(layers)}"
            p, s = self._layer_variables(name, F, G, half, half, depth)
            step = bn_coupling(F, G, train=train, name=name, arith=arith)
            add(engine.Scan(step, name=name) if depth else step, p, s)

        for i, (n, stride) in enumerate(zip(self.units, self.strides)):
            c_in, c_out = widths[i], widths[i + 1]
            identity_shortcut = stride == 1 and c_in == c_out
            remaining = n - 1  # the couplings of the stage's Scan, after its first block
            if self.transition == "stored" and identity_shortcut and not self.bottleneck:
                # S = identity: the first block is an ordinary coupling (nothing stored).
                add_coupling(c_out, None, preactivate=i > 0)
            elif self.transition == "stored":
                F = self._residual(c_out // 2, stride, preactivate=i > 0)
                G = self._residual(c_out // 2)
                projected = self.bottleneck and not identity_shortcut
                projection = (1, 1, c_in // 2, c_out // 2) if projected else None
                f_shape = (batch, height, width, c_in // 2)
                height, width = height // stride, width // stride
                g_shape = (batch, height, width, c_out // 2)
                name = f"body_{len(layers)}"
                p, s = self._layer_variables(name, F, G, f_shape, g_shape, None, projection)
                block = stored_transition_block(
                    F,
                    G,
                    out_channels=c_out // 2,
                    strides=stride,
                    projection=projection is not None,
                    train=train,
                    name=name,
                )
                add(arith.stored_transition(block), p, s)
            else:
                c = c_in
                if stride == 2:
                    add(arith.space_to_depth_step())
                    height, width, c = height // 2, width // 2, 4 * c
                if c_out > c:
                    add(arith.zero_pad_channels_step((c_out - c) // 2))
                if i == 0:
                    add_coupling(c_out, None, preactivate=False)
                else:
                    remaining = n  # no first block: the Scan runs all n couplings
            if remaining:
                add_coupling(c_out, remaining)
        return layers, params, stats, arith

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_input_shape(x.shape, self.stem_strides, self.stem_pool, self.strides)
        h = Stem(
            stem_width_of(self), self.stem_kernel, self.stem_strides, self.stem_pool, self.dtype
        )(x.astype(self.dtype), train)
        layers, params, stats, arith = self._body(h.shape, train)
        observe = partial(sow_reconstruction_error, self)
        y, aux = arith.run(layers, params, split_halves(h), backprop=self.backprop, observe=observe)
        if train and self.is_mutable_collection("batch_stats"):
            for variable, new in zip(stats, aux):
                if variable is not None:
                    variable.value = new
        return ClassifierHead(self.num_classes, dtype=self.dtype)(merge_halves(y), train)


CIFAR = dict(strides=(1, 2, 2), num_classes=10)
IMAGENET = dict(
    strides=(1, 2, 2, 2), num_classes=1000, stem_kernel=7, stem_strides=2, stem_pool=True
)


_CONFIGS = {
    "resnet32": (ResNet, dict(CIFAR, units=(5, 5, 5), widths=(16, 32, 64))),
    "resnet110": (ResNet, dict(CIFAR, units=(18, 18, 18), widths=(16, 32, 64))),
    "resnet164": (ResNet, dict(CIFAR, units=(18, 18, 18), widths=(16, 32, 64), bottleneck=True)),
    "resnet101": (
        ResNet,
        dict(IMAGENET, units=(3, 4, 23, 3), widths=(64, 128, 256, 512), bottleneck=True),
    ),
    "revnet38": (RevNet, dict(CIFAR, units=(3, 3, 3), widths=(32, 64, 112))),
    "revnet110": (RevNet, dict(CIFAR, units=(9, 9, 9), widths=(32, 64, 128))),
    "revnet164": (RevNet, dict(CIFAR, units=(9, 9, 9), widths=(32, 64, 128), bottleneck=True)),
    "revnet104": (
        RevNet,
        dict(IMAGENET, units=(2, 2, 11, 2), widths=(128, 256, 512, 832), bottleneck=True),
    ),
}

# Field names RevNet and ResNet used before the shared vocabulary.
RENAMED = {
    "filters": "widths (one width per stage; the stem width is now `stem_width`, default "
    "widths[0])",
    "stem_max_pool": "stem_pool",
}
for _name, (_cls, _config) in _CONFIGS.items():
    register(_name, stages=True, renamed=RENAMED)(preset(_cls, **_config))

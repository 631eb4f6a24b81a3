"""RevNet (Gomez, Ren, Urtasun, Grosse (2017) "The Reversible Residual Network", arXiv:1707.04585,
Section 3): additive couplings of pre-activation residual functions, with batch norm inside F and G.

Block (state = channel halves (x1, x2), each (N, H, W, C/2))::

    y1 = x1 + F(x2)            x2 = y2 − G(y1)
    y2 = x2 + G(y1)            x1 = y1 − F(x2)

F and G are the basic or bottleneck pre-activation residual functions of `revjax.families.resnet`
acting on C/2 channels (bottleneck inner width C_out/8). This module holds the pure parts
(transition kinds, body widths, initial running averages); the linen blocks with batch norm inside F
and G and the `RevNet` classifier are in `revjax.models.revnet`.

Stage transitions, `transition=`:

- "stored" (the paper's design, Gomez et al. 2017, Section 3.1: "we store the activations
  of the non-reversible layers"): the first block of every stage that changes width or resolution is
  an `engine.Transition` whose input is stored: y1 = S(x1) + F_s(x2), y2 = S(x2) + G(y1), with F's
  first conv strided and widening, and the shortcut S = 2x2 average pool + symmetric zero channel
  padding (basic) or a 1x1 strided projection per half (bottleneck). The network's very first F
  omits its leading BN-ReLU. A first block that changes neither (basic RevNet-110 stage 1:
  stem 32 -> 32, stride 1) has the identity shortcut, y1 = x1 + F(x2), y2 = x2 + G(y1): an ordinary
  coupling, run as an invertible step (same parameters; nothing stored).
- "reversible" (fully invertible body, which stores nothing but its output): a stride-2 stage
  starts with the i-RevNet space-to-depth ψ of each half (C -> 4C, a permutation), then, if
  the stage's nominal width is larger, an injective zero padding of each half's channels
  (inverse: drop them; exact on its image); then `units` ordinary couplings. Since an
  invertible map cannot shrink the state, the widths are max(nominal, 4 x previous) after a
  stride-2 stage (`body_widths`), e.g. RevNet-110 runs at 32, 128, 512 channels instead of
  32, 64, 128 — more parameters, fewer stored activations.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from revjax.families.resnet import stage_widths

__all__ = ["TRANSITIONS", "body_widths", "initial_batch_stats"]

TRANSITIONS = ("stored", "reversible")


def body_widths(
    stem_width: int,
    widths: Sequence[int],
    strides: Sequence[int],
    bottleneck: bool,
    transition: str,
) -> tuple[int, ...]:
    """(stem, stage 1, ...) full channel counts (both halves) the body actually runs at.

    "stored": `stage_widths(stem_width, widths, bottleneck)`. "reversible": a stride-2 stage
    multiplies the width by 4 (space-to-depth), then pads up to the nominal width if larger.
    """
    nominal = stage_widths(stem_width, widths, bottleneck)
    if transition == "stored":
        return nominal
    widths = [nominal[0]]
    for stride, target in zip(strides, nominal[1:]):
        width = widths[-1] * (4 if stride == 2 else 1)
        widths.append(max(width, target))
    return tuple(widths)


def initial_batch_stats(shapes):
    """Running averages at init from a variables shape tree: mean = 0, var = 1."""

    def leaf(path, s):
        value = 1 if getattr(path[-1], "key", None) == "var" else 0
        return jnp.full(s.shape, value, s.dtype)

    return jax.tree_util.tree_map_with_path(leaf, shapes)

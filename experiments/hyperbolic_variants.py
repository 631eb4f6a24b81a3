"""The three memory-comparison variants of the hyperbolic segmentation network, and its loss.

Shared by `hyperbolic_memory.py` and `video_segmentation.py` (run as scripts from this folder,
so `from hyperbolic_variants import ...` resolves here). The variants are model overrides of
the same fully reversible multilevel network (Peters, Haber, Lensink 2019, "Symmetric
block-low-rank layers for fully reversible multilevel neural networks", arXiv:1912.12137):

- "reversible": fully reversible (Haar coarsenings invertible, nothing stored in the body);
- "store": plain autodiff (every activation stored);
- "block": block-reversible (the input of every Haar coarsening is stored).
"""

from __future__ import annotations

import jax
import optax

__all__ = ["COMPARISON_VARIANTS", "pixelwise_cross_entropy"]

COMPARISON_VARIANTS = {
    "reversible": dict(backprop="reversible", transition="reversible"),
    "store": dict(backprop="store", transition="reversible"),
    "block": dict(backprop="reversible", transition="stored"),
}


def pixelwise_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean over pixels/voxels of −log softmax(logits)[label]; logits (N, *S, K), labels (N, *S)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

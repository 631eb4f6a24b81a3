"""The three memory-comparison variants of the hyperbolic segmentation network.

Shared by `hyperbolic_memory.py` and `video_segmentation.py` (run as scripts from this folder,
so `from hyperbolic_variants import ...` resolves here). The variants are model overrides of
the same fully reversible multilevel network (Peters, Haber, Lensink 2019, "Symmetric
block-low-rank layers for fully reversible multilevel neural networks", arXiv:1912.12137):

- "reversible": fully reversible (Haar coarsenings invertible, nothing stored in the body);
- "store": plain autodiff (every activation stored);
- "block": block-reversible (the input of every Haar coarsening is stored).
"""

from __future__ import annotations

__all__ = ["COMPARISON_VARIANTS"]

COMPARISON_VARIANTS = {
    "reversible": dict(backprop="reversible", transition="reversible"),
    "store": dict(backprop="store", transition="reversible"),
    "block": dict(backprop="reversible", transition="stored"),
}

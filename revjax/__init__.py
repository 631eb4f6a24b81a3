"""revjax: reversible neural networks in JAX/Flax with memory-free backward passes.

Layers of the package (each imports only from those above it):

- `revjax.engine`: invertible steps as values; the one custom_vjp (Scan + chain forms).
- `revjax.couplings`, `revjax.integrators`, `revjax.transitions`: generic invertible steps.
- operators: `revjax.conv`, `revjax.wavelets`, `revjax.space_to_depth`, `revjax.fft`.
- `revjax.nn`, `revjax.drift`: generic Flax linen glue over the pure functions.
- `revjax.families.<paper>`: that paper's layers, steps and parameter trees as pure functions
  (no flax); `revjax.models.<paper>`: its Flax linen modules and registry entries;
  `revjax.models`: the registry, `revjax.models.heads`: the shared stem and classifier head.
- `revjax.data`, `revjax.train`: input pipelines and the training system.
- `revjax.memory` (compiled memory of a training step: the donated optimizer update) and
  `revjax.benchmark` (interleaved round-robin timing): the one way to measure, shared by the
  trainer, the experiments and the tests.
"""

from revjax.engine import (
    BACKPROP_MODES,
    InvertibleStep,
    Scan,
    Transition,
    apply,
    apply_with_aux,
    check_backprop,
    check_reconstruction,
    invert,
    reconstruction_error,
)

__version__ = "0.1.0"

__all__ = [
    "BACKPROP_MODES",
    "InvertibleStep",
    "Scan",
    "Transition",
    "apply",
    "apply_with_aux",
    "check_backprop",
    "check_reconstruction",
    "invert",
    "reconstruction_error",
]

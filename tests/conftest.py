"""Test configuration: float64 everywhere unless a test asks for float32; cheap compilation.

Reconstruction and gradient identities are checked in float64 (equality is the point there), so
x64 is enabled for the whole suite; tests that measure float32 drift pass explicit dtypes.

The suite's programs are small, so compiling them costs far more than running them. JAX's
`jax_disable_most_optimizations` (XLA CPU backend at -O0, no expensive LLVM passes) keeps every
XLA HLO pass, hence the same fusion, buffer assignment and `memory_analysis()` figures, and only
makes the generated machine code less optimised. It is set through the environment so that the
subprocesses some tests start (multi-process training, kill and resume) inherit it; run
`JAX_DISABLE_MOST_OPTIMIZATIONS=0 python -m pytest ...` to test fully optimised code.

Tests marked `full_optimization` compile at XLA's default level, as users run: bit-exact
reconstruction in fixed point (`revjax.fixed_point`) needs the residual function to give the
same bits when the backward pass recomputes it, and at -O0 the CPU backend's code for the
forward and the recomputation can differ in the last bit of a float (measured: reconstruction
errors up to 2e-3 instead of 0 at depth 1000), so those tests would test the compiler setting,
not the library.
"""

import os

os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402  (after the environment it reads)
import pytest  # noqa: E402

# JAX reads the variable when it is imported; set the flag too, with JAX's reading of it
# (0/false/no/off), in case something imported jax before this file.
_OFF = ("0", "false", "no", "off", "f", "n")
jax.config.update(
    "jax_disable_most_optimizations",
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"].lower() not in _OFF,
)
jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True)
def _full_optimization_when_marked(request):
    """XLA's default optimisation level for tests marked `full_optimization` (see above)."""
    if request.node.get_closest_marker("full_optimization") is None:
        yield
        return
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)

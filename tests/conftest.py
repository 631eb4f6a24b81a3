"""Test configuration: float64 everywhere unless a test asks for float32.

Reconstruction and gradient identities are checked in float64 (equality is the point there), so x64
is
enabled for the whole suite; tests that measure float32 drift pass explicit dtypes.
"""

import jax

jax.config.update("jax_enable_x64", True)

"""Test configuration: float64 everywhere unless a test asks for float32.

Reconstruction and gradient identities are checked in float64 (SPEC §7, §8.1), so x64 is
enabled for the whole suite; tests that measure float32 drift pass explicit dtypes.
"""

import jax

jax.config.update("jax_enable_x64", True)

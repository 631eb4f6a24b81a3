"""Non-invertible ends shared by the classifiers: stem and classification head (SPEC §2.3).

These run under ordinary autodiff (their activations are stored); only the reversible body in
between is rebuilt during the backward pass.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["BN_EPSILON", "conv_init", "Stem", "ClassifierHead", "check_num_classes"]

BN_EPSILON = 1e-3  # RevNet / Hamiltonian reference code (SPEC §2.2)
BN_MOMENTUM = 0.9


def conv_init(kernel_size: int, out_channels: int):
    """Truncated normal with std sqrt(2 / (k^2 C_out)) (reference RevNet/Chang init)."""
    std = (2.0 / (kernel_size * kernel_size * out_channels)) ** 0.5
    return nn.initializers.truncated_normal(stddev=std)


def check_num_classes(num_classes: int) -> int:
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return int(num_classes)


class Stem(nn.Module):
    """conv(k x k, no bias) -> BN -> ReLU, optionally followed by 3x3/2 max-pool (ImageNet)."""

    features: int
    kernel_size: int = 3
    strides: int = 1
    max_pool: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        k = self.kernel_size
        x = nn.Conv(
            self.features,
            (k, k),
            strides=self.strides,
            padding="SAME",
            use_bias=False,
            kernel_init=conv_init(k, self.features),
            dtype=self.dtype,
            param_dtype=self.dtype,
        )(x)
        x = nn.BatchNorm(
            use_running_average=not train,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            dtype=self.dtype,
            param_dtype=self.dtype,
        )(x)
        x = nn.relu(x)
        if self.max_pool:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        return x


class ClassifierHead(nn.Module):
    """BN -> ReLU -> global average pool -> dense logits (N, num_classes)."""

    num_classes: int
    use_bn: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_num_classes(self.num_classes)
        if self.use_bn:
            x = nn.BatchNorm(
                use_running_average=not train,
                momentum=BN_MOMENTUM,
                epsilon=BN_EPSILON,
                dtype=self.dtype,
                param_dtype=self.dtype,
            )(x)
        x = nn.relu(x)
        x = jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
        return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.dtype)(x)

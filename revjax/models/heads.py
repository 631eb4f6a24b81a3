"""Non-invertible ends shared by the classifiers: stem and classification head (Gomez, Ren, Urtasun,
Grosse 2017, arXiv:1707.04585, Sec. 3.1).

These run under ordinary autodiff (their activations are stored); only the reversible body in
between is rebuilt during the backward pass. This module does not import the model registry
(`revjax.models.registry`), so every family's model module can import it without a cycle.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from revjax.families.resnet import check_num_classes

__all__ = [
    "BN_EPSILON",
    "BN_MOMENTUM",
    "batch_norm",
    "conv_init",
    "Stem",
    "ClassifierHead",
    "check_num_classes",
]

BN_EPSILON = 1e-3  # RevNet / Hamiltonian reference code (github.com/renmengye/revnet-public)
BN_MOMENTUM = 0.9


def batch_norm(dtype, name: str | None = None) -> nn.BatchNorm:
    """BN with the reference eps/momentum; statistics kept in `dtype` (no float32 forcing).

    Keeping the running averages in the parameter dtype lets them ride in the same pytree as
    the parameters through the reversible engine, which rejects mixed dtypes. Call it with
    `use_running_average=not train`.

    The batch variance is two-pass, mean((x − mean)²), as in the reference codes
    (`tf.nn.moments` in RevNet's and Chang et al.'s TensorFlow code, PyTorch's BatchNorm).
    flax's default one-pass E[x²] − E[x]² cancels catastrophically in float32 once a channel's
    mean is large against its spread, as the states of deep reversible bodies grow to be, and
    its rounding then depends on how XLA fuses the reduction: hamiltonian74's reversible
    float32 gradient was 0.8% off float64 at CPU -O0 (2.5e-6 two-pass), and a 100-block exact
    Hamiltonian's reversible and stored gradients differed by 1.2e-2 (1.2e-6 two-pass).
    """
    return nn.BatchNorm(
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        param_dtype=dtype,
        force_float32_reductions=False,
        use_fast_variance=False,
        name=name,
    )


def conv_init(kernel_size: int, out_channels: int):
    """Truncated normal with std sqrt(2 / (k^2 C_out)) (reference RevNet/Chang init)."""
    std = (2.0 / (kernel_size * kernel_size * out_channels)) ** 0.5
    return nn.initializers.truncated_normal(stddev=std)


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
        x = nn.relu(batch_norm(self.dtype)(x, use_running_average=not train))
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
            x = batch_norm(self.dtype)(x, use_running_average=not train)
        x = nn.relu(x)
        x = jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
        return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.dtype)(x)

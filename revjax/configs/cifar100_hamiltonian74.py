"""Hamiltonian-74 on CIFAR-100 (Chang et al. 2018; SPEC §4.1); 439,860 parameters.

Expected result: comparable to ResNet/RevNet of similar size (numbers not recovered,
SPEC §4.5; RevNet-38 reference: 28.96% error).

Smoke (``:smoke``): units 1-1-1, filters 8-8-16-16, batch 8, 2 steps.
"""

import ml_collections

from revjax.configs import cifar10_hamiltonian74, cifar10_revnet110, is_smoke


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = cifar10_hamiltonian74.get_config()
    config.name = "cifar100_hamiltonian74"
    config.dataset = "cifar100"
    if is_smoke(arg):
        cifar10_revnet110.shrink(config)
    return config

"""Hamiltonian-74 on CIFAR-100 (Chang et al. 2018, arXiv:1709.03698); 439,860 parameters.

Same recipe as ``cifar10_hamiltonian74`` with 100 classes.

Expected result: no number (the paper's accuracy tables are not in the text available to
us; it reports results comparable to ResNet/RevNet of similar size).

Smoke (``:smoke``): units 1-1-1, widths 8-16-16, batch 8, 2 steps, fake data (offline).
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

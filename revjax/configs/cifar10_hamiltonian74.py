"""Hamiltonian-74 on CIFAR-10 (Chang et al. 2018; SPEC §4.1).

Model ``hamiltonian74``: 6-6-6 Hamiltonian (Verlet) units, filters 32-32-64-112, 429,690
parameters (SPEC §4.1), reversible backprop. Training as the reference code: batch 100,
SGD momentum 0.9, lr 0.1 -> 0.01 at 40k -> 0.001 at 60k iterations, 80k iterations, weight
decay 2e-4 on kernels, weight smoothness rate 2e-4 (``revjax.families.chang``).

Expected result: accuracy comparable to ResNet/RevNet of similar size (the paper's CIFAR-10
table was not recovered, SPEC §4.5; ResNet-32 reference: 7.14% error). Record the number you
get here rather than a remembered one.

Smoke (``:smoke``): units 1-1-1, filters 8-8-16-16, batch 8, 2 steps.
"""

import ml_collections

from revjax.configs import cifar10_revnet110, is_smoke


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = cifar10_revnet110.get_config()
    config.name = "cifar10_hamiltonian74"
    config.model = "hamiltonian74"
    config.weight_smoothness = 2e-4
    if is_smoke(arg):
        cifar10_revnet110.shrink(config)
    return config

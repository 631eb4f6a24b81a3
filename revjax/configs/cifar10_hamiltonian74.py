"""Hamiltonian-74 on CIFAR-10 (Chang, Meng, Haber, Ruthotto, Begert, Holtham 2018,
"Reversible Architectures for Arbitrarily Deep Residual Neural Networks", arXiv:1709.03698).

Model ``hamiltonian74``: 6-6-6 Hamiltonian (Verlet) units, widths 32-64-112, 429,690
parameters (counted by ``revjax.models.count_params``), reversible backprop. Training as the
authors' code (changebo/revnet-public, ``cifar_configs.py``): batch 100, SGD momentum 0.9,
lr 0.1 -> 0.01 at 40k -> 0.001 at 60k iterations, 80k iterations, weight decay 2e-4 on
kernels, weight smoothness rate 2e-4 (``revjax.families.chang``); data: pad-4 crop, flip,
per-image standardisation (paper, section "Experiments").

Expected result: no number. The paper reports accuracy comparable to ResNet/RevNet of similar
size, but its accuracy tables are not in the text available to us; record what you measure.

Smoke (``:smoke``): units 1-1-1, widths 8-16-16, batch 8, 2 steps, fake data (offline).
"""

import ml_collections

from revjax.configs import cifar10_revnet110, is_smoke


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = cifar10_revnet110.get_config()
    config.name = "cifar10_hamiltonian74"
    config.model = "hamiltonian74"
    config.regularisers.weight_smoothness = 2e-4
    if is_smoke(arg):
        cifar10_revnet110.shrink(config)
    return config

"""RevNet-110 on CIFAR-100 (Gomez, Ren, Urtasun, Grosse 2017, arXiv:1707.04585, Sec. 5).

Same model, schedule and normalisation (per-image standardisation, not the reference code's
mean-image subtraction) as ``cifar10_revnet110`` with 100 classes.

Expected result: test error 25.40% (ResNet-110: 26.44%), as reported in Gomez et al. (2017),
Table 3.

Smoke (``:smoke``): units 1-1-1, widths 8-16-16, batch 8, 2 steps, fake data (offline).
"""

import ml_collections

from revjax.configs import cifar10_revnet110, is_smoke


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = cifar10_revnet110.get_config()
    config.name = "cifar100_revnet110"
    config.dataset = "cifar100"
    if is_smoke(arg):
        cifar10_revnet110.shrink(config)
    return config

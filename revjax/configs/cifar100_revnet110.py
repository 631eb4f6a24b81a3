"""RevNet-110 on CIFAR-100 (Gomez et al. 2017; SPEC §2.4-2.5).

Same model and schedule as ``cifar10_revnet110`` with 100 classes.

Expected result: test error 25.40% (accuracy 74.60%) [paper, SPEC §2.5]; ResNet-110: 26.44%.

Smoke (``:smoke``): units 1-1-1, filters 8-8-16-16, batch 8, 2 steps.
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

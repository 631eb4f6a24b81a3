"""Hamiltonian-74 on STL-10 (96x96, 5k train / 8k test; Chang et al. 2018; SPEC §4.1, §4.5).

Augmentation: random crop + flip without padding, per-image standardisation. Batch 100
(50 steps/epoch); 80k iterations with lr decays at 40k and 60k as for CIFAR.

Expected result: better than the state of the art the paper cites on STL-10 and above
ResNet by "a few percent" (the table was not recovered, SPEC §4.5).

Smoke (``:smoke``): units 1-1-1, filters 8-8-16-16, batch 8, 2 steps.
"""

import ml_collections

from revjax.configs import cifar10_hamiltonian74, cifar10_revnet110, is_smoke


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = cifar10_hamiltonian74.get_config()
    config.name = "stl10_hamiltonian74"
    config.dataset = "stl10"
    config.dataset_options = ml_collections.ConfigDict({"augmentation": "standard", "pad": 0})
    config.eval_batch_size = 400
    if is_smoke(arg):
        cifar10_revnet110.shrink(config)
    return config

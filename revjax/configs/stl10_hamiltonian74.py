"""Hamiltonian-74 on STL-10 (96x96, 5k train / 8k test; Chang et al. 2018, arXiv:1709.03698).

Data as the paper (section "Experiments"): the CIFAR augmentation without the zero padding,
i.e. random crop + flip, per-image standardisation.

Optimisation: the paper has its own STL-10 recipe (batch size, initial lr, decay factor,
epochs, weight decay, weight smoothness, momentum in its appendix "Implementation details"),
but the values are stripped from the text available to us. The choices here are ours, not
the paper's, and not tuned: batch 100 (50 steps/epoch), SGD momentum 0.9, lr 0.1 decayed
x0.1 at 10k and 15k steps, 20k steps = 400 epochs (the CIFAR recipe's 80k steps would be
1600 epochs of 5k images), weight decay and smoothness 2e-4 as for CIFAR.

Expected result: no number. The paper reports better accuracy than the state of the art it
cites and than ResNet on STL-10, but its STL-10 table is not in the text available to us.

Smoke (``:smoke``): units 1-1-1, widths 8-16-16, batch 8, 2 steps, fake data (offline).
"""

import ml_collections

from revjax.configs import cifar10_hamiltonian74, cifar10_revnet110, is_smoke


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = cifar10_hamiltonian74.get_config()
    config.name = "stl10_hamiltonian74"
    config.dataset = "stl10"
    config.dataset_options = ml_collections.ConfigDict({"augmentation": "standard", "pad": 0})
    config.eval_batch_size = 400
    config.num_steps = 20_000
    config.optimizer.boundaries_fractions = (0.5, 0.75)  # 10k and 15k of 20k steps
    if is_smoke(arg):
        cifar10_revnet110.shrink(config)
    return config

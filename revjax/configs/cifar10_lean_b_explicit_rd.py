"""LeanResNet net B with explicit reaction-diffusion steps on CIFAR-10 (Ephrath, Eliasof,
Ruthotto, Haber, Treister 2019, "LeanResNet", arXiv:1805.07821).

Model ``lean_b_explicit_rd``: 5x5 stem to 48 channels, 3 blocks of 4 explicit RD steps,
widths 48-96-192 (216K parameters in the paper). Training as the paper: Adam (default
betas), lr 0.01 halved every 60 epochs, 300 epochs, batch 100, no weight decay, "lean"
augmentation (random resize + crop + flip).

Expected result: validation accuracy 90.6% (ResNet B: 93.0%), Ephrath et al. (2019), Table 2.

Smoke (``:smoke``): 1 block of 1 step, 8 features, batch 8, 2 steps, fake data (offline).
"""

import ml_collections

from revjax.configs import cifar10_revnet110, default, is_smoke


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default.get_config()
    config.name = "cifar10_lean_b_explicit_rd"
    config.model = "lean_b_explicit_rd"
    config.model_kwargs = ml_collections.ConfigDict()
    config.dataset = "cifar10"
    config.dataset_options = ml_collections.ConfigDict({"augmentation": "lean"})
    config.global_batch_size = 100
    config.eval_batch_size = 500
    config.num_epochs = 300
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 0.01
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.eps = 1e-8
    config.optimizer.weight_decay = 0.0
    config.optimizer.schedule = "halving"
    config.optimizer.halve_every_fraction = 0.2  # every 60 of 300 epochs
    config.log_every_steps = 100
    config.checkpoint_every_steps = 2_000
    if is_smoke(arg):
        cifar10_revnet110.shrink(config, width=8, units=(1,))
    return config

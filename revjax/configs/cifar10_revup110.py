"""RevUp-110 on CIFAR-10: invertible Fixup residual blocks, no batch norm, reversible backprop.

Model ``revup110``: 18-18-18 i-ResNet blocks with spectrally normalised Fixup branches (Lip < 1,
fixed-point inverse), stored downsampling, widths 16-32-64: 1,720,138 parameters, no more than the
FixupResNet-110 it replaces ("Reversible Fixup Networks for Memory-Efficient Training", 2019; Fixup:
Zhang, Dauphin, Ma 2019, arXiv:1901.09321; i-ResNet: Behrmann et al. 2019, arXiv:1811.00995).

Optimisation: the RevUp paper's training values are not in the text we have, so this follows Fixup's
CIFAR-10 recipe (Zhang et al. 2019, Sec. 4.1): batch 128, SGD momentum 0.9, lr 0.1 divided by 10 at
epochs 100 and 150, 200 epochs, weight decay 5e-4 (Fixup's mixup is not used), and the scalar biases
and multipliers at a tenth of the rate (``scalar_lr_factor``, the parameter groups of the Fixup
authors' script github.com/hongyi-zhang/Fixup, cifar/cifar_train.py; in RevUp the scalars are not
spectrally normalised, so at the full rate they can outpace the normalised kernels, see
docs/results/learning.md). Data: pad-4 random crop + flip + per-image standardisation.

Expected result: none stated (no source for RevUp's CIFAR numbers in our copy of the paper).
Needs CIFAR-10 prepared as TFDS array_record (see ``revjax.data.tfds_pipeline``).

Smoke (``:smoke``): 1 block per stage, batch 8, 2 steps, on random CIFAR-shaped examples.
"""

import ml_collections

from revjax.configs import cifar10_revnet110, default, is_smoke

MODEL = "revup110"
DATASET = "cifar10"
STEPS_PER_EPOCH = 50_000 // 128


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default.get_config()
    config.name = f"{DATASET}_{MODEL}"
    config.model = MODEL
    config.model_kwargs = ml_collections.ConfigDict({"backprop": "reversible"})
    config.dataset = DATASET
    config.dataset_options = ml_collections.ConfigDict({"augmentation": "standard"})
    config.global_batch_size = 128
    config.eval_batch_size = 500
    config.num_steps = 200 * STEPS_PER_EPOCH
    config.optimizer.learning_rate = 0.1
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = "piecewise"
    config.optimizer.boundaries_fractions = (0.5, 0.75)  # epochs 100 and 150 of 200
    config.optimizer.decay_factor = 0.1
    config.optimizer.scalar_lr_factor = 0.1
    config.log_every_steps = 100
    config.checkpoint_every_steps = 2_000
    if is_smoke(arg):
        cifar10_revnet110.shrink(config, units=(1, 1, 1))
    return config

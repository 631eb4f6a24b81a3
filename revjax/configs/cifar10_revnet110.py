"""RevNet-110 on CIFAR-10 (Gomez, Ren, Urtasun, Grosse 2017, arXiv:1707.04585, Sec. 5).

Model ``revnet110``: 9-9-9 basic reversible units, widths 32-64-128, 1,729,194 parameters
(counted by ``revjax.models.count_params``), reversible backprop. Optimisation as the RevNet
paper and its official code (renmengye/revnet-public): batch 100, SGD momentum 0.9, lr 0.1
-> 0.01 at 40k -> 0.001 at 60k iterations, 80k iterations, weight decay 2e-4 on kernels.

Input normalisation: pad-4 random crop + flip + *per-image standardisation* (the CIFAR recipe
of Chang et al. 2018, arXiv:1709.03698, used by every CIFAR config here). This differs from
the RevNet reference code, which subtracts the per-pixel mean image of the training set; we
do not implement that variant, so results may differ slightly from the paper's.

Expected result: test error 5.76% (ResNet-110: 5.74%), as reported in Gomez et al. (2017),
Table 3 (CIFAR classification error). Needs CIFAR-10 prepared as TFDS array_record (see
``revjax.data.tfds_pipeline``).

Smoke (``:smoke``): units 1-1-1, widths 8-16-16, batch 8, 2 steps, on 32 random
CIFAR-shaped examples (``fake_examples``; runs offline).
"""

import ml_collections

from revjax.configs import default, is_smoke

MODEL = "revnet110"
DATASET = "cifar10"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default.get_config()
    config.name = f"{DATASET}_{MODEL}"
    config.model = MODEL
    config.model_kwargs = ml_collections.ConfigDict({"backprop": "reversible"})
    config.dataset = DATASET
    config.dataset_options = ml_collections.ConfigDict({"augmentation": "standard"})
    config.global_batch_size = 100
    config.eval_batch_size = 500
    config.num_steps = 80_000
    config.optimizer.learning_rate = 0.1
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 2e-4
    config.optimizer.schedule = "piecewise"
    config.optimizer.boundaries_fractions = (0.5, 0.75)  # 40k and 60k of 80k steps
    config.optimizer.decay_factor = 0.1
    config.log_every_steps = 100
    config.checkpoint_every_steps = 2_000
    if is_smoke(arg):
        shrink(config)
    return config


def shrink(config: ml_collections.ConfigDict, **model_kwargs) -> None:
    """Seconds-long smoke run of a CIFAR-style multi-stage model (same code paths): the model
    fields `model_kwargs` (default units 1-1-1, widths 8-16-16), batch 8, 2 steps, fake data."""
    config.model_kwargs.update(model_kwargs or {"units": (1, 1, 1), "widths": (8, 16, 16)})
    config.global_batch_size = 8
    config.eval_batch_size = 8
    config.num_steps = 2
    config.log_every_steps = 1
    config.checkpoint_every_steps = 1
    config.eval_every_steps = 0
    config.fake_examples = 32  # random data of the dataset's shapes: runs offline

"""Default: the small reversible network ``revnet_mini`` on scikit-learn digits (no download).

Model: stem (3x3 conv, 32 channels) -> 4 additive couplings (2 x 16 channels, 3x3 convs,
``backprop="reversible"``) -> BN/ReLU/mean/dense; 37,866 parameters on 8x8x1 inputs.
Training: 1437 train images, batch 64 (22 steps/epoch), 30 epochs = 660 steps, SGD momentum
0.9, lr 0.1 decayed x0.1 at epochs 15 and 23, weight decay 5e-4 on kernels.

Expected result: test accuracy >= 97% on the 360 held-out digits, in a couple of minutes
on 2 CPU cores including compilation; the printed memory line shows the reversible training
step needing less compiled temp memory than "store".

Smoke (``--config=default:smoke``): 2 couplings of 2 x 8 channels, 20 steps (seconds).
"""

import ml_collections

from revjax.configs import is_smoke


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.name = "default"
    config.model = "revnet_mini"
    config.model_kwargs = ml_collections.ConfigDict(
        {"widths": (32,), "units": (4,), "backprop": "reversible"}
    )
    config.dataset = "digits"
    config.dataset_options = ml_collections.ConfigDict()
    config.data_dir = ml_collections.config_dict.placeholder(str)  # None: TFDS default
    config.fake_examples = 0  # > 0: that many random examples of the dataset's shapes
    config.global_batch_size = 64
    config.eval_batch_size = 120
    config.num_epochs = 30
    config.num_steps = 0  # > 0 overrides num_epochs
    config.seed = 0

    # Device mesh (revjax.train.sharding): "data" splits the batch (-1 = all devices left by
    # "space"); "space" > 1 splits input axis `spatial_axis` of every example (volumes, video);
    # shards must be multiples of `spatial_multiple` (2**levels for Haar networks).
    config.mesh = ml_collections.ConfigDict(
        {"data": -1, "space": 1, "spatial_axis": 1, "spatial_multiple": 1}
    )
    config.fsdp = False  # shard parameters and optimizer state over "data" too

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.1
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = False
    config.optimizer.b1, config.optimizer.b2, config.optimizer.eps = 0.9, 0.999, 1e-8  # Adam(W)
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = "piecewise"
    # Piecewise boundaries as fractions of the run: they follow an overridden num_steps or
    # num_epochs (here epochs 15 and 23 of 30). Absolute boundaries, if non-empty, win:
    # boundaries_steps, then boundaries_epochs.
    config.optimizer.boundaries_fractions = (0.5, 23 / 30)
    config.optimizer.boundaries_epochs = ()
    config.optimizer.boundaries_steps = ()
    config.optimizer.decay_factor = 0.1
    config.optimizer.halve_every_epochs = 0.0  # halving: every N epochs (wins if > 0) ...
    config.optimizer.halve_every_fraction = 0.0  # ... or every fraction f of the run
    config.optimizer.grad_clip_norm = 0.0
    config.optimizer.scalar_lr_factor = 1.0  # rate factor of biases/scales (Fixup recipe: 0.1)
    config.optimizer.warmup_steps = 0  # linear warm-up multiplying the schedule
    config.optimizer.accumulate_steps = 1  # > 1: optax.MultiSteps gradient accumulation
    # task and regularisers (revjax.tasks)
    config.task = ""  # a revjax.tasks name; "" = the dataset's own (classification, ...)
    # name -> weight of each registered regulariser; 0 switches it off
    config.regularisers = ml_collections.ConfigDict(
        {"weight_smoothness": 0.0}  # Chang et al.'s smoothness in depth (their 2e-4)
    )

    config.log_every_steps = 10
    config.checkpoint_every_steps = 200
    config.keep_checkpoints = 3
    config.async_checkpointing = True
    # Periodic test evaluation every N steps; 0: at the end only; -1 (auto): about
    # configs.AUTO_EVALS = 10 evaluations in runs of >= configs.AUTO_EVAL_MIN_STEPS = 1000
    # steps, else at the end only (revjax.configs.eval_every).
    config.eval_every_steps = -1
    config.memory_report = True
    config.memory_modes = ("reversible", "store")
    config.tensorboard = True  # also TensorBoard events in <workdir>/tensorboard (tensorboardX)
    config.progress_bar = True  # a bar on a terminal; plain log lines otherwise or if False

    # Drift guard: relative reconstruction error of the reversible body, measured on the
    # training batch at the first step and every `drift_check_every` steps (0 disables);
    # above `drift_rtol` the run stops (exit status 3) keeping the last good checkpoint.
    config.drift_check_every = 500
    config.drift_rtol = 1e-3
    # Resuming a workdir whose checkpoint has another run-defining config is refused; True
    # continues that checkpoint under the new values (num_steps/num_epochs may always grow).
    config.force_resume = False

    if is_smoke(arg):
        config.model_kwargs.widths = (16,)
        config.model_kwargs.units = (2,)
        config.num_steps = 20
        config.log_every_steps = 5
        config.checkpoint_every_steps = 10
    return config

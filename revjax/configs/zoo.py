"""The zoo: one reference model of every family trained on real images (README learning table).

``--config=zoo:<model>`` (e.g. ``zoo:revnet38``); ``zoo:<model>,smoke`` runs one step of batch 4
on random 16x16 canvases with one unit per stage (seconds). Task (built in, no download):
scikit-learn's handwritten digits on a CIFAR-shaped canvas (``dataset_options.canvas = 32``: each
8x8 digit upsampled x3 to 24x24, centred on 32x32, 3 channels; 1437 train / 360 test images,
`revjax.data.digits`). ``hyperbolic2d`` gets the per-pixel version (0 = background, 1 + class on
the strokes), task "segmentation", scored by mean IoU over the 11 classes (predicting all
background scores 0.071).

Every model is created at its registered defaults (reversible models in ``backprop="reversible"``);
``num_classes`` comes from the dataset. Optimisation per model (``RECIPES``): SGD with momentum 0.9
and a cosine-decayed learning rate 0.1, no weight decay, float32, batch norm in train mode; except

* revup20: Adam 2e-3, its scalar biases and multipliers at a tenth of it (Fixup's parameter
  groups, ``optimizer.scalar_lr_factor = 0.1``; Zhang, Dauphin, Ma 2019, arXiv:1901.09321).
  At Adam 1e-2 revup20 died (test accuracy 0.100 after 400 steps; why: docs/results/learning.md).
  The tenth for the scalars alone only delayed this at 1e-2 (0.886 after 400 steps, 0.103 after
  600); Adam 1e-3 reached only 0.797 in 600 x 32 steps (loss still falling).
* the LeanResNet step types other than lean_b_resnet: Adam 1e-2, the paper's optimiser
  (Ephrath et al. 2019, arXiv:1805.07821, Sec. 4). SGD 0.1 left the RD nets at 45-75% after
  100 x 32 steps: their reaction weights enter scaled by h = 0.1, and Adam's per-weight step
  does not see that scale. The same for lean_hamiltonian_circulant (SGD 0.1: training
  accuracy 0.75 after 180 x 32 steps; Adam 1e-2: 0.91 after 120).
* hyperbolic2d: Adam 3e-3, 300 x 32 steps, the held-out IoU evaluated every 50 steps. Adam is
  the optimiser of the authors' HyperNet code (its CamVid script: Adam, lr 0.1 divided by 10
  every 100 epochs, h = 0.01); the model keeps its registered defaults (width 16, 3 Haar
  levels, 2 leapfrog steps per unit, h = 0.5, no normalisation). SGD 0.05 reached mean IoU
  0.167 after 100 x 32 steps; Adam 3e-3 gives 0.935 after 300 (seed 0).

Steps x batch per model are those of the learning table (150 x 64 for the first three rows, 32
otherwise); the table (``experiments/learning_table.py``, from the runs' summary.json, three seeds
per row) is in docs/results/learning.md.
"""

import ml_collections

from revjax.configs import default, is_smoke

_SGD = {"optimizer": "sgd", "learning_rate": 0.1}
_LEAN_ADAM = {"optimizer": "adam", "learning_rate": 1e-2, "steps": 300, "batch": 32}
# model -> {steps, batch, optimizer, learning_rate[, scalar_lr_factor][, task][, eval_every]}
RECIPES = {
    "resnet32": {**_SGD, "steps": 150, "batch": 64},
    "revnet38": {**_SGD, "steps": 150, "batch": 64},
    "hamiltonian74": {**_SGD, "steps": 150, "batch": 64},
    "midpoint62": {**_SGD, "steps": 300, "batch": 32},
    "leapfrog62": {**_SGD, "steps": 100, "batch": 32},
    "revup20": {
        "optimizer": "adam",
        "learning_rate": 2e-3,
        "scalar_lr_factor": 0.1,
        "steps": 600,
        "batch": 32,
    },
    "lean_hamiltonian": {**_SGD, "steps": 300, "batch": 32},
    "lean_hamiltonian_circulant": _LEAN_ADAM,
    "lean_b_resnet": {**_SGD, "steps": 100, "batch": 32},
    "lean_b_mobilenet": _LEAN_ADAM,
    "lean_b_linear_mix": _LEAN_ADAM,
    "lean_b_explicit_rd": _LEAN_ADAM,
    "lean_b_implicit_rd": _LEAN_ADAM,
    "lean_b_circular_rd": _LEAN_ADAM,
    "hyperbolic2d": {
        "optimizer": "adam",
        "learning_rate": 3e-3,
        "steps": 300,
        "batch": 32,
        "task": "segmentation",
        "eval_every": 50,  # the held-out IoU's growth with steps
    },
}


def _parse(arg: str | None) -> tuple[str, str | None]:
    """ "<model>[,smoke]" (or "<model>:smoke") -> (model, "smoke" or None)."""
    model, _, rest = (arg or "").replace(":", ",").partition(",")
    if model not in RECIPES:
        raise ValueError(
            f"zoo needs a model, --config=zoo:<model>[,smoke]; got {arg!r}; valid models: "
            f"{', '.join(RECIPES)}"
        )
    is_smoke(rest)  # ValueError for anything but "smoke"/"runlocal"/nothing
    return model, rest or None


def _one_unit_per_stage(model: str) -> dict:
    """{"units": 1 per stage} of a registered model (the smoke run's shallowest body)."""
    from revjax import models  # the registry, only for the smoke run

    units = models.create(model).units
    return {"units": (1,) * len(units) if isinstance(units, tuple) else 1}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    model, smoke = _parse(arg)
    recipe = RECIPES[model]
    config = default.get_config()
    config.name = f"zoo_{model}"
    config.model = model
    config.model_kwargs = ml_collections.ConfigDict()
    config.dataset = "digits"
    task = recipe.get("task", "classification")
    config.task = task
    config.dataset_options = ml_collections.ConfigDict({"canvas": 32, "task": task})
    config.global_batch_size = recipe["batch"]
    config.eval_batch_size = 120
    config.num_steps = recipe["steps"]
    config.optimizer.name = recipe["optimizer"]
    config.optimizer.learning_rate = recipe["learning_rate"]
    config.optimizer.weight_decay = 0.0
    config.optimizer.schedule = "cosine"
    config.optimizer.scalar_lr_factor = recipe.get("scalar_lr_factor", 1.0)
    config.log_every_steps = 10
    config.eval_every_steps = recipe.get("eval_every", -1)
    config.checkpoint_every_steps = 0  # the final checkpoint only
    if is_smoke(smoke):
        config.model_kwargs = ml_collections.ConfigDict(_one_unit_per_stage(model))
        config.global_batch_size = 4
        config.eval_batch_size = 4
        config.num_steps = 1
        config.fake_examples = 4  # random canvas-shaped records: no eval over 360 images
        config.dataset_options.canvas = 16
        config.memory_report = False
        config.drift_check_every = 0  # one compilation fewer (the guard has its own tests)
        config.log_every_steps = 1
    return config

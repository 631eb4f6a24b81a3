"""``load(workdir) -> (model, variables, config)``: a trained run, ready for inference.

>>> model, variables, config = load("workdir/default")          # doctest: +SKIP
>>> logits = model.apply(variables, images, train=False)        # doctest: +SKIP
>>> logits = predict("workdir/default", images)                 # doctest: +SKIP
>>> evaluate("workdir/default", (images, labels))               # doctest: +SKIP
{'loss': ..., 'accuracy': ...}

A training run writes ``<workdir>/model_info.json`` (``write_model_info``): the input shape
and dtype, ``num_classes``, the task and the normalisation its inputs had, so ``load`` builds
the model without opening the training data (in-memory arrays registered with
``revjax.data.register_arrays`` need not be registered again). Inputs of ``predict`` and
``evaluate`` are model inputs: normalised as that file's ``normalisation`` says.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from revjax import data as data_lib

__all__ = ["load", "predict", "evaluate", "config_from_json", "write_model_info", "MODEL_INFO"]

MODEL_INFO = "model_info.json"


def _normalisation(config: Any) -> str:
    """How the dataset of ``config`` normalises the inputs it feeds the model (test split)."""
    name = config.dataset
    options = dict(config.get("dataset_options", {}) or {})
    if name in data_lib.DATASETS or name.startswith(("folder:", "tfds:")):
        if name == "digits":
            return "digits: pixel counts / 16, standardised by the training set's mean and std"
        if name == "pydoc_text":
            return "none: byte values 0..255"
        if name == "synthetic_video":
            return "none: generated clips"
        if options.get("augmentation", "standard") == "none":
            return "none: pixels / 255"
        return "per-image standardisation (x - mean) / max(std, 1 / sqrt(size))"
    return "none: arrays used as registered (revjax.data.register_arrays)"


def write_model_info(workdir: str | os.PathLike, config: Any, info: Any) -> Path:
    """Writes ``<workdir>/model_info.json``: what ``load``/``predict`` need without the data
    (``revjax.data.DatasetInfo`` fields, input dtype float32, normalisation)."""
    path = Path(workdir) / MODEL_INFO
    record = {
        "dataset": config.dataset,
        "num_classes": int(info.num_classes),
        "image_shape": [int(d) for d in info.image_shape],
        "dtype": "float32",
        "num_train": int(info.num_train),
        "num_test": int(info.num_test),
        "task": info.task,
        "normalisation": _normalisation(config),
    }
    path.write_text(json.dumps(record, indent=2))
    return path


def _dataset_info(workdir: Path, config: Any) -> data_lib.DatasetInfo:
    """The run's DatasetInfo from ``model_info.json`` (else from the dataset, older runs)."""
    path = workdir / MODEL_INFO
    if path.exists():
        record = json.loads(path.read_text())
        record["image_shape"] = tuple(record["image_shape"])
        return data_lib.DatasetInfo(*(record[field] for field in data_lib.DatasetInfo._fields))
    return data_lib.dataset_info(config.dataset, **data_lib.dataset_kwargs(config))


def _tuples(value: Any) -> Any:
    """JSON lists back to tuples (configs write tuples, e.g. ``widths``, as lists)."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def config_from_json(config: dict[str, Any]) -> ml_collections.ConfigDict:
    """ConfigDict of a config saved as JSON (``config.json`` or a checkpoint's item).

    Fields added to the config since older workdirs were written take the value those runs
    implicitly used (``checkpointing.ADDED_FIELD_DEFAULTS``)."""
    from revjax.train.checkpointing import ADDED_FIELD_DEFAULTS

    config = ml_collections.ConfigDict(_tuples(config))
    for dotted, value in ADDED_FIELD_DEFAULTS.items():
        *parents, field = dotted.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        if field not in node:
            node[field] = value
    return config


def load(
    workdir: str | os.PathLike, step: int | None = None
) -> tuple[Any, dict[str, Any], ml_collections.ConfigDict]:
    """Loads the model, its variables and its config from a training workdir.

    Args:
      workdir: a ``python -m revjax.train`` / ``train_and_evaluate`` output directory.
      step: checkpoint step to load; None = the latest.

    Returns:
      (model, variables, config): the linen module built from the checkpoint's own config,
      ``{"params": ..., **other collections (e.g. "batch_stats")}`` for
      ``model.apply(variables, x, train=False)``, and that config. The model is built from
      ``model_info.json`` (written by the trainer); the training data is not needed.

    Raises:
      FileNotFoundError: no checkpoint (or not ``step``) in ``workdir``.
    """
    from revjax.train import optim, trainer

    root = Path(workdir).expanduser().absolute()
    directory = root / "checkpoints"
    manager = ocp.CheckpointManager(directory, item_names=("state", "data", "config"))
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {directory}; train first")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise FileNotFoundError(f"no checkpoint at step {step} in {directory}; have {steps}")
        saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        config = config_from_json(dict(saved["config"]))
        info = _dataset_info(root, config)
        model = trainer.build_model(config, info)
        per_epoch = trainer.steps_per_epoch(config, info)
        tx, _ = optim.make_optimizer(config, per_epoch, max(int(config.num_steps), 1))
        abstract = trainer.abstract_state(model, tx, config.seed, info.image_shape)
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )
    finally:
        manager.close()
    state = restored["state"]
    variables = {"params": state["params"], **state.get("model_state", {})}
    return model, variables, config


def predict(
    workdir: str | os.PathLike,
    images: Any,
    *,
    batch_size: int = 256,
    step: int | None = None,
    loaded: tuple | None = None,
) -> np.ndarray:
    """Logits of a trained run on ``images`` (B, *input shape), in batches, ``train=False``.

    Args:
      workdir: a training workdir (see ``load``).
      images: model inputs, normalised as ``model_info.json`` says.
      batch_size: examples per forward pass.
      step: checkpoint step (None: the latest).
      loaded: ``load(workdir, step)``'s result, to skip loading again.

    Returns:
      float32 logits (B, ..., num_classes).

    Raises:
      ValueError: images of another shape than the run's inputs.
    """
    images = np.asarray(images, np.float32)
    path = Path(workdir).expanduser() / MODEL_INFO
    expected = tuple(json.loads(path.read_text())["image_shape"]) if path.exists() else None
    if expected is not None and tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"images have example shape {tuple(images.shape[1:])}; the run in {workdir} "
            f"takes {expected} (batch axis first)"
        )
    model, variables, _ = loaded or load(workdir, step)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    starts = range(0, len(images), batch_size)
    out = [np.asarray(apply(variables, images[i : i + batch_size]), np.float32) for i in starts]
    return np.concatenate(out, axis=0)


def evaluate(
    workdir: str | os.PathLike,
    data: tuple[Any, Any],
    *,
    batch_size: int = 256,
    step: int | None = None,
) -> dict[str, float]:
    """The run's task report (``loss``, ``accuracy``, ...) on ``data = (images, labels)``.

    Uses the run's task (``config.task`` or the dataset's, from ``model_info.json``) and the
    same sums as the trainer's evaluation; no dataset is opened."""
    from revjax import tasks

    images, labels = data
    labels = np.asarray(labels)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    loaded = load(workdir, step)
    config = loaded[2]
    task = tasks.get_task(config.get("task", "") or _dataset_info(Path(workdir), config).task)
    logits = predict(workdir, images, batch_size=batch_size, step=step, loaded=loaded)
    sums = task.eval_sums(logits, labels, np.ones(len(labels), np.float32))
    return task.eval_report(jax.tree.map(np.asarray, sums))

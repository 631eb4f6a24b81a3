"""Any prepared TFDS image-classification dataset by name: ``config.dataset = "tfds:<name>"``.

``<name>`` is what ``tfds.data_source`` takes (``"mnist"``, ``"oxford_flowers102"``,
``"my_dataset/config:1.0.0"``); the dataset must already be prepared in ``array_record`` format
under ``data_dir`` (see ``tfds_pipeline.preparation_instructions``). Everything else comes from
its ``DatasetInfo`` (read from ``dataset_info.json``, no TensorFlow):

* image and label keys: the dataset's ``supervised_keys`` if it has them, else the first
  ``Image`` feature (or, failing that, the first uint8 ``Tensor`` of rank 3) and the first
  ``ClassLabel``; options ``image_key`` / ``label_key`` override;
* classes: the label feature's ``ClassLabel.num_classes``;
* splits: ``"train"`` reads ``train_split`` (default ``"train"``), ``"test"`` reads
  ``test_split`` (default ``"test"``, else ``"validation"``, whichever the dataset has); TFDS
  slices such as ``"train[:10%]"`` pass through;
* example shape: that of the first training record after evaluation preprocessing (one
  record is read).

Preprocessing (applied per example inside the grain pipeline, so the stream stays
deterministic, sharded by process and checkpointable): option ``preprocess`` names a function

    preprocess(example, rng) -> {"image": (H, W, C) array, "label": int}

where ``example = {"image": (h, w, c) uint8, "label": int}`` is one record and ``rng`` is the
record's own ``np.random.Generator`` when training (derived from the seed and the record's
position in the global stream) and ``None`` for evaluation (no augmentation). Its image is cast
to float32 and its label to int32. Every training image must come out with the same shape.
The name is either one registered with ``register_preprocess(name, fn)`` (in the config file,
or before calling the trainer) or ``"package.module:function"`` (imported in each process, so
it also works with grain worker processes and multi-process launches). The default,
``"standard"``, is the CIFAR recipe (``tfds_pipeline.classification_preprocess`` with options
``augmentation``, ``pad``, ``max_scale``) and needs equal-sized images."""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from revjax.data import tfds_pipeline
from revjax.data.tfds_pipeline import AUGMENTATIONS, DatasetNotPreparedError

__all__ = [
    "PREFIX",
    "is_tfds_name",
    "register_preprocess",
    "resolve_preprocess",
    "info_fields",
    "load",
]

PREFIX = "tfds:"
Preprocess = Callable[[dict[str, Any], Any], dict[str, Any]]
_PREPROCESS: dict[str, Preprocess] = {}

OPTIONS: dict[str, Any] = {
    "image_key": None,
    "label_key": None,
    "train_split": "train",
    "test_split": None,
    "preprocess": "standard",
    **tfds_pipeline.IMAGE_OPTIONS,
}


def is_tfds_name(name: str) -> bool:
    """Whether a dataset name designates a TFDS dataset by name (``tfds:<name>``)."""
    return name.startswith(PREFIX) and len(name) > len(PREFIX)


def _tfds_name(name: str) -> str:
    return name[len(PREFIX) :]


def register_preprocess(name: str, fn: Preprocess) -> None:
    """Registers ``fn(example, rng) -> {"image", "label"}`` under ``name`` for the
    ``preprocess`` option of ``tfds:<name>`` datasets (see the module docstring).

    Raises:
      ValueError: ``name`` is empty, contains ":" (reserved for ``module:function``) or is
        the built-in "standard"; or ``fn`` is not callable.
    """
    if not name or ":" in name or name == "standard":
        raise ValueError(
            f"preprocess name {name!r} must be non-empty, without ':', and not 'standard'"
        )
    if not callable(fn):
        raise ValueError(f"preprocess {name!r} must be callable, got {type(fn).__name__}")
    _PREPROCESS[name] = fn


def resolve_preprocess(spec: str) -> Preprocess:
    """The function a ``preprocess`` option names: registered, or ``module:function``.

    Raises:
      ValueError: neither registered nor an importable ``module:function``; the message lists
        the registered names.
    """
    if spec in _PREPROCESS:
        return _PREPROCESS[spec]
    module, sep, attr = spec.partition(":")
    if sep and module and attr:
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"preprocess {spec!r} could not be imported: {error}") from None
        if callable(fn):
            return fn
    registered = ", ".join(sorted(_PREPROCESS)) or "none"
    raise ValueError(
        f"unknown preprocess {spec!r}: register it with revjax.data.register_preprocess(name, fn) "
        f"or name it as 'package.module:function' (registered: {registered}; built in: standard)"
    )


def _options(kwargs: dict[str, Any]) -> dict[str, Any]:
    unknown = set(kwargs) - set(OPTIONS)
    if unknown:
        raise TypeError(
            f"tfds: datasets got unknown options {sorted(unknown)}; valid: {sorted(OPTIONS)}"
        )
    options = {**OPTIONS, **kwargs}
    augmentation = options["augmentation"]
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {augmentation!r}")
    return options


def _not_prepared(name: str, data_dir, error: Exception) -> DatasetNotPreparedError:
    return DatasetNotPreparedError(
        f"Dataset {name!r} is not prepared under data_dir={data_dir!s} (TFDS said: "
        f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})\n"
        + tfds_pipeline.preparation_instructions(_tfds_name(name), data_dir)
    )


def _builder(name: str, data_dir: str | os.PathLike | None):
    """The dataset's TFDS builder, read from its prepared files; raises if not prepared."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(_tfds_name(name), data_dir=data_dir)
        prepared = builder.is_prepared() if hasattr(builder, "is_prepared") else True
    except Exception as error:  # DatasetNotFoundError, missing TensorFlow for code builders
        raise _not_prepared(name, data_dir, error) from error
    if not prepared or not builder.info.splits:
        raise _not_prepared(name, data_dir, FileNotFoundError("no prepared splits"))
    return builder


def _keys(name: str, info, options: dict[str, Any]) -> tuple[str, str, int]:
    """(image key, label key, number of classes) of a dataset's features."""
    import tensorflow_datasets as tfds

    features = info.features
    supervised = tuple(info.supervised_keys or ())
    if len(supervised) != 2 or not all(isinstance(k, str) for k in supervised):
        supervised = ()
    images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
    images += [
        k
        for k, f in features.items()
        if type(f) is tfds.features.Tensor and len(f.shape) == 3 and f.np_dtype == np.uint8
    ]
    labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
    image_key = options["image_key"] or (supervised[0] if supervised else None)
    image_key = image_key or (images[0] if images else None)
    label_key = options["label_key"] or (supervised[1] if supervised else None)
    label_key = label_key or (labels[0] if labels else None)
    valid = sorted(features.keys())
    if image_key not in features:
        raise ValueError(
            f"{name}: no image feature {image_key!r}; set dataset_options.image_key to one of "
            f"{valid}"
        )
    if label_key not in features or not isinstance(features[label_key], tfds.features.ClassLabel):
        raise ValueError(
            f"{name}: {label_key!r} is not a ClassLabel feature (features: {valid}); set "
            "dataset_options.label_key (tfds: datasets by name are image classification)"
        )
    return image_key, label_key, int(features[label_key].num_classes)


def _split(info, split: str, options: dict[str, Any]) -> str:
    """The TFDS split that "train"/"test" (possibly sliced) stand for."""
    head, bracket, rest = split.partition("[")
    if head == "train":
        head = options["train_split"]
    elif head == "test":
        head = options["test_split"] or next(
            (s for s in ("test", "validation") if s in info.splits), "test"
        )
    if head not in info.splits:
        raise ValueError(
            f"split {head!r} is not in this dataset (splits: {sorted(info.splits)}); set "
            "dataset_options.train_split / test_split"
        )
    return head + bracket + rest


class _KeySource:
    """``source[i] = {"image": record[image_key], "label": record[label_key]}``."""

    def __init__(self, records: Sequence[dict[str, Any]], image_key: str, label_key: str):
        self._records, self._image_key, self._label_key = records, image_key, label_key

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self._records[index]
        return {"image": np.asarray(record[self._image_key]), "label": record[self._label_key]}

    def __repr__(self) -> str:
        return f"KeySource({self._records!r}, image={self._image_key}, label={self._label_key})"


def _apply_user(
    example: dict[str, Any], rng: Any, *, fn: Preprocess, spec: str
) -> dict[str, np.ndarray]:
    """``fn(example, rng)`` with its output checked and cast (image float32, label int32)."""
    out = fn(example, rng)
    if not isinstance(out, dict) or "image" not in out or "label" not in out:
        raise ValueError(
            f"preprocess {spec!r} must return a dict with 'image' and 'label', got "
            f"{type(out).__name__} {sorted(out) if isinstance(out, dict) else ''}"
        )
    return {"image": np.asarray(out["image"], np.float32), "label": np.int32(out["label"])}


def _preprocess(options: dict[str, Any]) -> Preprocess:
    spec = options["preprocess"]
    if spec == "standard":
        image_options = {k: options[k] for k in tfds_pipeline.IMAGE_OPTIONS}
        return functools.partial(tfds_pipeline.classification_preprocess, **image_options)
    return functools.partial(_apply_user, fn=resolve_preprocess(spec), spec=spec)


def _open(name: str, split: str, data_dir, options: dict[str, Any]):
    """(builder info, KeySource of the split, number of classes)."""
    import tensorflow_datasets as tfds

    info = _builder(name, data_dir).info
    image_key, label_key, num_classes = _keys(name, info, options)
    tfds_split = _split(info, split, options)
    try:
        records = tfds.data_source(
            _tfds_name(name), split=tfds_split, data_dir=data_dir, download=False
        )
    except Exception as error:  # not array_record, missing shards
        raise _not_prepared(name, data_dir, error) from error
    return info, _KeySource(records, image_key, label_key), num_classes


def info_fields(
    name: str, data_dir: str | os.PathLike | None = None, **kwargs: Any
) -> dict[str, Any]:
    """DatasetInfo fields of ``tfds:<name>``; reads the first training record to find the
    example shape after preprocessing.

    Raises:
      DatasetNotPreparedError: not prepared under ``data_dir`` (array_record).
      ValueError: no image or ClassLabel feature, an unknown split or preprocess, or a
        preprocess returning something else than {"image", "label"}.
    """
    options = _options(kwargs)
    info, train, num_classes = _open(name, "train", data_dir, options)
    if len(train) == 0:
        raise ValueError(f"{name}: split {options['train_split']!r} has no examples")
    first = _preprocess(options)(train[0], None)
    test_split = _split(info, "test", options)
    return {
        "num_classes": num_classes,
        "image_shape": tuple(int(d) for d in np.shape(first["image"])),
        "num_train": int(info.splits[options["train_split"]].num_examples),
        "num_test": int(info.splits[test_split].num_examples),
        "task": "classification",
    }


def load(
    name: str, split: str, *, data_dir: str | os.PathLike | None = None, **kwargs: Any
) -> tuple[_KeySource, Preprocess]:
    """(source, preprocess) of one split of ``tfds:<name>`` (see the module docstring)."""
    options = _options(kwargs)
    _, source, _ = _open(name, split, data_dir, options)
    return source, _preprocess(options)

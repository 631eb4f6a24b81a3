"""Deterministic, checkpointable input pipelines (grain) for every revjax experiment.

Public API (used by the trainer):

* ``DATASETS``: valid dataset names.
* ``dataset_info(name, **options) -> DatasetInfo``: classes, example shape, split sizes,
  task, without reading any data.
* ``make_dataset(name, split, *, global_batch_size, seed, train, ...) -> grain.IterDataset``:
  iterating yields dicts of numpy arrays ``{"image": float32 (B, H, W, C) or
  (B, T, H, W, C), "label": int32 (B,) or (B, T, H, W)}`` with ``B`` the per-host batch
  (with ``drop_remainder=False`` also ``"weight": float32 (B,)``, 0 for padding);
  the iterator has ``get_state()`` / ``set_state(state)`` for checkpointing.

Datasets: ``digits`` (scikit-learn, no download), ``synthetic_video`` (generated), ``cifar10``,
``cifar100``, ``stl10``, ``imagenet2012``, ``davis`` (TFDS array_record, prepared beforehand; see
``revjax.data.tfds_pipeline``), and the user's own in-memory arrays registered under a name with
``register_arrays(name, train=(x, y), test=(x, y))``, image folders ``"folder:<root>"``
(``root/{train,test}/<class>/<images>``, see ``revjax.data.image_folder``), and any prepared TFDS
image-classification dataset by name, ``"tfds:<name>"``, with the user's per-example preprocessing
(``register_preprocess``; see ``revjax.data.tfds_named``). ``dataset_kwargs(config)`` gives the
``data_dir``, ``fake_examples`` and dataset options of a config, for both ``dataset_info`` and
``make_dataset``. TensorFlow is never imported. ``fake_examples=N`` (> 0) replaces any dataset by N
random records per split with its shapes and classes (TFDS images go through the dataset's own
preprocessing), so smoke runs need no download.

Pipeline (all grain ``MapDataset`` steps, so the stream is a pure function of ``seed``)::

    source -> [train: shuffle(seed) -> repeat(num_epochs) -> random_map(augment)]
    | [eval: map(preprocess)] -> this process's rows of every global batch
    -> to_iter_dataset -> batch

Every process builds the same global stream (the one a single process reads) and keeps,
of global batch k, the rows ``[k B + p b, k B + (p + 1) b)`` (``B`` global batch, ``b = B / P``
per process, ``p`` the process index): the global batches of a P-process run are those of a
1-process run, and the process order of ``jax.make_array_from_process_local_data`` (process p
holds rows ``[p b, (p + 1) b)`` of a batch sharded over ``jax.devices()``) puts every row on
the device that holds it in the 1-process run. Shuffling is reseeded every epoch and the
augmentation rng of each record is derived from ``(seed, position in the global stream)``, so
a run resumed with ``set_state`` sees exactly the batches of an uninterrupted run, and the
state (examples this process has read) is the same on every process.

>>> ds = make_dataset("digits", "train", global_batch_size=32, seed=0, train=True)
>>> it = iter(ds)
>>> batch = next(it)
>>> batch["image"].shape, batch["label"].dtype
((32, 8, 8, 1), dtype('int32'))
>>> state = it.get_state()  # save with the checkpoint; later: iter(ds).set_state(state)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import grain
import numpy as np

from revjax.data import digits, image_folder, synthetic_video, text, tfds_named, tfds_pipeline
from revjax.data.arrays import ArraySource, FakeSource, check_arrays
from revjax.data.tfds_named import register_preprocess
from revjax.data.tfds_pipeline import TFDS_DATASETS, DatasetNotPreparedError

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "ProcessRows",
    "dataset_info",
    "dataset_kwargs",
    "host_batch_size",
    "make_dataset",
    "register_arrays",
    "register_preprocess",
]

DATASETS = ("digits", "synthetic_video", "pydoc_text", *TFDS_DATASETS)
# The generated or shipped datasets: modules with ``info_fields`` and ``split_source``.
_BUILT_IN = {"digits": digits, "synthetic_video": synthetic_video, "pydoc_text": text}
_ARRAYS: dict[str, dict[str, Any]] = {}  # name -> {"train": (x, y), "test": (x, y), ...}


class DatasetInfo(NamedTuple):
    """Static description of a dataset.

    Attributes:
      num_classes: label classes (segmentation: including background 0).
      image_shape: one example's input, (H, W, C) or (T, H, W, C) for clips.
      num_train: examples in the standard train split (DAVIS: clips = videos × clips/video).
      num_test: examples in the evaluation split.
      task: "classification" (label (B,)) or "segmentation" (label (B, T, H, W)).
    """

    num_classes: int
    image_shape: tuple[int, ...]
    num_train: int
    num_test: int
    task: str


def _check_name(name: str) -> None:
    known = name in DATASETS or name in _ARRAYS
    if not (known or image_folder.is_folder(name) or tfds_named.is_tfds_name(name)):
        valid = ", ".join((*DATASETS, *sorted(_ARRAYS)))
        raise ValueError(
            f"Unknown dataset {name!r}; valid names: {valid} (own numpy arrays: "
            "revjax.data.register_arrays; an image folder: 'folder:<root>'; any prepared "
            "TFDS dataset: 'tfds:<name>')"
        )


def dataset_kwargs(config: Any) -> dict[str, Any]:
    """The keyword arguments of ``dataset_info`` and ``make_dataset`` that a run's config
    fixes: ``data_dir``, ``fake_examples`` and ``dataset_options`` (the one place that reads
    them, for the trainer, evaluation, memory reports and ``revjax.train.load``)."""
    return {
        "data_dir": config.get("data_dir"),
        "fake_examples": int(config.get("fake_examples", 0) or 0),
        **dict(config.get("dataset_options", {}) or {}),
    }


def register_arrays(
    name: str, train: tuple[Any, Any], test: tuple[Any, Any], num_classes: int | None = None
) -> DatasetInfo:
    """Registers in-memory numpy data as dataset ``name`` (then ``config.dataset = name``).

    The arrays go through the same pipeline as every dataset (seeded shuffling, sharding by
    process, checkpointable position); no augmentation or normalisation is applied, so pass
    them preprocessed. A run resumed in another process must register the same arrays again.

    Args:
      name: a new name (not a built-in dataset).
      train: (images, labels) of the training split; images (N, H, W, C) or
        (N, T, H, W, C); labels (N,) classes or per-pixel (N, H, W) / (N, T, H, W).
      test: (images, labels) of the evaluation split, same shapes per example.
      num_classes: default 1 + the largest label in either split.

    Returns:
      the ``DatasetInfo`` the trainer will use.
    """
    if name in DATASETS:
        raise ValueError(f"{name!r} is a built-in dataset; register the arrays under another name")
    train = check_arrays(*train, where=f"{name} train")
    test = check_arrays(*test, where=f"{name} test")
    if train[0].shape[1:] != test[0].shape[1:]:
        raise ValueError(
            f"{name}: train images {train[0].shape[1:]} and test images {test[0].shape[1:]} "
            "differ in shape"
        )
    largest = int(max(train[1].max(), test[1].max()))
    if num_classes is None:
        num_classes = largest + 1
    elif largest >= num_classes:
        raise ValueError(f"{name}: label {largest} is out of range for num_classes={num_classes}")
    _ARRAYS[name] = {"train": train, "test": test, "num_classes": int(num_classes)}
    return dataset_info(name)


def dataset_info(
    name: str, fake_examples: int = 0, data_dir: str | os.PathLike | None = None, **options: Any
) -> DatasetInfo:
    """Describes ``name`` without reading data (``tfds:<name>``: its first training record).

    Args:
      name: one of ``DATASETS``, a name given to ``register_arrays``, ``folder:<root>`` or
        ``tfds:<name>``.
      fake_examples: N > 0: the fake version (N examples in each split).
      data_dir: TFDS data directory (read for ``tfds:<name>`` only).
      **options: the dataset options also passed to ``make_dataset`` (they change the shape
        for ``synthetic_video``, ``davis`` and ``imagenet2012``).

    Returns:
      the dataset's ``DatasetInfo``.
    """
    _check_name(name)
    if name in _ARRAYS:
        entry = _ARRAYS[name]
        (x, y), (xt, _) = entry["train"], entry["test"]
        task = "segmentation" if y.ndim > 1 else "classification"
        info = DatasetInfo(entry["num_classes"], tuple(x.shape[1:]), len(x), len(xt), task)
    elif image_folder.is_folder(name):
        info = DatasetInfo(**image_folder.info_fields(name, **options))
    elif name in _BUILT_IN:
        info = DatasetInfo(**_BUILT_IN[name].info_fields(**options))
    elif tfds_named.is_tfds_name(name):
        if fake_examples:
            raise ValueError(
                f"fake_examples is not available for {name!r} (its shapes come from the "
                "prepared data); use a built-in dataset for offline smoke runs"
            )
        info = DatasetInfo(**tfds_named.info_fields(name, data_dir=data_dir, **options))
    else:
        info = DatasetInfo(**tfds_pipeline.info_fields(name, **options))
    if fake_examples:
        info = info._replace(num_train=int(fake_examples), num_test=int(fake_examples))
    return info


def host_batch_size(global_batch_size: int, *, process_count: int, device_count: int) -> int:
    """Per-host batch ``global_batch_size // process_count`` after divisibility checks.

    Args:
      global_batch_size: examples per step over all hosts.
      process_count: number of JAX processes (hosts).
      device_count: number of devices over all hosts.

    Returns:
      the per-host batch size.

    Raises:
      ValueError: the global batch is not positive or not divisible by the device or process count.
    """
    if global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
    if global_batch_size % device_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} is not divisible by "
            f"jax.device_count()={device_count}; use a multiple of {device_count}."
        )
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} is not divisible by "
            f"jax.process_count()={process_count}."
        )
    return global_batch_size // process_count


class ProcessRows(grain.MapDataset):
    """This process's rows of every global batch of a global example stream.

    Local element ``i`` is global element ``(i // b) B + p b + i % b`` (``B`` global batch,
    ``b = B / P`` per-process batch, ``p`` process index, ``P`` process count): concatenating
    the processes' local batches k in process order gives global batch k. Without ``pad``
    only whole global batches are kept; with ``pad`` the last partial global batch is padded to
    ``B`` with copies of global element 0 and every element gets ``"weight"`` (float32 1 for
    a real example, 0 for padding), so every process yields the same number of batches (a
    collective per batch never waits for a process that has run out)."""

    def __init__(
        self,
        parent: grain.MapDataset,
        global_batch_size: int,
        process_index: int,
        process_count: int,
        pad: bool,
    ):
        super().__init__(parent)
        self._global_batch = global_batch_size
        self._local_batch = global_batch_size // process_count
        self._offset = process_index * self._local_batch
        self._parent_length = len(parent)
        self._pad = pad
        full, rest = divmod(self._parent_length, global_batch_size)
        self._length = (full + (1 if pad and rest else 0)) * self._local_batch

    def __len__(self) -> int:
        return self._length

    def global_index(self, index: int) -> int:
        """The global stream position of local element ``index`` (in [0, len(self)))."""
        batch, row = divmod(index, self._local_batch)
        return batch * self._global_batch + self._offset + row

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, index = divmod(index, self._length)
        position = self.global_index(index)
        real = position < self._parent_length
        element = self._parent[epoch * self._parent_length + (position if real else 0)]
        if not self._pad or element is None:
            return element
        return {**element, "weight": np.float32(real)}

    def __str__(self) -> str:
        return (
            f"ProcessRows(global_batch={self._global_batch}, rows=[{self._offset}, "
            f"{self._offset + self._local_batch}), pad={self._pad})"
        )


def _load(
    name: str, split: str, data_dir: str | os.PathLike | None, options: dict[str, Any]
) -> tuple[Sequence[Any], Callable[[Any, Any], Any] | None]:
    """(random-access source, preprocess or None) of one dataset split."""
    if name in _ARRAYS:
        key = "test" if split.startswith("test") else "train"
        if split not in ("train", "test"):
            raise ValueError(f"{name!r} (registered arrays) has splits 'train' and 'test' only")
        return ArraySource(*_ARRAYS[name][key]), None
    if image_folder.is_folder(name):
        return image_folder.load(name, split, **options)
    if name in _BUILT_IN:
        return _BUILT_IN[name].split_source(split, **options), None
    if tfds_named.is_tfds_name(name):
        return tfds_named.load(name, split, data_dir=data_dir, **options)
    return tfds_pipeline.load(name, split, data_dir=data_dir, **options)


def _fake(
    name: str, split: str, size: int, seed: int, options: dict[str, Any]
) -> tuple[Sequence[Any], Callable[[Any, Any], Any] | None]:
    """(FakeSource, preprocess or None) with the shapes of ``name``'s split."""
    info = dataset_info(name, fake_examples=size, **options)
    if name in ("cifar10", "cifar100", "stl10", "imagenet2012"):
        resolved = tfds_pipeline.resolve_options(name, options)
        shape = info.image_shape
        if name == "imagenet2012":
            shape = (resolved["resize_size"], resolved["resize_size"], 3)
        source = FakeSource(size, split, info.num_classes, shape, raw=True, seed=seed)
        return source, tfds_pipeline.load_preprocess(name, resolved)
    label_shape = tuple(info.image_shape[:-1]) if info.task == "segmentation" else ()
    return FakeSource(size, split, info.num_classes, info.image_shape, label_shape, seed=seed), None


def _evaluate(preprocess: Callable[[Any, Any], Any], example: Any) -> Any:
    """Deterministic (evaluation) preprocessing: no rng."""
    return preprocess(example, None)


def make_dataset(
    name: str,
    split: str,
    *,
    global_batch_size: int,
    seed: int,
    train: bool,
    num_epochs: int | None = None,
    data_dir: str | os.PathLike | None = None,
    drop_remainder: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    device_count: int | None = None,
    num_threads: int = 8,
    prefetch_buffer_size: int = 256,
    worker_count: int = 0,
    fake_examples: int = 0,
    **options: Any,
) -> grain.IterDataset:
    """Builds the batched, sharded, checkpointable input pipeline of one split.

    Args:
      name: one of ``DATASETS``.
      split: "train" or "test" (TFDS datasets also take TFDS split strings such as
        "train[:10%]" for subsampling; "test" means "validation" for imagenet2012/davis).
      global_batch_size: examples per step over all hosts; must divide by
        ``jax.device_count()``. Each host yields ``global_batch_size // process_count``
        rows of every global batch (its block in process order; see ``ProcessRows``).
      seed: shuffling and augmentation seed, in [0, 2**32).
      train: shuffle (reseeded each epoch), repeat and augment; otherwise a deterministic
        pass in source order with evaluation preprocessing.
      num_epochs: passes over the data; None = forever when training, one pass otherwise.
      data_dir: TFDS data directory (TFDS datasets only).
      drop_remainder: drop the last partial global batch. False (exact evaluation): pad it
        to the full batch with copies of an example and add ``"weight"`` (float32 (B,), 0 for
        padding) to every batch; every process then yields the same number of batches.
      process_index: this host's index (default ``jax.process_index()``).
      process_count: number of hosts (default ``jax.process_count()``).
      device_count: devices over all hosts (default ``jax.device_count()``).
      num_threads: grain reader threads in this process.
      prefetch_buffer_size: examples read ahead by those threads.
      worker_count: grain worker processes (0 = in-process, the default). Workers need absl flags
        parsed in the main program (``absl.app.run`` or ``absl.flags.FLAGS.mark_as_parsed()``).
      fake_examples: N > 0 reads N random records of the dataset's shapes instead of the
        data (``FakeSource``; CIFAR/STL/ImageNet records are uint8 images run through the
        dataset's preprocessing, the others are ready float32 examples). No download.
      **options: dataset options, e.g. ``augmentation="lean"`` (CIFAR/STL), ``clip_length``,
        ``height``, ``width`` (DAVIS, synthetic_video); see ``tfds_pipeline.default_options``
        and ``synthetic_video.CLIP_DEFAULTS``.

    Returns:
      a ``grain.IterDataset``; ``iter(ds)`` yields ``{"image", "label"}`` numpy batches
      and supports ``get_state()`` / ``set_state()``.

    Raises:
      ValueError: unknown ``name`` (the message lists valid names), a batch size not
        divisible by the device count, or an empty split.
      DatasetNotPreparedError: a TFDS dataset is missing; the message says how to build it.
    """
    _check_name(name)
    if process_index is None or process_count is None or device_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
        device_count = jax.device_count() if device_count is None else device_count
    batch_size = host_batch_size(
        global_batch_size, process_count=process_count, device_count=device_count
    )
    if fake_examples:
        source, preprocess = _fake(name, split, int(fake_examples), seed, options)
    else:
        source, preprocess = _load(name, split, data_dir, options)

    ds = grain.MapDataset.source(source)
    if len(ds) == 0:
        raise ValueError(f"{name!r} split {split!r} has no examples.")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must lie in [0, {process_count}).")
    ds = ds.seed(seed)
    if train:
        ds = ds.shuffle().repeat(num_epochs)
        if preprocess is not None:
            ds = ds.random_map(preprocess)
    else:
        if preprocess is not None:
            ds = ds.map(functools.partial(_evaluate, preprocess))
        if num_epochs not in (None, 1):
            ds = ds.repeat(num_epochs, reseed_each_epoch=False)
    ds = ProcessRows(ds, global_batch_size, process_index, process_count, not drop_remainder)
    reads = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
    batched = ds.to_iter_dataset(reads).batch(batch_size, drop_remainder=drop_remainder)
    if worker_count > 0:
        batched = batched.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return batched

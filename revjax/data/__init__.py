"""Deterministic, checkpointable input pipelines (grain) for every revjax experiment.

Public API (used by the trainer):

* ``DATASETS``: valid dataset names.
* ``dataset_info(name, **options) -> DatasetInfo``: classes, example shape, split sizes,
  task, without reading any data.
* ``make_dataset(name, split, *, global_batch_size, seed, train, ...) -> grain.IterDataset``:
  iterating yields dicts of numpy arrays ``{"image": float32 (B, H, W, C) or
  (B, T, H, W, C), "label": int32 (B,) or (B, T, H, W)}`` with ``B`` the per-host batch;
  the iterator has ``get_state()`` / ``set_state(state)`` for checkpointing.

Datasets: ``digits`` (scikit-learn, no download), ``synthetic_video`` (generated),
``cifar10``, ``cifar100``, ``stl10``, ``imagenet2012``, ``davis`` (TFDS array_record,
prepared beforehand; see ``revjax.data.tfds_pipeline``). TensorFlow is never imported.

Pipeline (all grain ``MapDataset`` steps, so the stream is a pure function of ``seed``)::

    source -> this host's contiguous shard -> [train: shuffle(seed) -> repeat(num_epochs)
    -> random_map(augment)] | [eval: map(preprocess)] -> to_iter_dataset -> batch

Shuffling is reseeded every epoch and the augmentation rng of each record is derived from
``(seed, position in the repeated stream)``, so a run resumed with ``set_state`` sees
exactly the batches of an uninterrupted run.

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

from revjax.data import digits, synthetic_video, tfds_pipeline
from revjax.data.tfds_pipeline import TFDS_DATASETS, DatasetNotPreparedError

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "dataset_info",
    "host_batch_size",
    "make_dataset",
    "shard_bounds",
]

DATASETS = ("digits", "synthetic_video", *TFDS_DATASETS)


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
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")


def dataset_info(name: str, **options: Any) -> DatasetInfo:
    """Describes ``name`` without reading data.

    Args:
      name: one of ``DATASETS``.
      **options: the dataset options also passed to ``make_dataset`` (they change the shape
        for ``synthetic_video``, ``davis`` and ``imagenet2012``).

    Returns:
      the dataset's ``DatasetInfo``.
    """
    _check_name(name)
    if name == "digits":
        return DatasetInfo(**digits.info_fields(**options))
    if name == "synthetic_video":
        return DatasetInfo(**synthetic_video.info_fields(**options))
    return DatasetInfo(**tfds_pipeline.info_fields(name, **options))


def host_batch_size(global_batch_size: int, *, process_count: int, device_count: int) -> int:
    """Per-host batch ``global_batch_size // process_count`` after divisibility checks.

    Args:
      global_batch_size: examples per step over all hosts.
      process_count: number of JAX processes (hosts).
      device_count: number of devices over all hosts.

    Returns:
      the per-host batch size.

    Raises:
      ValueError: the global batch is not positive or not divisible by the device or
        process count.
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


def shard_bounds(
    num_examples: int, shard_index: int, shard_count: int, drop_remainder: bool
) -> tuple[int, int]:
    """Contiguous ``[start, end)`` interval of shard ``shard_index`` (grain's even split).

    With ``drop_remainder`` all shards have ``num_examples // shard_count`` examples (hosts
    then run the same number of steps per epoch); otherwise the first
    ``num_examples % shard_count`` shards get one extra example.

    Args:
      num_examples: N.
      shard_index: this process's shard, in [0, shard_count).
      shard_count: number of shards.
      drop_remainder: equal-size shards, dropping the last ``N % shard_count`` examples.

    Returns:
      (start, end) with ``0 <= start <= end <= N``.
    """
    options = grain.sharding.ShardOptions(shard_index, shard_count, drop_remainder)
    size = num_examples // options.shard_count
    start, end = size * options.shard_index, size * (options.shard_index + 1)
    if not options.drop_remainder:
        extra = num_examples % options.shard_count
        start += min(options.shard_index, extra)
        end += min(options.shard_index + 1, extra)
    return start, end


def _load(
    name: str, split: str, data_dir: str | os.PathLike | None, options: dict[str, Any]
) -> tuple[Sequence[Any], Callable[[Any, Any], Any] | None]:
    """(random-access source, preprocess or None) of one dataset split."""
    if name == "digits":
        return digits.split_source(split, **options), None
    if name == "synthetic_video":
        return synthetic_video.split_source(split, **options), None
    return tfds_pipeline.load(name, split, data_dir=data_dir, **options)


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
    **options: Any,
) -> grain.IterDataset:
    """Builds the batched, sharded, checkpointable input pipeline of one split.

    Args:
      name: one of ``DATASETS``.
      split: "train" or "test" (TFDS datasets also take TFDS split strings such as
        "train[:10%]" for subsampling; "test" means "validation" for imagenet2012/davis).
      global_batch_size: examples per step over all hosts; must divide by
        ``jax.device_count()``. Each host yields ``global_batch_size // process_count``.
      seed: shuffling and augmentation seed, in [0, 2**32).
      train: shuffle (reseeded each epoch), repeat and augment; otherwise a deterministic
        pass in source order with evaluation preprocessing.
      num_epochs: passes over the data; None = forever when training, one pass otherwise.
      data_dir: TFDS data directory (TFDS datasets only).
      drop_remainder: drop the last partial batch (use False for exact evaluation; hosts
        may then see different numbers of batches unless the split divides evenly).
      process_index: this host's index (default ``jax.process_index()``).
      process_count: number of hosts (default ``jax.process_count()``).
      device_count: devices over all hosts (default ``jax.device_count()``).
      num_threads: grain reader threads in this process.
      prefetch_buffer_size: examples read ahead by those threads.
      worker_count: grain worker processes (0 = in-process, the default). Workers need
        absl flags parsed in the main program (``absl.app.run`` or
        ``absl.flags.FLAGS.mark_as_parsed()``).
      **options: dataset options, e.g. ``augmentation="lean"`` (CIFAR/STL), ``clip_length``,
        ``height``, ``width`` (DAVIS, synthetic_video); see ``tfds_pipeline.default_options``
        and ``synthetic_video.CLIP_DEFAULTS``.

    Returns:
      a ``grain.IterDataset``; ``iter(ds)`` yields ``{"image", "label"}`` numpy batches
      and supports ``get_state()`` / ``set_state()``.

    Raises:
      ValueError: unknown ``name`` (the message lists valid names), a batch size not
        divisible by the device count, or an empty shard.
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
    source, preprocess = _load(name, split, data_dir, options)

    ds = grain.MapDataset.source(source)
    start, end = shard_bounds(len(ds), process_index, process_count, drop_remainder=train)
    if end <= start:
        raise ValueError(
            f"{name!r} split {split!r} has {len(ds)} examples: too few for shard "
            f"{process_index} of {process_count}."
        )
    ds = ds[start:end].seed(seed)
    if train:
        ds = ds.shuffle().repeat(num_epochs)
        if preprocess is not None:
            ds = ds.random_map(preprocess)
    else:
        if preprocess is not None:
            ds = ds.map(functools.partial(_evaluate, preprocess))
        if num_epochs not in (None, 1):
            ds = ds.repeat(num_epochs, reseed_each_epoch=False)

    read_options = grain.ReadOptions(
        num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size
    )
    batched = ds.to_iter_dataset(read_options).batch(batch_size, drop_remainder=drop_remainder)
    if worker_count > 0:
        batched = batched.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return batched

"""TFDS sources (array_record, random access) and the papers' per-example preprocessing.

Datasets: ``cifar10``, ``cifar100``, ``stl10`` (the CIFAR/STL-10 experiments of RevNet, Gomez et
al. 2017, arXiv:1707.04585; Chang et al. 2018, arXiv:1709.03698; LeanResNet, Ephrath et al. 2019,
arXiv:1805.07821), ``imagenet2012`` (RevNet) and ``davis`` (video segmentation, Peters, Haber,
Lensink 2019, arXiv:1912.12137). Records are read with
``tfds.data_source(name, split=..., data_dir=..., download=False)``, which needs the dataset
prepared in the ``array_record`` format but does **not** need TensorFlow; decoding uses PIL.

Preparing a dataset (once, in any environment that has TensorFlow: in tensorflow-datasets
4.9 the ``tfds`` command line and the dataset builders import TensorFlow)::

    pip install tensorflow tensorflow-datasets
    tfds build cifar10 --data_dir=DATA_DIR --file_format=array_record

``imagenet2012`` needs ``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar`` placed in
``DATA_DIR/downloads/manual`` first; ``davis`` is built as ``davis/480p``.

Every preprocess function here has the signature ``preprocess(example, rng)`` and returns
``{"image": float32, "label": int32}``; ``rng`` is a per-record ``np.random.Generator`` in training
mode and ``None`` for evaluation (deterministic, no augmentation). They are module-level functions
bound with ``functools.partial`` so that pipelines pickle (grain worker processes).

TFDS's ``davis`` builder is DAVIS-2017 (instance ids per pixel); we binarise the masks (foreground =
any object), the DAVIS-2016 (single-object) task that Peters et al. (2019) evaluate on.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from revjax.data import augment

__all__ = [
    "TFDS_DATASETS",
    "IMAGE_OPTIONS",
    "AUGMENTATIONS",
    "default_options",
    "resolve_options",
    "info_fields",
    "DatasetNotPreparedError",
    "tfds_split",
    "preparation_instructions",
    "classification_preprocess",
    "clip_start",
    "load",
    "load_preprocess",
]

TFDS_DATASETS = ("cifar10", "cifar100", "stl10", "imagenet2012", "davis")

# Standard split sizes (examples; DAVIS: videos), used by ``dataset_info`` without I/O.
_SIZES = {
    "cifar10": dict(num_classes=10, image_shape=(32, 32, 3), num_train=50_000, num_test=10_000),
    "cifar100": dict(num_classes=100, image_shape=(32, 32, 3), num_train=50_000, num_test=10_000),
    "stl10": dict(num_classes=10, image_shape=(96, 96, 3), num_train=5_000, num_test=8_000),
    "imagenet2012": dict(
        num_classes=1000, image_shape=(224, 224, 3), num_train=1_281_167, num_test=50_000
    ),
    "davis": dict(num_classes=2, image_shape=None, num_train=60, num_test=30),
}

# The split that "test" stands for, where the dataset calls it otherwise.
_EVAL_SPLIT = {"imagenet2012": "validation", "davis": "validation"}

# Dataset options accepted through ``make_dataset(..., **kwargs)``, with defaults.
IMAGE_OPTIONS: dict[str, Any] = {"augmentation": "standard", "pad": 4, "max_scale": 1.25}
IMAGENET_OPTIONS: dict[str, Any] = {"image_size": 224, "resize_size": 256}
DAVIS_OPTIONS: dict[str, Any] = {
    "clip_length": 8,
    "height": 240,
    "width": 432,
    "clips_per_video": 1,
    "resolution": "480p",
    "max_scale": 1.25,
}
AUGMENTATIONS = ("standard", "lean", "none")


def default_options(name: str) -> dict[str, Any]:
    """The dataset-specific options of ``name`` and their defaults.

    ``augmentation``: "standard" (pad-``pad`` random crop + flip + per-image
    standardisation; STL-10 defaults to ``pad=0``), "lean" (LeanResNet random zoom-crop +
    flip, zoom up to ``max_scale``) or "none". ImageNet: ``image_size``, ``resize_size``.
    DAVIS: ``clip_length`` T, output ``height`` × ``width``, ``clips_per_video`` records per
    video and epoch, ``resolution`` ("480p" or "full_resolution"), ``max_scale``."""
    if name in ("cifar10", "cifar100"):
        return dict(IMAGE_OPTIONS)
    if name == "stl10":
        return {**IMAGE_OPTIONS, "pad": 0}
    if name == "imagenet2012":
        return dict(IMAGENET_OPTIONS)
    if name == "davis":
        return dict(DAVIS_OPTIONS)
    raise ValueError(f"Unknown TFDS dataset {name!r}; valid: {', '.join(TFDS_DATASETS)}")


def resolve_options(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Merges ``kwargs`` into the defaults, rejecting unknown keys and bad values."""
    options = default_options(name)
    unknown = set(kwargs) - set(options)
    if unknown:
        raise TypeError(f"{name} got unknown options {sorted(unknown)}; valid: {sorted(options)}")
    options.update(kwargs)
    augmentation = options.get("augmentation", "standard")
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {augmentation!r}")
    return options


def info_fields(name: str, **kwargs: Any) -> dict[str, Any]:
    """DatasetInfo fields (see ``revjax.data.dataset_info``); DAVIS sizes count clips."""
    options = resolve_options(name, kwargs)
    fields = dict(_SIZES[name])
    if name == "imagenet2012":
        fields["image_shape"] = (options["image_size"], options["image_size"], 3)
    if name == "davis":
        fields["image_shape"] = (options["clip_length"], options["height"], options["width"], 3)
        fields["num_train"] *= options["clips_per_video"]
        fields["num_test"] *= options["clips_per_video"]
    fields["task"] = "segmentation" if name == "davis" else "classification"
    return fields


# ----------------------------------------------------------------------------- sources


class DatasetNotPreparedError(FileNotFoundError):
    """A TFDS dataset is missing from ``data_dir`` (or not in array_record format)."""


def tfds_split(name: str, split: str) -> str:
    """Maps ``"test"`` (also sliced, ``"test[:10%]"``) to the dataset's evaluation split."""
    head, bracket, rest = split.partition("[")
    if head == "test" and name in _EVAL_SPLIT:
        return _EVAL_SPLIT[name] + bracket + rest
    return split


def preparation_instructions(name: str, data_dir: str | os.PathLike | None) -> str:
    """Tells exactly how to prepare ``name`` in array_record format under ``data_dir``."""
    target = str(data_dir) if data_dir is not None else "~/tensorflow_datasets"
    builder = "davis/480p" if name == "davis" else name
    steps = [
        "pip install tensorflow tensorflow-datasets",
        f"tfds build {builder} --data_dir={target} --file_format=array_record",
    ]
    if name == "imagenet2012":
        steps.insert(
            0,
            "download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org "
            f"into {target}/downloads/manual (manual download required)",
        )
    lines = [
        f"To prepare {name!r} once (building needs TensorFlow, e.g. in a separate "
        "environment; reading it here does not):"
    ]
    lines += [f"  {i}. {step}" for i, step in enumerate(steps, start=1)]
    if data_dir is None:
        lines.append("(data_dir=None means $TFDS_DATA_DIR or ~/tensorflow_datasets.)")
    return "\n".join(lines)


def _open_source(
    name: str, split: str, data_dir: str | os.PathLike | None, options: dict[str, Any]
) -> Sequence[dict[str, Any]]:
    """The ``ArrayRecordDataSource``-like sequence of decoded example dicts (numpy) of a TFDS
    split ("test" maps to "validation" for imagenet2012 and davis; ``data_dir`` None: TFDS
    default); raises ``DatasetNotPreparedError`` if absent."""
    import tensorflow_datasets as tfds

    if name == "davis":
        # Legacy builder, registered only when its module is imported (no TensorFlow needed).
        import tensorflow_datasets.video.davis  # noqa: F401

    split = tfds_split(name, split)
    # The TFDS name with its builder config (``davis/480p``).
    builder = f"davis/{options['resolution']}" if name == "davis" else name
    try:
        return tfds.data_source(builder, split=split, data_dir=data_dir, download=False)
    except (
        tfds.core.registered.DatasetNotFoundError,
        NotImplementedError,
        FileNotFoundError,
        KeyError,
        ValueError,
        AssertionError,
    ) as error:
        raise DatasetNotPreparedError(
            f"Dataset {name!r} split {split!r} is not available in array_record format under "
            f"data_dir={data_dir!s} (TFDS said: {type(error).__name__}: {error})\n"
            + preparation_instructions(name, data_dir)
        ) from error


class _ClipIndexSource:
    """Repeats each video of ``videos`` ``k = clips_per_video`` times: record ``i`` is video
    ``i // k`` with ``"clip_index": i % k``, so evaluation can take evenly spaced clips."""

    def __init__(self, videos: Sequence[dict[str, Any]], clips_per_video: int):
        if clips_per_video < 1:
            raise ValueError(f"clips_per_video must be >= 1, got {clips_per_video}")
        self._videos = videos
        self._k = clips_per_video

    def __len__(self) -> int:
        return len(self._videos) * self._k

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self._videos[index // self._k], "clip_index": index % self._k}

    def __repr__(self) -> str:
        return f"ClipIndexSource({self._videos!r}, clips_per_video={self._k})"


# ----------------------------------------------------------------------------- preprocess


def classification_preprocess(
    example: dict[str, Any],
    rng: np.random.Generator | None,
    *,
    augmentation: str = "standard",
    pad: int = 4,
    max_scale: float = 1.25,
) -> dict[str, np.ndarray]:
    """CIFAR/STL record -> {"image": (H, W, C) float32, "label": () int32}.

    Training (``rng`` given): ``augmentation`` recipe from ``revjax.data.augment``.
    Evaluation (``rng is None``) or "none": per-image standardisation only."""
    image = example["image"]
    if rng is None or augmentation == "none":
        image = augment.per_image_standardization(image)
    elif augmentation == "standard":
        image = augment.cifar_train(image, rng, pad)
    else:
        image = augment.lean_train(image, rng, max_scale)
    return {"image": image, "label": np.int32(example["label"])}


def _imagenet_preprocess(
    example: dict[str, Any],
    rng: np.random.Generator | None,
    *,
    image_size: int = 224,
    resize_size: int = 256,
) -> dict[str, np.ndarray]:
    """ImageNet record -> {"image": (S, S, 3) float32, "label": () int32}, S = image_size.

    Training: random-resized crop + flip; evaluation: resize to ``resize_size`` and centre
    crop; both normalised with the ImageNet channel mean/std."""
    image = example["image"]
    if rng is None:
        image = augment.imagenet_eval(image, image_size, resize_size)
    else:
        image = augment.imagenet_train(image, rng, image_size)
    return {"image": image, "label": np.int32(example["label"])}


def clip_start(num_frames: int, clip_length: int, clip_index: int, clips_per_video: int) -> int:
    """First frame of evaluation clip ``clip_index``: evenly spaced over the video.

    Args:
      num_frames: N frames in the video.
      clip_length: T.
      clip_index: j in [0, clips_per_video).
      clips_per_video: number of evaluation clips per video.

    Returns:
      ``round(j * max(N - T, 0) / max(clips_per_video - 1, 1))``.
    """
    span = max(num_frames - clip_length, 0)
    return round(clip_index * span / max(clips_per_video - 1, 1))


def _davis_preprocess(
    example: dict[str, Any],
    rng: np.random.Generator | None,
    *,
    clip_length: int = 8,
    height: int = 240,
    width: int = 432,
    clips_per_video: int = 1,
    max_scale: float = 1.25,
    resolution: str = "480p",
) -> dict[str, np.ndarray]:
    """DAVIS video -> {"image": (T, H, W, 3) float32, "label": (T, H, W) int32 in {0, 1}}.

    Takes ``clip_length`` consecutive frames (random start for training, evenly spaced
    starts for evaluation; videos shorter than T repeat their last frame), resizes frames
    and masks to (height, width) with a clip-consistent random zoom-crop + flip when
    training, standardises over the clip and binarises the masks (foreground = any
    object). The whole video is decoded per record (TFDS decodes sequences eagerly)."""
    del resolution  # Chooses the TFDS builder config, not the preprocessing.
    video = example["video"]
    frames, masks = video["frames"], video["segmentations"][..., 0]
    num_frames = min(len(frames), len(masks))
    if num_frames == 0:
        raise ValueError("DAVIS example without frames")
    if rng is None:
        start = clip_start(num_frames, clip_length, example.get("clip_index", 0), clips_per_video)
    else:
        start = int(rng.integers(0, max(num_frames - clip_length, 0) + 1))
    index = np.minimum(start + np.arange(clip_length), num_frames - 1)
    frames = [np.asarray(frames[i], np.uint8) for i in index]
    masks = [np.asarray(masks[i], np.uint8) for i in index]
    if rng is None:
        clip, labels = augment.video_eval(frames, masks, (height, width))
    else:
        clip, labels = augment.video_train(frames, masks, rng, (height, width), max_scale)
    return {"image": clip, "label": (labels > 0).astype(np.int32)}


def load(
    name: str, split: str, *, data_dir: str | os.PathLike | None = None, **kwargs: Any
) -> tuple[Sequence[dict[str, Any]], Callable[[dict[str, Any], Any], dict[str, np.ndarray]]]:
    """Source and preprocess function of one TFDS dataset split.

    Args:
      name: one of ``TFDS_DATASETS``.
      split: TFDS split ("train", "test", slices such as "train[:10%]").
      data_dir: TFDS data directory.
      **kwargs: dataset options (``default_options(name)``).

    Returns:
      (source, preprocess) with ``preprocess(example, rng_or_None) -> {"image", "label"}``.

    Raises:
      DatasetNotPreparedError: the split is not available under ``data_dir``.
    """
    options = resolve_options(name, kwargs)
    source = _open_source(name, split, data_dir, options)
    if name == "davis":
        source = _ClipIndexSource(source, options["clips_per_video"])
    return source, load_preprocess(name, options)


def load_preprocess(
    name: str, options: dict[str, Any]
) -> Callable[[dict[str, Any], Any], dict[str, np.ndarray]]:
    """The per-example preprocess of ``name`` bound to resolved ``options``."""
    if name == "davis":
        return functools.partial(_davis_preprocess, **options)
    if name == "imagenet2012":
        return functools.partial(_imagenet_preprocess, **options)
    return functools.partial(classification_preprocess, **options)

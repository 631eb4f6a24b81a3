"""scikit-learn's handwritten digits: a real, tiny, download-free image dataset.

1797 grey-scale 8×8 images of the digits 0–9 (the UCI optical-recognition test set, shipped
inside scikit-learn). We split them once, deterministically and stratified by class:

* ``train``: 1437 images, ``test``: 360 images (``TEST_FRACTION = 0.2``, ``SPLIT_SEED = 0``
  via ``sklearn.model_selection.train_test_split(stratify=labels)``).
* Images: pixel counts 0..16 scaled to [0, 1], then standardised with the scalar mean and
  standard deviation of the *train* split's pixels, float32 NHWC ``(N, 8, 8, 1)``.
* Labels: int32 ``(N,)``.
* Options (``dataset_options``): ``canvas=32`` places every digit, upsampled x3, on a
  32×32×3 canvas (a CIFAR-shaped real image task, `_on_canvas`); ``task="segmentation"``
  (with a canvas) labels every pixel 0 (background) or 1 + class on the strokes.

>>> arrays = load_split("test")
>>> arrays["image"].shape, arrays["label"].shape
((360, 8, 8, 1), (360,))
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from revjax.data.arrays import ArraySource

__all__ = [
    "NUM_TRAIN",
    "NUM_TEST",
    "TEST_FRACTION",
    "split_indices",
    "load_split",
    "split_source",
    "info_fields",
]

NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)
NUM_TRAIN = 1437
NUM_TEST = 360
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def split_indices(
    labels: np.ndarray, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, deterministic train/test partition of ``range(len(labels))``.

    Args:
      labels: (N,) integer class labels.
      test_fraction: fraction of each class (rounded by scikit-learn) held out.
      seed: ``random_state`` of ``train_test_split``.

    Returns:
      sorted train indices and sorted test indices, disjoint, covering ``range(N)``.
    """
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed
    )
    return np.sort(train), np.sort(test)


@functools.cache
def _load_all() -> dict[str, dict[str, np.ndarray]]:
    """Loads, splits and standardises the digits once per process (read-only arrays)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1)
    labels = digits.target.astype(np.int32)
    train_idx, test_idx = split_indices(labels)
    mean, std = images[train_idx].mean(), images[train_idx].std()
    out = {"mean": float(mean), "std": float(std)}
    for split, idx in (("train", train_idx), ("test", test_idx)):
        image = ((images[idx] - mean) / std).astype(np.float32)
        out[split] = {"image": image, "label": labels[idx]}
        for array in out[split].values():
            array.flags.writeable = False
    return out


def load_split(split: str) -> dict[str, np.ndarray]:
    """Returns one split as arrays.

    Args:
      split: "train" or "test".

    Returns:
      {"image": (N, 8, 8, 1) float32, "label": (N,) int32}; N = 1437 or 360.
    """
    if split not in ("train", "test"):
        raise ValueError(f"digits has splits 'train' and 'test', got {split!r}.")
    return _load_all()[split]


CANVAS_SCALE = 3  # 8x8 digit -> 24x24 (nearest neighbour), centred on the canvas
SEGMENTATION_THRESHOLD = 0.25  # raw intensity in [0, 1] above which a pixel is "digit"


def _on_canvas(images: np.ndarray, size: int = 32, channels: int = 3) -> np.ndarray:
    """Digits as CIFAR-shaped images: (N, 8, 8, 1) -> (N, size, size, channels).

    Each 8x8 image is upsampled x3 by pixel repetition to 24x24, centred on a `size` x `size`
    canvas filled with the image's background value (its minimum, i.e. the standardised
    value of a blank pixel), and repeated over `channels`. Nothing is learned from the
    placement: it gives the CIFAR networks (3 stages, two 2x down-samplings, 3 input
    channels) a real image task that needs no download."""
    side = IMAGE_SHAPE[0] * CANVAS_SCALE
    if size < side:
        raise ValueError(f"canvas size {size} is smaller than the {side}x{side} upsampled digit")
    big = images.repeat(CANVAS_SCALE, axis=1).repeat(CANVAS_SCALE, axis=2)
    canvas = np.full((len(images), size, size, 1), images.min(), dtype=np.float32)
    lo = (size - side) // 2
    canvas[:, lo : lo + side, lo : lo + side] = big
    return np.repeat(canvas, channels, axis=-1)


def _segmentation_labels(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-pixel labels of canvas images: 0 background, 1 + digit class on the digit's strokes.

    A pixel is a stroke where the raw (unstandardised) intensity exceeds
    SEGMENTATION_THRESHOLD; images (N, H, W, C) standardised, labels (N,) -> (N, H, W) int32."""
    raw = images[..., 0] * _load_all()["std"] + _load_all()["mean"]
    strokes = raw > SEGMENTATION_THRESHOLD
    return np.where(strokes, labels[:, None, None] + 1, 0).astype(np.int32)


def _check_options(canvas: int | None, task: str) -> None:
    if task not in ("classification", "segmentation"):
        raise ValueError(f"digits task must be 'classification' or 'segmentation', got {task!r}")
    if task == "segmentation" and not canvas:
        raise ValueError("digits segmentation needs a canvas (dataset_options.canvas=32)")


def split_source(
    split: str, canvas: int | None = None, task: str = "classification"
) -> ArraySource:
    """grain source for ``load_split(split)``, placed on a CIFAR-shaped canvas (`_on_canvas`)
    when `canvas` is set, with per-pixel labels for ``task="segmentation"``."""
    _check_options(canvas, task)
    arrays = load_split(split)
    image, label = arrays["image"], arrays["label"]
    if canvas:
        image = _on_canvas(image, canvas)
        if task == "segmentation":
            label = _segmentation_labels(image, label)
    return ArraySource(image, label)


def info_fields(canvas: int | None = None, task: str = "classification") -> dict[str, Any]:
    """DatasetInfo fields (see ``revjax.data.dataset_info``); options as `split_source`."""
    _check_options(canvas, task)
    return {
        "num_classes": NUM_CLASSES + (task == "segmentation"),
        "image_shape": (canvas, canvas, 3) if canvas else IMAGE_SHAPE,
        "num_train": NUM_TRAIN,
        "num_test": NUM_TEST,
        "task": task,
    }

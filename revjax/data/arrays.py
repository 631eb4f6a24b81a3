"""Random-access sources for in-memory numpy datasets and for fake (random) data.

* ``ArraySource(images, labels)``: the user's own ``(images, labels)`` arrays, registered
  under a dataset name with ``revjax.data.register_arrays`` so that configs stay plain
  (JSON-serialisable) and the data go through the same grain pipeline (deterministic
  shuffling, per-process sharding, checkpointable position).
* ``FakeSource``: records with the shapes and label range of a named dataset and random
  content, a pure function of ``(seed, split, index)``; it lets every ``:smoke`` config run
  offline (``config.fake_examples``)."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

__all__ = ["ArraySource", "FakeSource", "check_arrays"]


def check_arrays(images: Any, labels: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Validates one split's ``(images, labels)``; returns them as numpy arrays.

    Args:
      images: (N, H, W, C) or (N, T, H, W, C), any real dtype (converted to float32 per
        example; preprocess them beforehand, e.g. standardise).
      labels: (N,) integer classes (classification) or (N, H, W) / (N, T, H, W) per-pixel
        classes (segmentation: the image shape without its channel axis).
      where: name used in error messages.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim not in (4, 5):
        raise ValueError(
            f"{where}: images must be (N, H, W, C) or (N, T, H, W, C), got shape {images.shape}"
        )
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(
            f"{where}: {len(images)} images but {len(labels)} labels (need equal, non-zero)"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    if labels.ndim > 1 and labels.shape[1:] != images.shape[1:-1]:
        raise ValueError(
            f"{where}: per-pixel labels of shape {labels.shape[1:]} do not match the images' "
            f"{images.shape[1:-1]}"
        )
    if labels.min() < 0:
        raise ValueError(f"{where}: labels must be >= 0, got {labels.min()}")
    return images, labels


class ArraySource:
    """``source[i] = {"image": float32 images[i], "label": int32 labels[i]}``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {
            "image": np.asarray(self.images[index], np.float32),
            "label": np.asarray(self.labels[index], np.int32),
        }

    def __repr__(self) -> str:
        return f"ArraySource(images={self.images.shape}, labels={self.labels.shape})"


class FakeSource:
    """``size`` random records of a dataset's shapes; record i depends only on (seed, split, i).

    Args:
      size: number of records.
      split: split name (folded into the seed so train and test differ).
      num_classes: labels are uniform in [0, num_classes).
      image_shape: shape of ``record["image"]``.
      label_shape: () for classification, the per-pixel shape for segmentation.
      raw: uint8 images in [0, 255] (fed to the dataset's own preprocessing) instead of
        float32 standard normal images (already "preprocessed").
      seed: base seed.
    """

    def __init__(
        self,
        size: int,
        split: str,
        num_classes: int,
        image_shape: tuple[int, ...],
        label_shape: tuple[int, ...] = (),
        raw: bool = False,
        seed: int = 0,
    ):
        if size < 1:
            raise ValueError(f"fake_examples must be >= 1, got {size}")
        self.size, self.num_classes = size, num_classes
        self.image_shape, self.label_shape, self.raw = tuple(image_shape), label_shape, raw
        self._seed = (seed, zlib.crc32(split.encode()))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = np.random.default_rng((*self._seed, index))
        if self.raw:
            image = rng.integers(0, 256, self.image_shape, dtype=np.uint8)
        else:
            image = rng.standard_normal(self.image_shape, dtype=np.float32)
        label = rng.integers(0, self.num_classes, self.label_shape).astype(np.int32)
        return {"image": image, "label": label}

    def __repr__(self) -> str:
        return f"FakeSource(size={self.size}, image_shape={self.image_shape}, raw={self.raw})"

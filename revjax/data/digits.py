"""scikit-learn's handwritten digits: a real, tiny, download-free image dataset.

1797 grey-scale 8×8 images of the digits 0–9 (the UCI optical-recognition test set, shipped
inside scikit-learn). We split them once, deterministically and stratified by class:

* ``train``: 1437 images, ``test``: 360 images (``TEST_FRACTION = 0.2``, ``SPLIT_SEED = 0``
  via ``sklearn.model_selection.train_test_split(stratify=labels)``).
* Images: pixel counts 0..16 scaled to [0, 1], then standardised with the scalar mean and
  standard deviation of the *train* split's pixels, float32 NHWC ``(N, 8, 8, 1)``.
* Labels: int32 ``(N,)``.

>>> arrays = load_split("test")
>>> arrays["image"].shape, arrays["label"].shape
((360, 8, 8, 1), (360,))
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)
NUM_TRAIN = 1437
NUM_TEST = 360
TEST_FRACTION = 0.2
SPLIT_SEED = 0


class ArraySource:
    """Random-access grain source over in-memory arrays with a shared leading axis.

    Record ``i`` is ``{key: array[i] for key, array in arrays.items()}``.

    Args:
      arrays: dict of arrays, each (N, ...).
    """

    def __init__(self, arrays: dict[str, np.ndarray]):
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) != 1:
            raise ValueError(f"arrays must share their leading dimension, got {lengths}")
        self._arrays = arrays
        self._length = lengths.pop()

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {k: v[index] for k, v in self._arrays.items()}

    def __repr__(self) -> str:
        shapes = {k: v.shape for k, v in self._arrays.items()}
        return f"ArraySource({shapes})"


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
    mean = images[train_idx].mean()
    std = images[train_idx].std()
    out = {}
    for split, idx in (("train", train_idx), ("test", test_idx)):
        image = ((images[idx] - mean) / std).astype(np.float32)
        label = labels[idx]
        image.flags.writeable = False
        label.flags.writeable = False
        out[split] = {"image": image, "label": label}
    return out


def load_split(split: str) -> dict[str, np.ndarray]:
    """Returns one split as arrays.

    Args:
      split: "train" or "test".

    Returns:
      {"image": (N, 8, 8, 1) float32, "label": (N,) int32}; N = 1437 or 360.
    """
    splits = _load_all()
    if split not in splits:
        raise ValueError(f"digits has splits 'train' and 'test', got {split!r}.")
    return splits[split]


def split_source(split: str, **kwargs: Any) -> ArraySource:
    """grain source for ``load_split(split)``; digits takes no extra options."""
    if kwargs:
        raise TypeError(f"digits takes no dataset options, got {sorted(kwargs)}")
    return ArraySource(load_split(split))


def info_fields(**kwargs: Any) -> dict[str, Any]:
    """DatasetInfo fields (see ``revjax.data.dataset_info``)."""
    if kwargs:
        raise TypeError(f"digits takes no dataset options, got {sorted(kwargs)}")
    return {
        "num_classes": NUM_CLASSES,
        "image_shape": IMAGE_SHAPE,
        "num_train": NUM_TRAIN,
        "num_test": NUM_TEST,
        "task": "classification",
    }

"""Image-folder datasets: ``config.dataset = "folder:/path/to/root"``.

Layout (the usual ``ImageFolder`` convention)::

    root/train/<class name>/*.png|jpg|jpeg|bmp|gif|webp
    root/test/<class name>/...

Classes are the sorted sub-directory names of ``root/train`` (label = index); every image is
decoded with PIL, converted to RGB and box-resized to ``image_size`` x ``image_size``, then
goes through the CIFAR-style preprocessing of ``tfds_pipeline.classification_preprocess``
(training: ``augmentation`` "standard" pad-``pad`` crop + flip, "lean" zoom-crop + flip, or
"none"; always per-image standardisation). Options: ``image_size`` (default 64),
``augmentation`` (default "standard"), ``pad`` (default ``image_size // 8``), ``max_scale``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from revjax.data import tfds_pipeline
from revjax.data.tfds_pipeline import AUGMENTATIONS

__all__ = ["PREFIX", "is_folder", "info_fields", "load"]

PREFIX = "folder:"
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def is_folder(name: str) -> bool:
    """Whether a dataset name designates an image folder (``folder:<root>``)."""
    return name.startswith(PREFIX)


def _root(name: str) -> Path:
    root = Path(name[len(PREFIX) :]).expanduser()
    if not (root / "train").is_dir():
        raise FileNotFoundError(
            f"image folder {str(root)!r} has no train/ directory; expected "
            "root/train/<class>/<images> and root/test/<class>/<images>"
        )
    return root


def _options(kwargs: dict[str, Any]) -> dict[str, Any]:
    size = int(kwargs.get("image_size", 64))
    options = {"image_size": size, "augmentation": "standard", "pad": size // 8, "max_scale": 1.25}
    unknown = set(kwargs) - set(options)
    if unknown:
        raise TypeError(
            f"image folder got unknown options {sorted(unknown)}; valid: {sorted(options)}"
        )
    options.update(kwargs)
    augmentation = options["augmentation"]
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {augmentation!r}")
    return options


def _classes(root: Path) -> list[str]:
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"{root / 'train'} has no class sub-directories")
    return classes


def _files(root: Path, split: str, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    if not (root / split).is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} has no {split}/ directory")
    files, labels = [], []
    for label, name in enumerate(classes):
        directory = root / split / name
        found = sorted(p for p in directory.rglob("*") if p.suffix.lower() in EXTENSIONS)
        files += found
        labels += [label] * len(found)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(EXTENSIONS)}) under {root / split}")
    return files, np.asarray(labels, np.int32)


def info_fields(name: str, **kwargs: Any) -> dict[str, Any]:
    """DatasetInfo fields of ``folder:<root>`` (lists the files, reads no image)."""
    root, options = _root(name), _options(kwargs)
    classes = _classes(root)
    size = options["image_size"]
    return {
        "num_classes": len(classes),
        "image_shape": (size, size, 3),
        "num_train": len(_files(root, "train", classes)[0]),
        "num_test": len(_files(root, "test", classes)[0]),
        "task": "classification",
    }


class _ImageFolderSource:
    """``source[i] = {"image": (S, S, 3) uint8, "label": int32}`` for one split."""

    def __init__(self, files: list[Path], labels: np.ndarray, image_size: int):
        self.files, self.labels, self.image_size = files, labels, image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        size = (self.image_size, self.image_size)
        with Image.open(self.files[index]) as image:
            pixels = np.asarray(image.convert("RGB").resize(size, Image.Resampling.BOX), np.uint8)
        return {"image": pixels, "label": self.labels[index]}

    def __repr__(self) -> str:
        return f"ImageFolderSource({len(self.files)} images, size {self.image_size})"


def load(name: str, split: str, **kwargs: Any):
    """(source, preprocess) of split "train" or "test" of ``folder:<root>``."""
    if split not in ("train", "test"):
        raise ValueError(f"image folders have splits 'train' and 'test', got {split!r}")
    root, options = _root(name), _options(kwargs)
    files, labels = _files(root, split, _classes(root))
    image_options = {k: options[k] for k in tfds_pipeline.IMAGE_OPTIONS}  # augmentation, pad, ...
    preprocess = functools.partial(tfds_pipeline.classification_preprocess, **image_options)
    return _ImageFolderSource(files, labels, options["image_size"]), preprocess

"""Per-example NumPy augmentations used by the input pipelines (Chang et al. 2018,
arXiv:1709.03698; Ephrath et al. 2019, arXiv:1805.07821; Gomez et al. 2017, arXiv:1707.04585).

Every random function takes an explicit ``np.random.Generator``; grain hands one to each
record (``MapDataset.random_map``), seeded from the pipeline seed and the record index, so
an augmented epoch is a pure function of ``(seed, index)`` and resumes exactly from a
checkpointed iterator state.

Images are NumPy arrays in HWC layout (``uint8`` straight from the source, ``float32``
after standardisation); clips are THWC. Cropping and resizing go through PIL on ``uint8``
data (box-resize, so a crop followed by a resize is one interpolation).

Recipes:
  * CIFAR / STL-10 (Hamiltonian and RevNet papers): pad-4 random crop, horizontal flip,
    per-image standardisation (STL-10: no padding).
  * LeanResNet (Ephrath et al. 2019, Sec. 4: "random resize, crop and flip"): crop a random
    square-ish box whose side is ``1/s`` of the image, ``s ~ U[1, max_scale]``, resize back,
    flip, standardise. The exact PyTorch transform is not recoverable; this is our reading.
  * ImageNet: Inception-style random-resized crop to 224 + flip + mean/std normalisation
    for training; resize shorter side to 256 + centre crop 224 for evaluation.
  * Video (DAVIS): one crop box and one flip decision shared by every frame of a clip and
    its mask; masks are resized with nearest-neighbour interpolation.

>>> rng = np.random.default_rng(0)
>>> image = np.zeros((32, 32, 3), np.uint8)
>>> cifar_train(image, rng).shape
(32, 32, 3)
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

__all__ = [
    "per_image_standardization",
    "flip_left_right",
    "random_flip_left_right",
    "random_crop",
    "resize",
    "sample_resized_crop_box",
    "cifar_train",
    "lean_train",
    "imagenet_train",
    "imagenet_eval",
    "video_train",
    "video_eval",
]

# ImageNet channel statistics on the [0, 1] scale (RGB).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

# A crop box in pixel coordinates: (top, left, bottom, right), floats allowed.
Box = tuple[float, float, float, float]


# ----------------------------------------------------------------------------- normalisation


def per_image_standardization(image: np.ndarray) -> np.ndarray:
    """Standardises one image (or clip) to zero mean and unit variance.

    Same rule as ``tf.image.per_image_standardization``:
    ``(x - mean(x)) / max(std(x), 1 / sqrt(x.size))``, so a constant image maps to zeros.

    Args:
      image: any shape, e.g. (H, W, C) or (T, H, W, C); any real dtype.

    Returns:
      float32 array of the same shape.
    """
    x = np.asarray(image, np.float32)
    adjusted_std = max(float(x.std()), 1.0 / math.sqrt(x.size))
    return ((x - x.mean()) / adjusted_std).astype(np.float32)


def _normalize(image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(x / 255 - mean) / std`` as float32: image (..., C) in [0, 255]; mean, std (C,) on the
    [0, 1] scale."""
    x = np.asarray(image, np.float32) / 255.0
    return ((x - mean) / std).astype(np.float32)


# ----------------------------------------------------------------------------- geometry


def flip_left_right(image: np.ndarray) -> np.ndarray:
    """Mirrors the width axis (axis -2) of a channels-last array.

    Args:
      image: (H, W, C) image or (T, H, W, C) clip.

    Returns:
      the mirrored array (a copy).
    """
    return np.ascontiguousarray(image[..., ::-1, :])


def random_flip_left_right(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirrors the width axis with probability 1/2.

    Args:
      image: (..., H, W, C).
      rng: per-record generator.

    Returns:
      ``image`` or ``flip_left_right(image)``, same shape and dtype.
    """
    return flip_left_right(image) if rng.random() < 0.5 else image


def random_crop(image: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """Zero-pads ``pad`` pixels on each side, then crops back to the original size.

    Args:
      image: (H, W, C).
      rng: per-record generator.
      pad: padding per side; 0 returns the image unchanged (STL-10 recipe).

    Returns:
      (H, W, C) array with the input dtype: a window of the padded image.
    """
    if pad == 0:
        return image
    h, w = image.shape[:2]
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    top = int(rng.integers(0, 2 * pad + 1))
    left = int(rng.integers(0, 2 * pad + 1))
    return padded[top : top + h, left : left + w]


def resize(
    image: np.ndarray, size: tuple[int, int], *, box: Box | None = None, nearest: bool = False
) -> np.ndarray:
    """Resizes (a box of) a ``uint8`` image with PIL.

    Args:
      image: (H, W, C) or (H, W) uint8.
      size: output (height, width).
      box: optional (top, left, bottom, right) source window in pixels (floats allowed);
        the window is resampled straight to ``size``.
      nearest: nearest-neighbour interpolation (for label masks); bilinear otherwise.

    Returns:
      (height, width, C) or (height, width) uint8.
    """
    image = np.asarray(image, np.uint8)
    height, width = size
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    pil_box = None if box is None else (box[1], box[0], box[3], box[2])

    def one(plane: np.ndarray) -> np.ndarray:
        pil = Image.fromarray(plane)
        return np.asarray(pil.resize((width, height), resample=resample, box=pil_box))

    if image.ndim == 2 or image.shape[-1] == 3:
        return one(image)
    return np.stack([one(image[..., c]) for c in range(image.shape[-1])], axis=-1)


def _relative_box(box: Box, shape: tuple[int, ...]) -> Box:
    """Converts a box given as fractions of the image to pixels of an (H, W, ...) array."""
    h, w = shape[:2]
    return (box[0] * h, box[1] * w, box[2] * h, box[3] * w)


def sample_resized_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> Box:
    """Samples an Inception-style crop box (random area fraction and aspect ratio).

    Area fraction ``~ U[scale]``, aspect ``w / h ~ logU[ratio]``; after ``attempts``
    failures falls back to the largest centred box with aspect clipped to ``ratio``.

    Args:
      rng: per-record generator.
      height: source height in pixels.
      width: source width in pixels.
      scale: range of the box area as a fraction of the image area.
      ratio: range of the box aspect ratio (width / height).
      attempts: rejection-sampling attempts.

    Returns:
      (top, left, bottom, right) in pixels.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return (top, left, top + h, left + w)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return (top, left, top + h, left + w)


def _sample_zoom_box(rng: np.random.Generator, max_scale: float = 1.25) -> Box:
    """A random zoom window (top, left, bottom, right) as fractions in [0, 1] (LeanResNet
    "random resize"): zooming in by ``s ~ U[1, max_scale]`` and cropping back to the original
    size is the window of side ``1/s`` at a uniform position."""
    side = 1.0 / rng.uniform(1.0, max_scale)
    top, left = rng.uniform(0.0, 1.0 - side, size=2)
    return (float(top), float(left), float(top + side), float(left + side))


def _center_crop_box(height: int, width: int, crop_fraction: float) -> Box:
    """Centred square (top, left, bottom, right) in pixels, of side ``crop_fraction`` x
    ``min(height, width)`` (224/256 = 0.875)."""
    side = crop_fraction * min(height, width)
    top, left = (height - side) / 2, (width - side) / 2
    return (top, left, top + side, left + side)


# ----------------------------------------------------------------------------- recipes


def cifar_train(image: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """Hamiltonian/RevNet CIFAR augmentation: pad-crop, flip, per-image standardisation.

    Args:
      image: (H, W, C) uint8.
      rng: per-record generator.
      pad: crop padding (4 for CIFAR, 0 for STL-10).

    Returns:
      (H, W, C) float32 with zero mean and unit std.
    """
    image = random_crop(image, rng, pad)
    image = random_flip_left_right(image, rng)
    return per_image_standardization(image)


def lean_train(image: np.ndarray, rng: np.random.Generator, max_scale: float = 1.25) -> np.ndarray:
    """LeanResNet augmentation (Ephrath et al. 2019, Sec. 4): zoom-crop, flip, standardisation.

    Args:
      image: (H, W, C) uint8.
      rng: per-record generator.
      max_scale: largest zoom factor.

    Returns:
      (H, W, C) float32.
    """
    h, w = image.shape[:2]
    box = _relative_box(_sample_zoom_box(rng, max_scale), image.shape)
    image = resize(image, (h, w), box=box)
    image = random_flip_left_right(image, rng)
    return per_image_standardization(image)


def imagenet_train(image: np.ndarray, rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """Random-resized crop to ``size``, flip, ImageNet mean/std normalisation.

    Args:
      image: (H, W, 3) uint8 of any size.
      rng: per-record generator.
      size: output side.

    Returns:
      (size, size, 3) float32.
    """
    box = sample_resized_crop_box(rng, *image.shape[:2])
    image = resize(image, (size, size), box=box)
    image = random_flip_left_right(image, rng)
    return _normalize(image, IMAGENET_MEAN, IMAGENET_STD)


def imagenet_eval(image: np.ndarray, size: int = 224, resize_size: int = 256) -> np.ndarray:
    """Resize the shorter side to ``resize_size``, centre-crop ``size``, normalise.

    Implemented as one box-resize of the centred ``size / resize_size`` window.

    Args:
      image: (H, W, 3) uint8 of any size.
      size: output side.
      resize_size: shorter side before cropping.

    Returns:
      (size, size, 3) float32.
    """
    box = _center_crop_box(*image.shape[:2], size / resize_size)
    image = resize(image, (size, size), box=box)
    return _normalize(image, IMAGENET_MEAN, IMAGENET_STD)


def _clip_resize(
    frames: np.ndarray, masks: np.ndarray, size: tuple[int, int], box: Box = (0.0, 0.0, 1.0, 1.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Resamples the same window ``box`` (fractions of each frame, so frames (T, H, W, 3) and
    masks (T, H', W') of different pixel sizes stay aligned) to ``size``: uint8 frames
    (T, height, width, 3) and masks (T, height, width)."""
    out_frames = np.stack([resize(f, size, box=_relative_box(box, f.shape)) for f in frames])
    out_masks = np.stack(
        [resize(m, size, box=_relative_box(box, m.shape), nearest=True) for m in masks]
    )
    return out_frames, out_masks


def video_train(
    frames: np.ndarray,
    masks: np.ndarray,
    rng: np.random.Generator,
    size: tuple[int, int],
    max_scale: float = 1.25,
) -> tuple[np.ndarray, np.ndarray]:
    """Clip-consistent zoom-crop + flip, then per-clip standardisation.

    Args:
      frames: (T, H, W, 3) uint8.
      masks: (T, H', W') uint8.
      rng: per-record generator.
      size: output (height, width).
      max_scale: largest zoom factor.

    Returns:
      clip (T, height, width, 3) float32 standardised over the clip, masks (T, height,
      width) uint8.
    """
    frames, masks = _clip_resize(frames, masks, size, _sample_zoom_box(rng, max_scale))
    if rng.random() < 0.5:
        frames, masks = flip_left_right(frames), np.ascontiguousarray(masks[..., ::-1])
    return per_image_standardization(frames), masks


def video_eval(
    frames: np.ndarray, masks: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Resizes whole frames and masks to ``size`` and standardises over the clip.

    Args:
      frames: (T, H, W, 3) uint8.
      masks: (T, H', W') uint8.
      size: output (height, width).

    Returns:
      clip (T, height, width, 3) float32, masks (T, height, width) uint8.
    """
    frames, masks = _clip_resize(frames, masks, size)
    return per_image_standardization(frames), masks

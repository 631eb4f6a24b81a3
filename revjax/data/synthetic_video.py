"""Synthetic video segmentation: moving, deforming shapes on a textured background.

A stand-in for DAVIS (video data of Peters, Haber, Lensink 2019, arXiv:1912.12137) that needs no
download: each clip is a pure function of an integer seed. Shapes (ellipses for odd classes,
rectangles for even classes) follow smooth Lissajous trajectories while their size, aspect ratio and
rotation oscillate; each class has a fixed colour (the same in every clip, so classes are learnable)
with a striped texture; the background is a drifting sum of plane waves; Gaussian noise is added
last. Labels are per pixel: 0 = background, 1..K-1 = shape class of the top-most shape (later shapes
occlude earlier ones).

Rendering is vectorised over (T, H, W); the only Python loop is over the few shapes.

Coordinates are in units of the shorter image side, so shapes stay round on non-square
frames: ``y in [0, H / min(H, W))``, ``x in [0, W / min(H, W))``.

>>> clip, labels = generate_clip(0, frames=4, height=16, width=16)
>>> clip.shape, clip.dtype, labels.shape, labels.dtype
((4, 16, 16, 3), dtype('float32'), (4, 16, 16), dtype('int32'))
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "TEST_BASE_SEED",
    "CLIP_DEFAULTS",
    "SPLIT_DEFAULTS",
    "generate_clip",
    "split_source",
    "info_fields",
]

# Clip i of the train split uses seed TRAIN_BASE_SEED + i, of the test split
# TEST_BASE_SEED + i; the splits are disjoint while num_train <= TEST_BASE_SEED.
TRAIN_BASE_SEED = 0
TEST_BASE_SEED = 1_000_000

CLIP_DEFAULTS: dict[str, Any] = {
    "frames": 8,
    "height": 32,
    "width": 32,
    "channels": 3,
    "num_shapes": 4,
    "num_classes": 4,
    "noise_std": 0.05,
}
SPLIT_DEFAULTS: dict[str, int] = {"num_train": 1000, "num_test": 100}


def _class_palette(num_classes: int, channels: int) -> np.ndarray:
    """(K, C) float32 in [0, 1]: the fixed colour of each class (row 0, the background, zeros),
    independent of the clip seed. For C = 3, saturated colours at evenly spaced hues; for C = 1,
    intensities alternating between bright ([0.8, 1]) and dark ([0, 0.15]) so they differ from
    the mid-grey background; otherwise a fixed random draw."""
    k = num_classes - 1
    palette = np.zeros((num_classes, channels), np.float32)
    if k <= 0:
        return palette
    if channels == 3:
        hue = np.arange(k) / k
        # HSV -> RGB with S = 0.8, V = 0.95.
        offsets = np.array([0.0, 2.0 / 3.0, 1.0 / 3.0])
        wave = np.abs(((hue[:, None] + offsets) % 1.0) * 6.0 - 3.0) - 1.0
        palette[1:] = 0.95 * (1.0 - 0.8 * (1.0 - np.clip(wave, 0.0, 1.0)))
    elif channels == 1:
        levels = np.linspace(0.0, 1.0, k)
        palette[1:, 0] = np.where(np.arange(k) % 2 == 0, 0.8 + 0.2 * levels, 0.15 * levels)
    else:
        palette[1:] = np.random.default_rng(12345).uniform(0.0, 1.0, (k, channels))
    return palette


def _shape_parameters(
    rng: np.random.Generator, num_shapes: int, num_classes: int, extent: np.ndarray
) -> dict[str, np.ndarray]:
    """Draws the per-shape constants of the trajectories, each array of shape (S,) (or (S, 2));
    ``extent`` is (2,) = (H, W) / min(H, W)."""
    s = num_shapes
    return {
        "cls": rng.integers(1, num_classes, size=s) if num_classes > 1 else np.zeros(s, int),
        "center": rng.uniform(0.3, 0.7, (s, 2)) * extent,  # (S, 2) mean (y, x)
        "amplitude": rng.uniform(0.1, 0.25, (s, 2)) * extent,  # (S, 2)
        "omega": rng.uniform(0.15, 0.4, (s, 2)) * rng.choice([-1.0, 1.0], (s, 2)),
        "phase": rng.uniform(0.0, 2 * np.pi, (s, 2)),
        "radius": rng.uniform(0.1, 0.2, s),
        "size_amp": rng.uniform(0.1, 0.3, s),
        "size_omega": rng.uniform(0.1, 0.3, s),
        "size_phase": rng.uniform(0.0, 2 * np.pi, s),
        "aspect": rng.uniform(0.5, 0.9, s),
        "aspect_amp": rng.uniform(0.1, 0.25, s),
        "aspect_omega": rng.uniform(0.1, 0.3, s),
        "angle": rng.uniform(0.0, np.pi, s),
        "spin": rng.uniform(-0.2, 0.2, s),
        "stripes": rng.uniform(6.0, 16.0, s),
        "tint": rng.uniform(-0.05, 0.05, (s, 1)),
    }


def _shape_trajectories(params: dict[str, np.ndarray], frames: int) -> dict[str, np.ndarray]:
    """The smooth per-frame geometry of every shape: "cy", "cx", "ry", "rx", "angle", each (T, S).

    ``center(t) = c + A sin(w t + phi)``; ``radius(t) = r (1 + a_r sin(w_r t + phi_r))``;
    ``aspect(t) = a (1 + a_a sin(w_a t))``; ``angle(t) = theta + spin t``."""
    t = np.arange(frames, dtype=np.float64)[:, None, None]  # (T, 1, 1)
    center = params["center"] + params["amplitude"] * np.sin(params["omega"] * t + params["phase"])
    t = t[..., 0]  # (T, 1)
    radius = params["radius"] * (
        1.0 + params["size_amp"] * np.sin(params["size_omega"] * t + params["size_phase"])
    )
    aspect = params["aspect"] * (1.0 + params["aspect_amp"] * np.sin(params["aspect_omega"] * t))
    return {
        "cy": center[..., 0],
        "cx": center[..., 1],
        "rx": radius,
        "ry": radius * aspect,
        "angle": params["angle"] + params["spin"] * t,
    }


def _textured_background(
    rng: np.random.Generator, frames: int, y: np.ndarray, x: np.ndarray, channels: int
) -> np.ndarray:
    """Low-saturation grey level plus three drifting plane waves: (T, H, W, C) float64, roughly
    in [0.1, 0.8], from row coordinates ``y`` (H, 1) and column coordinates ``x`` (1, W)."""
    num_waves = 3
    base = rng.uniform(0.3, 0.55) + rng.uniform(-0.05, 0.05, channels)  # (C,)
    direction = rng.uniform(0.0, 2 * np.pi, num_waves)
    freq = rng.uniform(2.0, 6.0, num_waves)  # cycles per unit length
    amp = rng.uniform(0.03, 0.1, num_waves)
    phase = rng.uniform(0.0, 2 * np.pi, num_waves)
    drift = rng.uniform(-0.3, 0.3, num_waves)  # radians per frame
    mix = rng.uniform(0.7, 1.3, (num_waves, channels))
    t = np.arange(frames, dtype=np.float64)[:, None, None, None]  # (T, 1, 1, 1)
    proj = np.cos(direction) * y[..., None] + np.sin(direction) * x[..., None]  # (H, W, n)
    waves = amp * np.sin(2 * np.pi * freq * proj + phase + drift * t)  # (T, H, W, n)
    return base + waves @ mix


def generate_clip(
    seed: int,
    frames: int,
    height: int,
    width: int,
    channels: int = 3,
    num_shapes: int = 4,
    num_classes: int = 4,
    noise_std: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Renders one deterministic clip of moving, deforming shapes with per-pixel labels.

    Args:
      seed: seeds ``np.random.default_rng``; the clip is a pure function of all arguments.
      frames: T.
      height: H.
      width: W.
      channels: C.
      num_shapes: S shapes, drawn in order (later ones on top).
      num_classes: K including background; shape classes are drawn from 1..K-1.
      noise_std: standard deviation of the additive Gaussian pixel noise.

    Returns:
      clip (T, H, W, C) float32 (about [0, 1] plus noise) and labels (T, H, W) int32 in
      [0, K).
    """
    rng = np.random.default_rng(seed)
    unit = min(height, width)
    extent = np.array([height, width], np.float64) / unit
    y = ((np.arange(height) + 0.5) / unit)[:, None]  # (H, 1)
    x = ((np.arange(width) + 0.5) / unit)[None, :]  # (1, W)

    params = _shape_parameters(rng, num_shapes, num_classes, extent)
    geometry = _shape_trajectories(params, frames)
    clip = _textured_background(rng, frames, y, x, channels)  # (T, H, W, C)
    labels = np.zeros((frames, height, width), np.int32)
    palette = _class_palette(num_classes, channels)

    for s in range(num_shapes):
        g = {k: v[:, s, None, None] for k, v in geometry.items()}  # each (T, 1, 1)
        dy, dx = y - g["cy"], x - g["cx"]  # (T, H, W)
        cos, sin = np.cos(g["angle"]), np.sin(g["angle"])
        u = (dx * cos + dy * sin) / g["rx"]  # shape-frame coordinates, unit radius
        v = (-dx * sin + dy * cos) / g["ry"]
        cls = int(params["cls"][s])
        if cls % 2 == 1:
            inside = u**2 + v**2 <= 1.0
        else:
            inside = (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
        texture = 0.85 + 0.15 * np.sin(2 * np.pi * params["stripes"][s] * u * g["rx"])
        colour = palette[cls] + params["tint"][s]  # (C,)
        clip = np.where(inside[..., None], texture[..., None] * colour, clip)
        labels = np.where(inside, cls, labels)

    clip = clip + rng.normal(0.0, noise_std, clip.shape)
    return clip.astype(np.float32), labels.astype(np.int32)


class _SyntheticVideoSource:
    """Random-access source of ``num_clips`` clips for grain: record ``i`` is clip
    ``base_seed + i`` (``generate_clip(**clip_kwargs)``), a dict
    ``{"image": (T, H, W, C) float32, "label": (T, H, W) int32}``."""

    def __init__(self, num_clips: int, base_seed: int, **clip_kwargs: Any):
        self._num_clips = num_clips
        self._base_seed = base_seed
        self._clip_kwargs = {**CLIP_DEFAULTS, **clip_kwargs}

    def __len__(self) -> int:
        return self._num_clips

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < self._num_clips:
            raise IndexError(f"clip index {index} out of range [0, {self._num_clips})")
        clip, labels = generate_clip(self._base_seed + int(index), **self._clip_kwargs)
        return {"image": clip, "label": labels}

    def __repr__(self) -> str:
        return (
            f"SyntheticVideoSource(num_clips={self._num_clips}, base_seed={self._base_seed}, "
            f"{self._clip_kwargs})"
        )


def split_source(split: str, **kwargs: Any) -> _SyntheticVideoSource:
    """Train or test split with disjoint seed ranges.

    Args:
      split: "train" (seeds ``TRAIN_BASE_SEED + i``) or "test" (``TEST_BASE_SEED + i``).
      **kwargs: ``num_train``, ``num_test`` and ``generate_clip`` arguments.

    Returns:
      the split's ``_SyntheticVideoSource``.
    """
    _check_kwargs(kwargs)
    sizes = {k: kwargs.pop(k, v) for k, v in SPLIT_DEFAULTS.items()}
    if sizes["num_train"] > TEST_BASE_SEED - TRAIN_BASE_SEED:
        raise ValueError(f"num_train must be <= {TEST_BASE_SEED} to keep splits disjoint.")
    if split == "train":
        return _SyntheticVideoSource(sizes["num_train"], TRAIN_BASE_SEED, **kwargs)
    if split == "test":
        return _SyntheticVideoSource(sizes["num_test"], TEST_BASE_SEED, **kwargs)
    raise ValueError(f"synthetic_video has splits 'train' and 'test', got {split!r}.")


def info_fields(**kwargs: Any) -> dict[str, Any]:
    """DatasetInfo fields for the given clip/split options (see ``revjax.data.dataset_info``)."""
    _check_kwargs(kwargs)
    c = {**CLIP_DEFAULTS, **SPLIT_DEFAULTS, **kwargs}
    return {
        "num_classes": c["num_classes"],
        "image_shape": (c["frames"], c["height"], c["width"], c["channels"]),
        "num_train": c["num_train"],
        "num_test": c["num_test"],
        "task": "segmentation",
    }


def _check_kwargs(kwargs: dict[str, Any]) -> None:
    unknown = set(kwargs) - set(CLIP_DEFAULTS) - set(SPLIT_DEFAULTS)
    if unknown:
        valid = sorted({*CLIP_DEFAULTS, *SPLIT_DEFAULTS})
        raise TypeError(f"synthetic_video got unknown options {sorted(unknown)}; valid: {valid}")

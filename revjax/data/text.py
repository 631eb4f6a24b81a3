"""Byte-level language modelling on English that Python ships: ``pydoc_data.topics`` (no download).

The corpus is the help text of the running Python's standard library (``pydoc_data.topics.
topics``: 79 topics, 466,117 UTF-8 bytes under CPython 3.11), joined in sorted topic order and
encoded as UTF-8 bytes (vocabulary 256). Fixed split: the first 90% of the bytes train, the last
10% (``TEST_FRACTION``) are held out; the split point depends only on the corpus length.

Records (``context`` = T, dataset option, default 128): windows of T + 1 consecutive bytes,
``{"image": float32 (T,) bytes 0..255, "label": int32 (T,) the next byte of each}`` (``image`` is
float32 because the trainer's batches are; `revjax.models.transformer.ByteLM` casts it back to
integers). Training windows start every T bytes (non-overlapping, shuffled by the pipeline); test
windows likewise, so every held-out byte after the first of its split is predicted exactly once.
``DatasetInfo.task == "next_token"``: the label has the input's shape, and the natural metric is
bits per byte, mean cross-entropy / ln 2 (`revjax.models.transformer.bits_per_byte`).

>>> arrays = load_split("test", context=64)
>>> arrays["image"].shape[1:], arrays["label"].dtype
((64,), dtype('int32'))
"""

from __future__ import annotations

import functools

import numpy as np

from revjax.data.arrays import ArraySource

__all__ = [
    "VOCAB_SIZE",
    "TEST_FRACTION",
    "DEFAULT_CONTEXT",
    "corpus",
    "split_bytes",
    "load_split",
    "info_fields",
    "split_source",
]

VOCAB_SIZE = 256
TEST_FRACTION = 0.1
DEFAULT_CONTEXT = 128


@functools.cache
def corpus() -> bytes:
    """The whole corpus: ``pydoc_data.topics.topics`` values in sorted key order, UTF-8."""
    from pydoc_data.topics import topics

    return "".join(topics[key] for key in sorted(topics)).encode("utf-8")


def split_bytes(split: str) -> np.ndarray:
    """uint8 bytes of ``split`` ("train": first 90%, "test": last 10%)."""
    data = np.frombuffer(corpus(), np.uint8)
    cut = int(round(len(data) * (1 - TEST_FRACTION)))
    if split == "train":
        return data[:cut]
    if split == "test":
        return data[cut:]
    raise ValueError(f"pydoc_text has splits 'train' and 'test', got {split!r}")


def _check_context(context: int) -> int:
    if int(context) < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    return int(context)


def load_split(split: str, context: int = DEFAULT_CONTEXT) -> dict[str, np.ndarray]:
    """{"image": float32 (N, T), "label": int32 (N, T)}: non-overlapping (T + 1)-byte windows."""
    t = _check_context(context)
    data = split_bytes(split)
    starts = np.arange((len(data) - 1) // t) * t
    windows = data[starts[:, None] + np.arange(t + 1)[None, :]]
    return {"image": windows[:, :-1].astype(np.float32), "label": windows[:, 1:].astype(np.int32)}


def info_fields(context: int = DEFAULT_CONTEXT) -> dict:
    """``DatasetInfo`` fields for the given context length (no window is built)."""
    t = _check_context(context)
    sizes = {s: (len(split_bytes(s)) - 1) // t for s in ("train", "test")}
    return {
        "num_classes": VOCAB_SIZE,
        "image_shape": (t,),
        "num_train": sizes["train"],
        "num_test": sizes["test"],
        "task": "next_token",
    }


def split_source(split: str, context: int = DEFAULT_CONTEXT) -> ArraySource:
    """The grain source of ``split`` (records as in the module docstring)."""
    arrays = load_split(split, context)
    return ArraySource(arrays["image"], arrays["label"])

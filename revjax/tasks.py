"""Tasks and regularisers: what a run minimises and reports, chosen by name in the config.

A *task* is a loss per label entry plus the metrics reported for it (big_vision's
``config.loss`` convention, with the metrics bundled)::

    config.task = "classification"   # or "segmentation", "next_token"; "" = the dataset's own
    config.regularisers.weight_smoothness = 2e-4   # name -> weight; 0 switches it off

Registered tasks (``names()``):

* ``classification``: softmax cross-entropy, logits (B, K), labels (B,); metric ``accuracy``.
* ``segmentation``: the same cross-entropy per voxel, logits (B, *S, K), labels (B, *S);
  metrics ``accuracy`` and ``iou`` (per-class IoU_k = TP_k / (TP_k + FP_k + FN_k) from the
  summed confusion matrix, and their mean ``mean_iou``).
* ``next_token``: the same cross-entropy per position of a language model, logits (B, T, V),
  labels (B, T) = the next token of each input position (the data shifts them); metrics
  ``accuracy`` and ``bits_per_byte`` = mean cross-entropy / ln 2 (tokens are bytes).

The one loss definition, ``softmax_xent``, serves the trainer (``revjax.train.trainer``), the
compiled-memory measurement (``revjax.memory.model_loss``) and the tests. A loss maps
(logits (..., K), integer labels (...)) to the per-entry loss (...) in nats; a metric is a
pair of functions, ``sums(logits, labels, weights) -> {name: array}`` (weighted sums that
add over batches; ``weights`` (B,) are 0 on padding) and ``report(totals) -> {name: value}``.

Regularisers R(params, weight) -> scalar are registered by the family that defines them
(``@register_regulariser("weight_smoothness")`` in ``revjax.families.chang``) and found by
name; ``get_regulariser`` imports the providing module on first use, so the trainer imports
no paper module itself.

>>> import jax.numpy as jnp
>>> task = get_task("classification")
>>> float(task.loss(jnp.zeros((1, 4)), jnp.array([2]))[0])  # ln 4
1.3862943649291992
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "Metric",
    "Task",
    "confusion_matrix",
    "get_metric",
    "get_regulariser",
    "get_task",
    "iou_from_confusion",
    "names",
    "register_metric",
    "register_regulariser",
    "register_task",
    "regulariser",
    "regulariser_names",
    "softmax_xent",
    "training_loss",
]

PyTree = Any
Loss = Callable[[jax.Array, jax.Array], jax.Array]


def softmax_xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """-log softmax(logits)[label] per label entry, in nats, computed in float32 at least
    (bfloat16 logits are promoted; float64 logits stay float64, for float64 references).

    Args:
      logits: (..., K).
      labels: (...) integer classes in [0, K).

    Returns:
      (...) losses.
    """
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _weights(weights: jax.Array | None, shape: tuple[int, ...]) -> jax.Array:
    """(B,) example weights (None: all 1) broadcast over the label axes of ``shape``."""
    if weights is None:
        return jnp.ones(shape, jnp.float32)
    w = weights.astype(jnp.float32)
    return jnp.broadcast_to(w.reshape(w.shape + (1,) * (len(shape) - 1)), shape)


@dataclasses.dataclass(frozen=True)
class Metric:
    """A metric as two functions: batch sums that add up, and the report from their totals.

    Attributes:
      sums: (logits (B, ..., K), labels (B, ...), weights (B,) or None) -> {key: array},
        weighted sums over the batch (jit-able).
      report: totals (the sums added over batches) -> {name: value}; must also run on traced
        arrays when ``per_step``.
      per_step: also reported for every training batch (cheap scalars only).
    """

    sums: Callable[[jax.Array, jax.Array, jax.Array | None], dict[str, jax.Array]]
    report: Callable[[Mapping[str, Any]], dict[str, Any]]
    per_step: bool = True


def _accuracy_sums(logits, labels, weights):
    w = _weights(weights, labels.shape)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return {"correct": jnp.sum(correct * w), "count": jnp.sum(w)}


def _bits_per_byte_sums(logits, labels, weights):
    w = _weights(weights, labels.shape)
    return {"nats": jnp.sum(softmax_xent(logits, labels) * w), "count": jnp.sum(w)}


def confusion_matrix(
    logits: jax.Array, labels: jax.Array, weights: jax.Array | None, num_classes: int
) -> jax.Array:
    """(K, K) weighted counts C[true, predicted] over every label entry.

    Args:
      logits: (B, ..., K).
      labels: (B, ...) integer classes.
      weights: (B,) example weights (0 for padding; None: all 1), broadcast over label axes.
      num_classes: K.
    """
    predicted = jnp.argmax(logits, axis=-1)
    w = _weights(weights, labels.shape)
    true_1h = jax.nn.one_hot(labels.reshape(-1), num_classes, dtype=jnp.float32)
    pred_1h = jax.nn.one_hot(predicted.reshape(-1), num_classes, dtype=jnp.float32)
    return jnp.einsum("nk,nl->kl", true_1h * w.reshape(-1, 1), pred_1h)


def iou_from_confusion(counts: np.ndarray) -> np.ndarray:
    """Per-class IoU_k = TP_k / (TP_k + FP_k + FN_k) of a (K, K) confusion matrix C[true, pred];
    NaN for a class absent from both labels and predictions."""
    counts = np.asarray(counts, np.float64)
    tp = np.diag(counts)
    union = counts.sum(0) + counts.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def _iou_report(totals):
    """``iou_<k>`` for every class present in labels or predictions, and their mean."""
    iou = iou_from_confusion(totals["confusion"])
    out = {f"iou_{k}": float(v) for k, v in enumerate(iou) if np.isfinite(v)}
    out["mean_iou"] = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    return out


_METRICS: dict[str, Metric] = {
    "accuracy": Metric(_accuracy_sums, lambda t: {"accuracy": t["correct"] / t["count"]}),
    "iou": Metric(
        lambda logits, labels, weights: {
            "confusion": confusion_matrix(logits, labels, weights, logits.shape[-1])
        },
        _iou_report,
        per_step=False,
    ),
    "bits_per_byte": Metric(
        _bits_per_byte_sums, lambda t: {"bits_per_byte": t["nats"] / t["count"] / math.log(2.0)}
    ),
}


def register_metric(name: str, metric: Metric) -> Metric:
    """Adds ``metric`` under ``name`` (for ``register_task(..., metrics=(name, ...))``)."""
    if name in _METRICS:
        raise ValueError(f"metric {name!r} is already registered")
    _METRICS[name] = metric
    return metric


def get_metric(name: str) -> Metric:
    """The metric ``name``; ValueError listing the registered names otherwise."""
    if name not in _METRICS:
        raise ValueError(f"unknown metric {name!r}; valid metrics: {', '.join(sorted(_METRICS))}")
    return _METRICS[name]


@dataclasses.dataclass(frozen=True)
class Task:
    """A loss and the metrics reported with it.

    Attributes:
      name: the registry name (``config.task``).
      loss: (logits (B, ..., K), labels (B, ...)) -> (B, ...) loss per label entry (nats);
        the objective is its mean (training) or weighted mean (evaluation).
      metrics: ``Metric`` values, in report order.
      label_shape: one example's input shape -> its label shape (classification (), dense
        tasks the spatial axes, language models the sequence).
    """

    name: str
    loss: Loss
    metrics: tuple[Metric, ...]
    label_shape: Callable[[tuple[int, ...]], tuple[int, ...]]

    def eval_sums(self, logits, labels, weights) -> dict[str, dict[str, jax.Array]]:
        """{"loss": {"sum", "count"}, <metric index>: sums}: an eval batch's addable sums."""
        w = _weights(weights, labels.shape)
        out = {"loss": {"sum": jnp.sum(self.loss(logits, labels) * w), "count": jnp.sum(w)}}
        for i, metric in enumerate(self.metrics):
            out[str(i)] = metric.sums(logits, labels, weights)
        return out

    def eval_report(self, totals: Mapping[str, Any]) -> dict[str, float]:
        """{"loss": mean loss, **each metric's report} from ``eval_sums`` added over batches."""
        count = max(float(totals["loss"]["count"]), 1.0)
        out = {"loss": float(totals["loss"]["sum"]) / count}
        for i, metric in enumerate(self.metrics):
            out.update({k: float(v) for k, v in metric.report(totals[str(i)]).items()})
        return out

    def step_metrics(self, logits, labels) -> dict[str, jax.Array]:
        """The ``per_step`` metrics of one training batch (jit-able scalars)."""
        out = {}
        for metric in self.metrics:
            if metric.per_step:
                out.update(metric.report(metric.sums(logits, labels, None)))
        return out


_TASKS: dict[str, Task] = {}


def register_task(
    name: str,
    *,
    loss: Loss,
    metrics: Sequence[str] = (),
    label_shape: Callable[[tuple[int, ...]], tuple[int, ...]] = lambda image_shape: (),
) -> Task:
    """Registers the task ``name`` (then ``config.task = name``).

    Args:
      name: a new name.
      loss: per-entry loss (see ``Task.loss``).
      metrics: names of registered metrics (``register_metric``).
      label_shape: example input shape -> label shape (default: one label per example).
    """
    if name in _TASKS:
        raise ValueError(f"task {name!r} is already registered")
    task = Task(name, loss, tuple(get_metric(m) for m in metrics), label_shape)
    _TASKS[name] = task
    return task


def names() -> list[str]:
    """Sorted names of the registered tasks."""
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    """The task ``name``; ValueError listing the registered names otherwise."""
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(names())}")
    return _TASKS[name]


register_task("classification", loss=softmax_xent, metrics=("accuracy",))
register_task(
    "segmentation",
    loss=softmax_xent,
    metrics=("accuracy", "iou"),
    label_shape=lambda image_shape: tuple(image_shape[:-1]),
)
register_task(
    "next_token",
    loss=softmax_xent,
    metrics=("accuracy", "bits_per_byte"),
    label_shape=lambda image_shape: tuple(image_shape),
)


def training_loss(
    model: Any,
    loss: Loss,
    params: PyTree,
    model_state: Mapping[str, PyTree] | None,
    images: jax.Array,
    labels: jax.Array,
    rng: jax.Array | None = None,
) -> tuple[jax.Array, tuple[jax.Array, dict | None]]:
    """mean(loss(f_params(images), labels)) of a linen ``model`` in training mode.

    The model's non-parameter collections (``model_state``: batch-norm statistics,
    spectral-norm iterates) are applied as mutable and returned updated, not differentiated;
    ``rng`` (if given) is the "dropout" stream.

    Returns:
      (mean loss, (logits, updated model_state or None)).
    """
    rngs = None if rng is None else {"dropout": rng}
    variables = {"params": params, **(model_state or {})}
    mutable = list(model_state or {}) or False
    out = model.apply(variables, images, train=True, mutable=mutable, rngs=rngs)
    logits, model_state = (out[0], dict(out[1])) if mutable else (out, model_state)
    return jnp.mean(loss(logits, labels)), (logits, model_state)


_REGULARISERS: dict[str, Callable[[PyTree, float], jax.Array]] = {}
# name -> module that registers it when imported (looked up on first use only).
_PROVIDERS = {"weight_smoothness": "revjax.families.chang"}


def register_regulariser(name: str):
    """Decorator: registers ``fn(params, weight) -> scalar`` under ``name``."""

    def register(fn):
        _REGULARISERS[name] = fn
        return fn

    return register


def regulariser_names() -> list[str]:
    """Sorted names of the registered (or importable) regularisers."""
    return sorted(set(_REGULARISERS) | set(_PROVIDERS))


def get_regulariser(name: str) -> Callable[[PyTree, float], jax.Array]:
    """The regulariser ``name`` (importing its family's module on first use)."""
    if name not in _REGULARISERS and name in _PROVIDERS:
        importlib.import_module(_PROVIDERS[name])
    if name not in _REGULARISERS:
        raise ValueError(
            f"unknown regulariser {name!r}; valid regularisers: {', '.join(regulariser_names())}"
        )
    return _REGULARISERS[name]


def regulariser(weights: Mapping[str, float]) -> Callable[[PyTree], jax.Array] | None:
    """R(params) = sum_name fn_name(params, weight_name) over the nonzero weights; None when
    all are zero (a family's regulariser is then never looked up).

    Raises:
      ValueError: an unknown name (before any tracing).
    """
    terms = [(get_regulariser(name), float(w)) for name, w in sorted(weights.items()) if float(w)]
    if not terms:
        return None
    return lambda params: sum(fn(params, w) for fn, w in terms)

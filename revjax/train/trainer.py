"""Training and evaluation for every registry model, dataset and backprop mode.

``train_and_evaluate(config, workdir)`` runs one experiment end to end::

    dataset_info -> mesh ("data") -> model = models.create(config.model, **model_kwargs)
    -> jit(create_state, out_shardings=replicated) -> restore latest checkpoint (state,
    rng, input position) -> loop: shard batch -> jitted train_step (donated state)
    -> metrics.jsonl / progress bar / periodic checkpoint + eval -> final eval, summary.json

One ``train_step`` serves every model: loss = mean softmax cross-entropy over the label
array (classification: labels (B,), logits (B, K); segmentation: labels (B, T, H, W),
logits (B, T, H, W, K)) plus the optional Chang weight-smoothness term; every non-"params"
variable collection (BatchNorm statistics, spectral-norm power iterates) is mutable and
carried in the state; the backward strategy is the model's ``backprop``
field, so the same step trains "reversible", "store" and "remat" variants.

The train state is a plain dict pytree::

    step:         () int32           updates done
    params:       model parameters
    opt_state:    optax state
    rng:          (2,) uint32        base key; step s uses fold_in(rng, s)
    model_state:  the model's other variable collections, updated by every train step
                  (e.g. {"batch_stats": ...}, {"spectral_stats": ...}); absent if none

Failure behaviour: a non-finite loss or parameter stops the run with
``NonFiniteLossError`` naming the step, and a reconstruction error of the reversible body above
``config.drift_rtol`` (measured at the first step and every ``config.drift_check_every`` steps
with ``revjax.models.reconstruction_error``) with ``ReconstructionDriftError``; the bad state is
never checkpointed. SIGTERM and SIGINT (Ctrl-C, a Jupyter interrupt) save a checkpoint at the
next step boundary and return (``summary["stopped_by"]``). A restart in the same workdir resumes
from the latest readable checkpoint if its run-defining config equals the current one (only
``num_steps``/``num_epochs`` may grow); ``metrics.jsonl`` is cut back to the resumed step so no
step is logged twice. ``EXIT_*`` are the command line's exit statuses.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from revjax import data as data_lib
from revjax import models
from revjax.memory import compiled_memory, jitted_step_memory
from revjax.train import checkpointing, optim, sharding

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_PREEMPTED",
    "EXIT_RECONSTRUCTION_DRIFT",
    "NonFiniteLossError",
    "ReconstructionDriftError",
    "build_model",
    "create_state",
    "cross_entropy_metrics",
    "make_train_step",
    "make_eval_step",
    "confusion_matrix",
    "iou_from_confusion",
    "train_and_evaluate",
]

logger = logging.getLogger(__name__)
PyTree = Any


class NonFiniteLossError(FloatingPointError):
    """The loss or the parameters became NaN/inf; the run was stopped."""


# ----------------------------------------------------------------------------- model and state


def model_fields(model_or_factory: Any) -> set[str]:
    """Dataclass field names of a linen module (its configurable attributes)."""
    return {f.name for f in dataclasses.fields(model_or_factory)}


def build_model(config: ml_collections.ConfigDict, info: data_lib.DatasetInfo, **overrides):
    """``models.create(config.model, **config.model_kwargs, **overrides)``.

    ``num_classes`` is taken from the dataset unless ``model_kwargs`` sets it.
    """
    kwargs = dict(config.get("model_kwargs", {}) or {})
    kwargs.update(overrides)
    model = models.create(config.model, **kwargs)
    if "num_classes" in model_fields(model) and "num_classes" not in kwargs:
        model = models.create(config.model, **kwargs, num_classes=info.num_classes)
    return model


def has_backprop(model) -> bool:
    """Whether the model takes a ``backprop`` mode (i.e. has a reversible body)."""
    return "backprop" in model_fields(model)


def create_state(model, tx: optax.GradientTransformation, seed: int, image_shape) -> dict:
    """Initial train state (see module docstring) for inputs of shape (1, *image_shape)."""
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
    example = jnp.zeros((1, *image_shape), jnp.float32)
    variables = model.init(init_rng, example, train=False)
    params = variables["params"]
    state = {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": tx.init(params),
        "rng": train_rng,
    }
    model_state = {k: v for k, v in variables.items() if k != "params" and v}
    if model_state:
        state["model_state"] = model_state
    return state


def abstract_state(
    model, tx: optax.GradientTransformation, seed: int, image_shape, mesh=None, fsdp=False
) -> dict:
    """``create_state``'s ShapeDtypeStructs (nothing allocated), with the trainer's state
    shardings on ``mesh`` (replicated, or split over "data" with ``fsdp``) when one is given."""
    state = jax.eval_shape(lambda: create_state(model, tx, seed, image_shape))
    if mesh is None:
        return state
    shardings = sharding.state_shardings(mesh, state, fsdp=fsdp)
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state, shardings
    )


def batch_shardings(mesh, image_shape, label_shape, spatial_axis=None) -> dict:
    """{"image", "label"} shardings of a global batch: rows over "data"; with ``spatial_axis``
    the image (and a per-voxel label) also split over "space" along that axis.

    Shapes are per example: image (*S, C), label () for classification or (*S,) per voxel.
    """
    return {
        "image": sharding.batch_sharding(mesh, 1 + len(image_shape), spatial_axis),
        "label": sharding.batch_sharding(
            mesh, 1 + len(label_shape), spatial_axis if label_shape else None
        ),
    }


def abstract_batch(global_batch_size: int, image_shape, label_shape, shardings=None) -> dict:
    """{"image": (B, *image_shape) float32, "label": (B, *label_shape) int32} as
    ShapeDtypeStructs, placed by ``shardings`` (``batch_shardings``) when given."""
    shardings = shardings or {"image": None, "label": None}
    return {
        "image": jax.ShapeDtypeStruct(
            (global_batch_size, *image_shape), jnp.float32, sharding=shardings["image"]
        ),
        "label": jax.ShapeDtypeStruct(
            (global_batch_size, *label_shape), jnp.int32, sharding=shardings["label"]
        ),
    }


# ----------------------------------------------------------------------------- steps


def cross_entropy_metrics(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None):
    """(sum of CE, sum of correct, count) over all label entries, weighted by ``weights``.

    Args:
      logits: (..., K) with ``labels`` of shape (...) (classification (B,), segmentation
        (B, T, H, W)).
      labels: integer classes.
      weights: (B,) example weights (0 for padding), broadcast over the label axes.
    """
    logits = logits.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    if weights is None:
        w = jnp.ones_like(ce)
    else:
        w = jnp.broadcast_to(weights.reshape(weights.shape + (1,) * (ce.ndim - 1)), ce.shape)
        w = w.astype(jnp.float32)
    return jnp.sum(ce * w), jnp.sum(correct * w), jnp.sum(w)


def _all_finite(tree: PyTree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _smoothness_fn(weight: float) -> Callable[[PyTree], jax.Array] | None:
    """Chang et al.'s weight smoothness R(theta) at rate ``weight`` (lazy import), or None.

    ``revjax.families.chang.weight_smoothness(params, rate)`` = rate * sum_j 1/2
    ||K_{j+1} - K_j||_F^2 over consecutive blocks (the "weight smoothness decay" of Chang et
    al. 2018, arXiv:1709.03698, section "Regularization").
    """
    if not weight:
        return None
    from revjax.families.chang import weight_smoothness

    return functools.partial(weight_smoothness, rate=weight)


def make_train_step(
    model, tx: optax.GradientTransformation, schedule: optax.Schedule, weight_smoothness=0.0
) -> Callable[[dict, dict], tuple[dict, dict]]:
    """The (unjitted) update ``(state, batch) -> (state, metrics)`` for any registry model.

    loss(theta) = mean_i CE(f_theta(x_i), y_i) + weight_smoothness * R(theta); gradients
    come from ``jax.grad`` and so use the model's own backprop mode.
    """
    smoothness = _smoothness_fn(weight_smoothness)

    def loss_fn(params, model_state, batch, rng):
        if model_state is not None:
            logits, model_state = model.apply(
                {"params": params, **model_state},
                batch["image"],
                train=True,
                mutable=list(model_state),
                rngs={"dropout": rng},
            )
            model_state = dict(model_state)
        else:
            variables = {"params": params}
            logits = model.apply(variables, batch["image"], train=True, rngs={"dropout": rng})
        ce_sum, correct, count = cross_entropy_metrics(logits, batch["label"])
        loss = ce_sum / count
        total = loss
        if smoothness is not None:
            total = total + smoothness(params)
        return total, (loss, correct / count, model_state)

    def train_step(state, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (total, (loss, accuracy, model_state)), grads = grad_fn(
            state["params"], state.get("model_state"), batch, rng
        )
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new_state = dict(state, step=state["step"] + 1, params=params, opt_state=opt_state)
        if model_state is not None:
            new_state["model_state"] = model_state
        metrics = {
            "loss": loss,
            "total_loss": total,
            "accuracy": accuracy,
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": schedule(state["step"]),
            "finite": jnp.isfinite(total) & _all_finite(params),
        }
        return new_state, metrics

    return train_step


def confusion_matrix(
    logits: jax.Array, labels: jax.Array, weights: jax.Array, num_classes: int
) -> jax.Array:
    """(K, K) weighted counts C[true, predicted] over every label entry.

    Args:
      logits: (B, ..., K).
      labels: (B, ...) integer classes.
      weights: (B,) example weights (0 for padding), broadcast over the label axes.
      num_classes: K.
    """
    predicted = jnp.argmax(logits, axis=-1)
    w = jnp.broadcast_to(weights.reshape(weights.shape + (1,) * (labels.ndim - 1)), labels.shape)
    true_1h = jax.nn.one_hot(labels.reshape(-1), num_classes, dtype=jnp.float32)
    pred_1h = jax.nn.one_hot(predicted.reshape(-1), num_classes, dtype=jnp.float32)
    return jnp.einsum("nk,nl->kl", true_1h * w.reshape(-1, 1).astype(jnp.float32), pred_1h)


def iou_from_confusion(counts: np.ndarray) -> np.ndarray:
    """Per-class IoU_k = TP_k / (TP_k + FP_k + FN_k) of a (K, K) confusion matrix C[true, pred];
    NaN for a class absent from both labels and predictions."""
    counts = np.asarray(counts, np.float64)
    tp = np.diag(counts)
    union = counts.sum(0) + counts.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def make_eval_step(model, num_classes: int | None = None) -> Callable[[dict, dict], dict]:
    """``(state, batch with "weight") -> {"loss_sum", "correct", "count"[, "confusion"]}``.

    The task follows the dataset: classification reports loss and accuracy; segmentation
    (``num_classes`` given) also the (K, K) confusion matrix over all voxels, from which
    ``evaluate`` reports per-class IoU and their mean.
    """

    def eval_step(state, batch):
        variables = {"params": state["params"], **state.get("model_state", {})}
        logits = model.apply(variables, batch["image"], train=False)
        ce_sum, correct, count = cross_entropy_metrics(logits, batch["label"], batch["weight"])
        out = {"loss_sum": ce_sum, "correct": correct, "count": count}
        if num_classes is not None:
            out["confusion"] = confusion_matrix(
                logits, batch["label"], batch["weight"], num_classes
            )
        return out

    return eval_step


# ----------------------------------------------------------------------------- helpers


def prepare_workdir(workdir: str | os.PathLike) -> Path:
    """Creates ``workdir`` and checks it is writable (clear error otherwise)."""
    path = Path(workdir).expanduser().absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test.{os.getpid()}"  # one per process: no race
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise PermissionError(
            f"workdir {str(path)!r} is not writable ({error.strerror or error}); "
            "pass a writable --workdir."
        ) from error
    return path


def _validate(config: ml_collections.ConfigDict) -> None:
    for key in ("model", "dataset", "global_batch_size", "optimizer"):
        if key not in config:
            raise ValueError(f"config is missing the required field {key!r}")
    if config.get("num_steps", 0) <= 0 and config.get("num_epochs", 0) <= 0:
        raise ValueError("set config.num_steps > 0 or config.num_epochs > 0")
    if int(config.get("drift_check_every", 0) or 0) < 0:
        raise ValueError("config.drift_check_every must be >= 0 (0 disables the drift guard)")
    if not float(config.get("drift_rtol", 1e-3)) > 0:
        raise ValueError(f"config.drift_rtol must be > 0, got {config.get('drift_rtol')}")
    if int(config.get("fake_examples", 0) or 0) < 0:
        raise ValueError("config.fake_examples must be >= 0 (0 reads the real data)")


def _pad_batch(batch: dict, size: int) -> dict:
    """Pads a (possibly short) eval batch to ``size`` examples; "weight" is 1 for a real
    example, 0 for padding (the batch's own "weight", from ``make_dataset`` with
    ``drop_remainder=False``, is kept)."""
    n = len(batch["label"])
    weight = np.asarray(batch.get("weight", np.ones(n)), np.float32)
    out = {"weight": np.concatenate([weight, np.zeros(size - n, np.float32)])}
    for key in ("image", "label"):
        value = np.asarray(batch[key])
        pad = np.zeros((size - n, *value.shape[1:]), value.dtype)
        out[key] = np.concatenate([value, pad]) if size > n else value
    return out


class _MetricsWriter:
    """Appends JSON lines {"step", "split", "time", ...} to ``<workdir>/metrics.jsonl``.

    ``resume_at(step)`` drops every record after ``step`` (written by a run that was then
    interrupted before its next checkpoint) so that a resumed run never logs a step twice;
    a record whose (split, step, metric names) is already in the file is not written again.
    """

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        self._seen: set[tuple] = set()
        self._tensorboard = None

    def open_tensorboard(self, logdir: Path, purge_step: int) -> bool:
        """Also writes every scalar as a TensorBoard event (``<split>/<name>``) under
        ``logdir`` with ``tensorboardX`` (no TensorFlow needed); events at steps >=
        ``purge_step`` left by an interrupted run are discarded. Returns False if
        tensorboardX is not installed (``pip install tensorboardX``)."""
        if not self.enabled:
            return True
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            return False
        self._tensorboard = SummaryWriter(str(logdir), purge_step=purge_step or None)
        return True

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    @staticmethod
    def _key(record: Mapping[str, Any]) -> tuple:
        names = tuple(sorted(k for k in record if k not in ("step", "split", "time")))
        return record.get("split"), record.get("step"), names

    def resume_at(self, step: int) -> None:
        """Keeps the records with ``record["step"] <= step`` (all of them are duplicates
        otherwise); ``step=0`` for a fresh start keeps only step-0 records."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            if int(record.get("step", 0)) <= step and self._key(record) not in self._seen:
                self._seen.add(self._key(record))
                kept.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(self.path)

    def write(self, step: int, split: str, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, "time": time.time()}
        record.update({k: float(v) for k, v in values.items()})
        key = self._key(record)
        if key in self._seen:
            return
        self._seen.add(key)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tensorboard is not None:
            for name, value in values.items():
                self._tensorboard.add_scalar(f"{split}/{name}", float(value), int(step))
            self._tensorboard.flush()


# Exit statuses of ``python -m revjax.train`` (documented in the README "Training" section).
EXIT_ERROR = 1  # bad config/input, non-finite loss, incompatible checkpoint
EXIT_RECONSTRUCTION_DRIFT = 3  # the reversible body no longer inverts to drift_rtol
EXIT_PREEMPTED = 75  # SIGTERM: checkpoint saved, requeue me (sysexits.h EX_TEMPFAIL)
EXIT_INTERRUPTED = 130  # SIGINT / Ctrl-C / Jupyter interrupt: checkpoint saved (128 + 2)


class ReconstructionDriftError(FloatingPointError):
    """The reversible body's reconstruction error exceeded ``config.drift_rtol``."""

    exit_status = EXIT_RECONSTRUCTION_DRIFT


class _StopSignals:
    """SIGTERM/SIGINT handler that only records the signal; the loop saves a checkpoint at
    the next step boundary and returns. A second SIGINT interrupts at once (the previous
    handler is put back after the first)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name
        if signum == signal.SIGINT and signum in self._previous:
            signal.signal(signum, self._previous.pop(signum))

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


class _Progress:
    """A tqdm bar when ``bar`` (stdout is a terminal), else one plain line every
    ``every`` steps: ``step S/N loss L accuracy A steps/s R lr E``."""

    def __init__(self, total: int, initial: int, desc: str, bar: bool, every: int):
        self.total, self.every, self.use_bar = total, every, bar
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit="step",
            disable=not bar,
            dynamic_ncols=True,
            mininterval=0.5,
        )
        self._mark = (initial, time.time())

    def rate(self, step: int) -> float:
        """Steps per second since the previous plain line (or the bar's rate)."""
        if self.use_bar:
            return float(self.bar.format_dict.get("rate") or 0.0)
        then_step, then = self._mark
        elapsed = time.time() - then
        return (step - then_step) / elapsed if elapsed > 0 and step > then_step else 0.0

    def update(self, step: int, values: Mapping[str, float]) -> None:
        """Called with each step's fetched metrics."""
        if self.use_bar:
            self.bar.set_postfix(loss=f"{values['loss']:.4f}", acc=f"{values['accuracy']:.3f}")
            return
        if step % self.every == 0 or step == self.total:
            print(
                f"step {step}/{self.total} loss {values['loss']:.4f} "
                f"accuracy {values['accuracy']:.4f} steps/s {self.rate(step):.2f} "
                f"lr {values['learning_rate']:.4g}",
                flush=True,
            )
            self._mark = (step, time.time())

    def advance(self) -> None:
        self.bar.update(1)

    def write(self, line: str) -> None:
        if self.use_bar:
            tqdm.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        self.bar.close()


def _interactive() -> bool:
    """Whether a progress bar can redraw: stdout is a terminal, or a Jupyter kernel (where
    ``tqdm.auto`` draws a widget)."""
    if sys.stdout.isatty():
        return True
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None and hasattr(shell, "get_ipython") else None
    return ip is not None and "ipykernel" in sys.modules


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def memory_line(temp_bytes: Mapping[str, int]) -> str:
    """One line comparing compiled train-step temp bytes across backprop modes."""
    parts = [f"{mode} {_fmt_bytes(b)}" for mode, b in temp_bytes.items()]
    line = "train-step memory (compiled temp bytes): " + ", ".join(parts)
    if "reversible" in temp_bytes and "store" in temp_bytes and temp_bytes["reversible"] > 0:
        line += f" -> store/reversible = {temp_bytes['store'] / temp_bytes['reversible']:.2f}x"
    return line


# ----------------------------------------------------------------------------- main loop


def evaluate(eval_fn, state, config, mesh, spatial_axis=None) -> dict[str, float]:
    """Mean loss and accuracy over the whole test split (last batch padded and masked);
    segmentation adds ``iou_<k>`` per class present and ``mean_iou`` (their mean)."""
    batch_size = int(config.get("eval_batch_size", 0) or config.global_batch_size)
    ds = data_lib.make_dataset(
        config.dataset,
        "test",
        global_batch_size=batch_size,
        seed=config.seed,
        train=False,
        drop_remainder=False,
        **data_lib.dataset_kwargs(config),
    )
    local = batch_size // jax.process_count()
    totals = np.zeros(3)
    confusion = None
    for batch in ds:
        out = eval_fn(state, sharding.shard_batch(_pad_batch(batch, local), mesh, spatial_axis))
        totals += np.array([out["loss_sum"], out["correct"], out["count"]], dtype=np.float64)
        if "confusion" in out:
            counts = np.asarray(jax.device_get(out["confusion"]), np.float64)
            confusion = counts if confusion is None else confusion + counts
    loss_sum, correct, count = totals
    result = {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1)}
    if confusion is not None:
        iou = iou_from_confusion(confusion)
        result.update({f"iou_{k}": float(v) for k, v in enumerate(iou) if np.isfinite(v)})
        result["mean_iou"] = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    return result


def drift_checker(model) -> Callable[[dict, jax.Array], float | None] | None:
    """``(state, images) -> worst relative reconstruction error`` of the model's reversible
    body, from ``revjax.models.reconstruction_error`` (None when that function is absent).

    The error is max over the body of ||x - f^{-1}(f(x))|| / ||x||, so it stays ~1e-7 in
    float32 while the body is well conditioned and grows when training makes the inverse
    unstable (Chang et al. 2018, arXiv:1709.03698, Sec. 3; Gomez et al. 2017,
    arXiv:1707.04585, Sec. 4.1).
    """
    measure = getattr(models, "reconstruction_error", None)
    if measure is None:
        return None

    # Training mode: batch norm uses the batch's statistics, as the gradient step does (no
    # running average is updated). One compilation, reused at every check.
    measure_jit = jax.jit(lambda variables, images: measure(model, variables, images, train=True))

    def check(state: dict, images: jax.Array) -> float | None:
        variables = {"params": state["params"], **state.get("model_state", {})}
        error = measure_jit(variables, images)
        return None if error is None else float(jax.device_get(error))

    return check


def drift_message(step: int, error: float, rtol: float, where: str) -> str:
    """The one-line stop message of the drift guard, naming the remedies."""
    return (
        f"Reconstruction drift at step {step}: relative error {error:.3g} > drift_rtol "
        f"{rtol:g}; stopped, the drifted state was not saved ({where}). Remedies: a smaller "
        "step size h (model_kwargs.h), float32/float64 states, the weight-smoothness penalty "
        "(config.weight_smoothness), a lower optimizer.learning_rate."
    )


# Config fields that may differ between the processes of one job (each host's own data copy,
# its terminal); every other field, and the workdir, must be equal on all processes.
PROCESS_LOCAL_FIELDS = ("data_dir", "progress_bar")


def check_processes_agree(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
    """Stops a multi-process job whose processes were started with different configs.

    Compares the flattened config (all fields but ``PROCESS_LOCAL_FIELDS``) and the absolute
    workdir across processes through the distributed key-value store, before anything is
    compiled (`sharding.check_same_across_processes`); a no-op for one process.

    Raises:
      ValueError: naming each differing field and every process's value.
    """
    fields = {
        k: v
        for k, v in checkpointing.flat_config(json.loads(config.to_json())).items()
        if k.split(".")[0] not in PROCESS_LOCAL_FIELDS
    }
    fields["workdir"] = str(Path(workdir).absolute())
    sharding.check_same_across_processes(fields, "run config")


def _allowed_changes(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """Fields a resumed run may change: the run length, unless the schedule depends on it."""
    if config.optimizer.get("schedule", "constant") == "cosine":
        return ()
    return ("num_steps", "num_epochs")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints) and evaluates.

    Args:
      config: experiment config (see ``revjax/configs/default.py`` for every field).
      workdir: output directory: ``checkpoints/``, ``metrics.jsonl``, ``config.json``,
        ``summary.json``.

    Returns:
      the summary dict written to ``summary.json`` (test_accuracy, steps, memory, ...);
      ``summary["stopped_by"]`` is "SIGTERM"/"SIGINT" (and ``preempted`` True) when a signal
      stopped the run after saving a checkpoint.

    Raises:
      ValueError: unknown dataset/model, batch not divisible by devices, bad config, or (in
        a multi-process job) processes started with different configs or workdirs.
      PermissionError: unwritable workdir.
      revjax.data.DatasetNotPreparedError: a TFDS dataset is missing (checked before the
        workdir is created).
      NonFiniteLossError: the loss or parameters became non-finite.
      ReconstructionDriftError: the reversible body's reconstruction error exceeded
        ``config.drift_rtol``.
      checkpointing.IncompatibleCheckpointError: the workdir's checkpoint was written by a
        different run-defining config (and ``config.force_resume`` is not set).
    """
    start_time = time.time()
    check_processes_agree(config, workdir)
    _validate(config)
    info = data_lib.dataset_info(config.dataset, **data_lib.dataset_kwargs(config))
    mesh_config = dict(config.get("mesh", {}) or {})
    mesh = sharding.make_mesh(mesh_config.get("data", -1), mesh_config.get("space", 1))
    data_devices = mesh.shape[sharding.DATA_AXIS]
    sharding.check_batch_divisible(config.global_batch_size, data_devices)
    eval_batch_size = int(config.get("eval_batch_size", 0) or config.global_batch_size)
    sharding.check_batch_divisible(eval_batch_size, data_devices)
    sharding.check_process_rows(mesh, config.global_batch_size)
    spatial_axis = mesh_config.get("spatial_axis", 1) if mesh.shape["space"] > 1 else None
    if spatial_axis is not None:
        sharding.check_spatial_divisible(
            (config.global_batch_size, *info.image_shape),
            mesh,
            spatial_axis,
            mesh_config.get("spatial_multiple", 1),
        )
    # Opening the data first: a missing dataset is reported before anything is written.
    train_ds = data_lib.make_dataset(
        config.dataset,
        "train",
        global_batch_size=config.global_batch_size,
        seed=config.seed,
        train=True,
        **data_lib.dataset_kwargs(config),
    )
    model = build_model(config, info)
    workdir = prepare_workdir(workdir)
    steps_per_epoch = max(info.num_train // config.global_batch_size, 1)
    if config.get("num_steps", 0) > 0:
        total_steps = int(config.num_steps)
    else:
        total_steps = int(round(config.num_epochs * steps_per_epoch))
    tx, schedule = optim.make_optimizer(config, steps_per_epoch, total_steps)
    train_step = make_train_step(model, tx, schedule, config.get("weight_smoothness", 0.0))
    replicated = sharding.replicated_sharding(mesh)
    label_shape = _label_shape(info)
    step_batch_shardings = batch_shardings(mesh, info.image_shape, label_shape, spatial_axis)

    def make_state():
        return create_state(model, tx, config.seed, info.image_shape)

    state_shardings = sharding.state_shardings(
        mesh, jax.eval_shape(make_state), fsdp=bool(config.get("fsdp", False))
    )
    init = jax.jit(make_state, out_shardings=state_shardings)
    state = init()
    num_params = models.count_params(state["params"])
    config_dict = json.loads(config.to_json())

    checkpointer = checkpointing.Checkpointer(
        workdir / "checkpoints",
        max_to_keep=int(config.get("keep_checkpoints", 3)),
        async_save=bool(config.get("async_checkpointing", True)),
    )
    checkpointer.allowed_changes = _allowed_changes(config)
    checkpointer.force = bool(config.get("force_resume", False))
    show_bar = bool(config.get("progress_bar", True)) and _interactive()
    log_every = max(int(config.get("log_every_steps", 50)), 1)
    try:
        train_iter = iter(train_ds)
        restored = checkpointer.restore_latest(state, config_dict)
    except BaseException:
        checkpointer.close()
        raise
    resumed_from, skipped = None, []
    messages = []
    if restored is not None:
        state, data_state, resumed_from, skipped = restored
        train_iter.set_state(data_state)
        messages.append(
            f"Resumed from checkpoint at step {resumed_from} in {checkpointer.directory}"
        )
        if skipped:
            messages.append(
                f"Skipped unreadable checkpoint(s) {skipped}; fell back to {resumed_from}"
            )
        for line in checkpointer.forced_differences:
            messages.append(f"force_resume: continuing under the changed value {line}")
        if resumed_from > total_steps:
            checkpointer.close()
            raise ValueError(
                f"The checkpoint in {checkpointer.directory} is at step {resumed_from}, past "
                f"this config's {total_steps} steps; use a fresh --workdir for a shorter run."
            )
    step = int(jax.device_get(state["step"]))
    if step < total_steps or not (workdir / "config.json").exists():
        # Written only by a run that trains (or starts) under this config.
        (workdir / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True))
    writer = _MetricsWriter(workdir / "metrics.jsonl", jax.process_index() == 0)
    writer.resume_at(step)
    if config.get("tensorboard", True):
        if not writer.open_tensorboard(workdir / "tensorboard", purge_step=step + 1):
            messages.append(
                "TensorBoard events off: pip install tensorboardX (metrics.jsonl is written)"
            )

    # Compile the step once; its memory analysis is the configured mode's figure.
    step_batch = abstract_batch(
        config.global_batch_size, info.image_shape, label_shape, step_batch_shardings
    )
    jitted = jax.jit(
        train_step,
        in_shardings=(state_shardings, step_batch_shardings),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
    compiled = jitted.lower(state, step_batch).compile()
    temp_bytes = {}
    if config.get("memory_report", True):
        own_mode = getattr(model, "backprop", None)
        modes = tuple(config.get("memory_modes", ("reversible", "store")))
        for mode in modes if has_backprop(model) else ():
            if mode == own_mode:
                temp_bytes[mode] = compiled_memory(compiled)["temp"]
            else:
                other = build_model(config, info, backprop=mode)
                temp_bytes[mode] = jitted_step_memory(
                    make_train_step(other, tx, schedule, config.get("weight_smoothness", 0.0)),
                    state,
                    step_batch,
                )["temp"]
        if not temp_bytes:
            temp_bytes["model"] = compiled_memory(compiled)["temp"]
    eval_fn = jax.jit(
        make_eval_step(model, info.num_classes if info.task == "segmentation" else None)
    )

    save_every = int(config.get("checkpoint_every_steps", 0) or 0)
    eval_every = int(config.get("eval_every_steps", 0) or 0)
    drift_every = int(config.get("drift_check_every", 0) or 0)
    drift_rtol = float(config.get("drift_rtol", 1e-3))
    check_drift = drift_checker(model) if drift_every > 0 else None
    first_step = step
    last = {"loss": float("nan"), "accuracy": float("nan")}

    def where_good() -> str:
        checkpointer.wait()
        good = checkpointer.latest_step()
        if good is None:
            return "no checkpoint was written yet"
        return f"the last good checkpoint is step {good} in {checkpointer.directory}"

    def check(metrics_step: int, metrics: dict) -> dict:
        values = jax.device_get(metrics)
        if not bool(values["finite"]):
            raise NonFiniteLossError(
                f"Non-finite loss or parameters at step {metrics_step} "
                f"(loss={float(values['loss'])}, grad_norm={float(values['grad_norm'])}, "
                f"learning_rate={float(values['learning_rate'])}); stopped. The non-finite "
                f"state was not saved; {where_good()}. Lower optimizer.learning_rate or set "
                "optimizer.grad_clip_norm."
            )
        return {k: float(v) for k, v in values.items() if k != "finite"}

    def guard_drift(at_step: int, images) -> None:
        nonlocal check_drift
        error = check_drift(state, images)
        if error is None:  # no reversible body (e.g. ResNet): nothing to guard
            check_drift = None
            return
        writer.write(at_step, "train", {"reconstruction_error": error})
        if not error <= drift_rtol:
            raise ReconstructionDriftError(drift_message(at_step, error, drift_rtol, where_good()))

    def save(at_step: int) -> None:
        checkpointer.save(at_step, state, train_iter.get_state(), config_dict)

    progress = _Progress(total_steps, step, config.get("name", config.model), show_bar, log_every)
    for line in messages:
        progress.write(line)

    def log(pending) -> None:
        at_step, metrics = pending
        values = check(at_step, metrics)
        last.update(loss=values["loss"], accuracy=values["accuracy"])
        if at_step % log_every == 0 or at_step == 1 or at_step == total_steps:
            writer.write(at_step, "train", {**values, "steps_per_sec": progress.rate(at_step)})
        progress.update(at_step, values)

    stopped_by = None
    sharding.wait_for_all_processes("train_loop")  # every process compiled: meet first here
    try:
        with _StopSignals() as stop:
            loop_start = time.time()
            side_time = 0.0  # evaluation and checkpoint saves, excluded from steps_per_sec
            pending = None  # (step, metrics) of the previous update, fetched one step later
            while step < total_steps:
                batch = sharding.shard_batch(next(train_iter), mesh, spatial_axis)
                if check_drift is not None and step == first_step:
                    guard_drift(step, batch["image"])  # the state we start from
                state, metrics = compiled(state, batch)
                step += 1
                if pending is not None:
                    log(pending)
                pending = (step, metrics)
                progress.advance()
                if check_drift is not None and step % drift_every == 0:
                    log(pending)  # a non-finite state stops here, before the drift check
                    pending = None
                    guard_drift(step, batch["image"])
                if stop.requested or (save_every and step % save_every == 0):
                    if pending is not None:
                        log(pending)
                        pending = None
                    side_start = time.time()
                    save(step)
                    side_time += time.time() - side_start
                if stop.requested:
                    checkpointer.wait()
                    stopped_by = stop.received
                    break
                if eval_every and step % eval_every == 0 and step < total_steps:
                    side_start = time.time()
                    result = evaluate(eval_fn, state, config, mesh, spatial_axis)
                    writer.write(step, "test", result)
                    side_time += time.time() - side_start
            if pending is not None:
                log(pending)
            train_time = time.time() - loop_start - side_time
            if stopped_by is None:
                save(step)
                checkpointer.wait()
            elif jax.process_index() == 0:
                progress.write(
                    f"{stopped_by}: saved checkpoint at step {step} in {checkpointer.directory}; "
                    "rerun the same command to resume."
                )
    finally:
        progress.close()
        checkpointer.close()  # finishes an in-flight save of a good state
        if stopped_by is not None or sys.exc_info()[0] is not None:
            writer.close()

    summary: dict[str, Any] = {
        "config": config.get("name", ""),
        "model": config.model,
        "dataset": config.dataset,
        "num_params": num_params,
        "steps": step,
        "total_steps": total_steps,
        "train_loss": last["loss"],
        "train_accuracy": last["accuracy"],
        "resumed_from_step": resumed_from,
        "skipped_corrupted_checkpoints": skipped,
        "preempted": stopped_by is not None,
        "stopped_by": stopped_by,
        "memory_temp_bytes": temp_bytes,
        "memory_line": memory_line(temp_bytes) if temp_bytes else "",
        "steps_per_sec": (step - first_step) / train_time if train_time > 0 else 0.0,
    }
    if stopped_by is None:
        result = evaluate(eval_fn, state, config, mesh, spatial_axis)
        writer.write(step, "test", result)
        summary["test_loss"] = float(result["loss"])
        summary["test_accuracy"] = float(result["accuracy"])
        summary.update({k: v for k, v in result.items() if k not in ("loss", "accuracy")})
    writer.close()
    summary["wall_time_s"] = time.time() - start_time
    if jax.process_index() == 0:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _label_shape(info: data_lib.DatasetInfo) -> tuple[int, ...]:
    """Per-example label shape: () for classification, (T, H, W) for segmentation."""
    return tuple(info.image_shape[:-1]) if info.task == "segmentation" else ()


def train_step_memory(
    config: ml_collections.ConfigDict, modes: tuple[str, ...] = ("reversible", "store", "remat")
) -> dict[str, int]:
    """{mode: compiled temp bytes of the trainer's own step} for ``config``'s model and batch.

    The step is ``make_train_step`` (optimizer update, state donated) built with
    ``backprop=mode``; nothing is trained and no data is read (``revjax.memory``).
    """
    info = data_lib.dataset_info(config.dataset, **data_lib.dataset_kwargs(config))
    steps_per_epoch = max(info.num_train // config.global_batch_size, 1)
    tx, schedule = optim.make_optimizer(config, steps_per_epoch, steps_per_epoch)
    batch = abstract_batch(config.global_batch_size, info.image_shape, _label_shape(info))
    out = {}
    for mode in modes:
        model = build_model(config, info, backprop=mode)
        state = abstract_state(model, tx, config.seed, info.image_shape)
        step = make_train_step(model, tx, schedule, config.get("weight_smoothness", 0.0))
        out[mode] = jitted_step_memory(step, state, batch, donate_argnums=0)["temp"]
    return out

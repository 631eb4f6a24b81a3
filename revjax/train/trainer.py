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
``NonFiniteLossError`` naming the step (the bad state is never checkpointed); SIGTERM saves a
checkpoint at the next step boundary and returns (``summary["preempted"]``); a restart in the
same workdir resumes from the latest readable checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import signal
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
from revjax.train import checkpointing, memory, optim, sharding

__all__ = [
    "NonFiniteLossError",
    "build_model",
    "create_state",
    "cross_entropy_metrics",
    "make_train_step",
    "make_eval_step",
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
    ||K_{j+1} - K_j||_F^2 over consecutive blocks (Chang et al. 2018,
    arXiv:1709.03698).
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


def make_eval_step(model) -> Callable[[dict, dict], dict]:
    """``(state, batch with "weight") -> {"loss_sum", "correct", "count"}`` in eval mode."""

    def eval_step(state, batch):
        variables = {"params": state["params"], **state.get("model_state", {})}
        logits = model.apply(variables, batch["image"], train=False)
        ce_sum, correct, count = cross_entropy_metrics(logits, batch["label"], batch["weight"])
        return {"loss_sum": ce_sum, "correct": correct, "count": count}

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


def _pad_batch(batch: dict, size: int) -> dict:
    """Pads a (possibly short) eval batch to ``size`` examples; adds "weight" (1 real, 0 pad)."""
    n = len(batch["label"])
    out = {"weight": np.concatenate([np.ones(n, np.float32), np.zeros(size - n, np.float32)])}
    for key in ("image", "label"):
        value = np.asarray(batch[key])
        pad = np.zeros((size - n, *value.shape[1:]), value.dtype)
        out[key] = np.concatenate([value, pad]) if size > n else value
    return out


class _MetricsWriter:
    """Appends JSON lines {"step", "split", ...} to ``<workdir>/metrics.jsonl``."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, step: int, split: str, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, "time": time.time()}
        record.update({k: float(v) for k, v in values.items()})
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class _PreemptionFlag:
    """SIGTERM handler that only sets a flag (the loop saves at the next step boundary)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


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
    """Mean loss and accuracy over the whole test split (last batch padded and masked)."""
    batch_size = int(config.get("eval_batch_size", 0) or config.global_batch_size)
    ds = data_lib.make_dataset(
        config.dataset,
        "test",
        global_batch_size=batch_size,
        seed=config.seed,
        train=False,
        drop_remainder=False,
        data_dir=config.get("data_dir"),
        **dict(config.get("dataset_options", {}) or {}),
    )
    local = batch_size // jax.process_count()
    totals = np.zeros(3)
    for batch in ds:
        out = eval_fn(state, sharding.shard_batch(_pad_batch(batch, local), mesh, spatial_axis))
        totals += np.array([out["loss_sum"], out["correct"], out["count"]], dtype=np.float64)
    loss_sum, correct, count = totals
    return {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1)}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints) and evaluates.

    Args:
      config: experiment config (see ``revjax/configs/default.py`` for every field).
      workdir: output directory: ``checkpoints/``, ``metrics.jsonl``, ``config.json``,
        ``summary.json``.

    Returns:
      the summary dict written to ``summary.json`` (test_accuracy, steps, memory, ...).

    Raises:
      ValueError: unknown dataset/model, batch not divisible by devices, bad config.
      PermissionError: unwritable workdir.
      NonFiniteLossError: the loss or parameters became non-finite.
      checkpointing.IncompatibleCheckpointError: the workdir's checkpoint has another model.
    """
    start_time = time.time()
    _validate(config)
    workdir = prepare_workdir(workdir)
    dataset_options = dict(config.get("dataset_options", {}) or {})
    info = data_lib.dataset_info(config.dataset, **dataset_options)
    mesh_config = dict(config.get("mesh", {}) or {})
    mesh = sharding.make_mesh(mesh_config.get("data", -1), mesh_config.get("space", 1))
    data_devices = mesh.shape[sharding.DATA_AXIS]
    sharding.check_batch_divisible(config.global_batch_size, data_devices)
    eval_batch_size = int(config.get("eval_batch_size", 0) or config.global_batch_size)
    sharding.check_batch_divisible(eval_batch_size, data_devices)
    spatial_axis = mesh_config.get("spatial_axis", 1) if mesh.shape["space"] > 1 else None
    if spatial_axis is not None:
        sharding.check_spatial_divisible(
            (config.global_batch_size, *info.image_shape),
            mesh,
            spatial_axis,
            mesh_config.get("spatial_multiple", 1),
        )

    model = build_model(config, info)
    steps_per_epoch = max(info.num_train // config.global_batch_size, 1)
    if config.get("num_steps", 0) > 0:
        total_steps = int(config.num_steps)
    else:
        total_steps = int(round(config.num_epochs * steps_per_epoch))
    tx, schedule = optim.make_optimizer(config, steps_per_epoch, total_steps)
    train_step = make_train_step(model, tx, schedule, config.get("weight_smoothness", 0.0))
    replicated = sharding.replicated_sharding(mesh)
    label_shape = _label_shape(info)
    batch_shardings = {
        "image": sharding.batch_sharding(mesh, 1 + len(info.image_shape), spatial_axis),
        "label": sharding.batch_sharding(
            mesh, 1 + len(label_shape), spatial_axis if label_shape else None
        ),
    }

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
    train_ds = data_lib.make_dataset(
        config.dataset,
        "train",
        global_batch_size=config.global_batch_size,
        seed=config.seed,
        train=True,
        data_dir=config.get("data_dir"),
        **dataset_options,
    )
    train_iter = iter(train_ds)
    restored = checkpointer.restore_latest(state, config_dict)
    resumed_from, skipped = None, []
    if restored is not None:
        state, data_state, resumed_from, skipped = restored
        train_iter.set_state(data_state)
        tqdm.write(f"Resumed from checkpoint at step {resumed_from} in {checkpointer.directory}")
        if skipped:
            tqdm.write(f"Skipped unreadable checkpoint(s) {skipped}; fell back to {resumed_from}")
    (workdir / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True))

    # Compile the step once; its memory analysis is the configured mode's figure.
    abstract_batch = {
        "image": jax.ShapeDtypeStruct(
            (config.global_batch_size, *info.image_shape),
            jnp.float32,
            sharding=batch_shardings["image"],
        ),
        "label": jax.ShapeDtypeStruct(
            (config.global_batch_size, *label_shape), jnp.int32, sharding=batch_shardings["label"]
        ),
    }
    jitted = jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_shardings),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
    compiled = jitted.lower(state, abstract_batch).compile()
    temp_bytes = {}
    if config.get("memory_report", True):
        own_mode = getattr(model, "backprop", None)
        modes = tuple(config.get("memory_modes", ("reversible", "store")))
        for mode in modes if has_backprop(model) else ():
            if mode == own_mode:
                temp_bytes[mode] = memory.compiled_temp_bytes(compiled)
            else:
                other = build_model(config, info, backprop=mode)
                temp_bytes[mode] = memory.train_step_temp_bytes(
                    make_train_step(other, tx, schedule, config.get("weight_smoothness", 0.0)),
                    state,
                    abstract_batch,
                )
        if not temp_bytes:
            temp_bytes["model"] = memory.compiled_temp_bytes(compiled)
    eval_fn = jax.jit(make_eval_step(model))

    writer = _MetricsWriter(workdir / "metrics.jsonl", jax.process_index() == 0)
    log_every = max(int(config.get("log_every_steps", 50)), 1)
    save_every = int(config.get("checkpoint_every_steps", 0) or 0)
    eval_every = int(config.get("eval_every_steps", 0) or 0)
    step = int(jax.device_get(state["step"]))
    first_step = step
    last = {"loss": float("nan"), "accuracy": float("nan")}
    preempted = False

    def check(metrics_step: int, metrics: dict) -> dict:
        values = jax.device_get(metrics)
        if not bool(values["finite"]):
            checkpointer.wait()
            good = checkpointer.latest_step()
            where = (
                f"the last good checkpoint is step {good} in {checkpointer.directory}"
                if good is not None
                else "no checkpoint was written yet"
            )
            raise NonFiniteLossError(
                f"Non-finite loss or parameters at step {metrics_step} "
                f"(loss={float(values['loss'])}, grad_norm={float(values['grad_norm'])}, "
                f"learning_rate={float(values['learning_rate'])}); stopped. The non-finite "
                f"state was not saved; {where}. Lower optimizer.learning_rate or set "
                "optimizer.grad_clip_norm."
            )
        return {k: float(v) for k, v in values.items() if k != "finite"}

    def save(at_step: int) -> None:
        checkpointer.save(at_step, state, train_iter.get_state(), config_dict)

    pending = None  # (step, metrics) of the previous update, fetched one step later
    bar = tqdm(
        total=total_steps,
        initial=step,
        desc=config.get("name", config.model),
        unit="step",
        disable=not config.get("progress_bar", True),
        dynamic_ncols=True,
        mininterval=0.5,
    )
    with _PreemptionFlag() as preemption:
        loop_start = time.time()
        side_time = 0.0  # evaluation and checkpoint saves, excluded from steps_per_sec
        while step < total_steps:
            batch = sharding.shard_batch(next(train_iter), mesh, spatial_axis)
            state, metrics = compiled(state, batch)
            step += 1
            if pending is not None:
                _log_metrics(pending, check, writer, bar, last, log_every)
            pending = (step, metrics)
            bar.update(1)
            if preemption.requested or (save_every and step % save_every == 0):
                _log_metrics(pending, check, writer, bar, last, log_every)
                pending = None
                side_start = time.time()
                save(step)
                side_time += time.time() - side_start
            if preemption.requested:
                checkpointer.wait()
                tqdm.write(f"SIGTERM: saved checkpoint at step {step}; exiting for preemption.")
                preempted = True
                break
            if eval_every and step % eval_every == 0 and step < total_steps:
                side_start = time.time()
                writer.write(step, "test", evaluate(eval_fn, state, config, mesh, spatial_axis))
                side_time += time.time() - side_start
        if pending is not None:
            _log_metrics(pending, check, writer, bar, last, log_every)
        train_time = time.time() - loop_start - side_time
    bar.close()

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
        "preempted": preempted,
        "memory_temp_bytes": temp_bytes,
        "memory_line": memory_line(temp_bytes) if temp_bytes else "",
        "steps_per_sec": (step - first_step) / train_time if train_time > 0 else 0.0,
    }
    if not preempted:
        save(step)
        checkpointer.wait()
        result = evaluate(eval_fn, state, config, mesh, spatial_axis)
        writer.write(step, "test", result)
        summary["test_loss"] = float(result["loss"])
        summary["test_accuracy"] = float(result["accuracy"])
    checkpointer.close()
    summary["wall_time_s"] = time.time() - start_time
    if jax.process_index() == 0:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _label_shape(info: data_lib.DatasetInfo) -> tuple[int, ...]:
    """Per-example label shape: () for classification, (T, H, W) for segmentation."""
    return tuple(info.image_shape[:-1]) if info.task == "segmentation" else ()


def _log_metrics(pending, check, writer, bar, last, log_every) -> None:
    step, metrics = pending
    values = check(step, metrics)
    last.update(loss=values["loss"], accuracy=values["accuracy"])
    if step % log_every == 0 or step == 1:
        rate = bar.format_dict.get("rate") or 0.0
        writer.write(step, "train", {**values, "steps_per_sec": rate})
        bar.set_postfix(loss=f"{values['loss']:.4f}", acc=f"{values['accuracy']:.3f}")

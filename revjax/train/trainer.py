"""Training and evaluation for every registry model, dataset, task and backprop mode.

``train_and_evaluate(config, workdir)`` runs one experiment end to end, as a sequence of named
parts::

    dataset_info, task_of -> _make_run_mesh -> _open_data (train) -> build_model
    -> make_optimizer, make_train_step -> _init_state (jit, out_shardings)
    -> _open_run (checkpointer, restore latest: state, rng, input position; metrics.jsonl)
    -> _compile_train_step -> _step_memory -> _train_loop: shard batch -> compiled step
    (donated state) -> metrics.jsonl / progress / checkpoint / eval / drift guard
    -> final _evaluate -> _summarize -> summary.json

The parts other modules and experiments use are public (``__all__``); the rest are private
to this module.

One ``train_step`` serves every model: loss = mean over the label entries of the task's loss
(``config.task``, a name in ``revjax.tasks``; "" takes the dataset's own task: softmax cross-entropy
for classification labels (B,), segmentation labels (B, T, H, W) and next-token labels (B, T)) plus
the named regularisers of ``config.regularisers`` (e.g. Chang et al.'s ``weight_smoothness``,
registered by its family). The trainer imports no family or paper module. Every non-"params"
variable collection (BatchNorm statistics, spectral-norm power iterates) is mutable and carried in
the state; the backward strategy is the model's ``backprop`` field, so the same step trains
"reversible", "store" and "remat" variants. Every config field is read directly
(``config.<field>``): ``revjax/configs/default.py`` declares each default once.

The train state is a plain dict pytree::

    step:         () int32           updates done
    params:       model parameters
    opt_state:    optax state
    rng:          (2,) uint32        base key; step s uses fold_in(rng, s)
    model_state:  the model's other variable collections, updated by every train step
                  (e.g. {"batch_stats": ...}, {"spectral_stats": ...}); absent if none

Failure behaviour: a non-finite loss or parameter stops the run with ``NonFiniteLossError`` naming
the step, and a reconstruction error of the reversible body above ``config.drift_rtol`` (measured at
the first step and every ``config.drift_check_every`` steps with
``revjax.models.model_reconstruction_error``) with ``ReconstructionDriftError``; the bad state is
never checkpointed. SIGTERM and SIGINT (Ctrl-C, a Jupyter interrupt) save a checkpoint at the next
step boundary and return (``summary["stopped_by"]``). A restart in the same workdir resumes from the
latest readable checkpoint if its run-defining config equals the current one (only
``num_steps``/``num_epochs`` may grow); ``metrics.jsonl`` is cut back to the resumed step so no step
is logged twice. ``EXIT_*`` are the command line's exit statuses."""

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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from revjax import configs, models, tasks
from revjax import data as data_lib
from revjax.memory import compiled_memory, jitted_step_memory
from revjax.train import checkpointing, optim, sharding
from revjax.train.inference import write_model_info

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_PREEMPTED",
    "EXIT_RECONSTRUCTION_DRIFT",
    "NonFiniteLossError",
    "ReconstructionDriftError",
    "build_model",
    "create_state",
    "make_train_step",
    "make_eval_step",
    "task_of",
    "train_and_evaluate",
    "train_step_memory",
    # Named parts that experiments and the checkpointer build on.
    "abstract_state",
    "abstract_batch",
    "batch_shardings",
    "objective",
    "run_length",
    "steps_per_epoch",
]

logger = logging.getLogger(__name__)
PyTree = Any


class NonFiniteLossError(FloatingPointError):
    """The loss or the parameters became NaN/inf; the run was stopped."""


# ----------------------------------------------------------------------------- model and state


def _model_fields(model_or_factory: Any) -> set[str]:
    """Dataclass field names of a linen module (its configurable attributes)."""
    return {f.name for f in dataclasses.fields(model_or_factory)}


def build_model(config: ml_collections.ConfigDict, info: data_lib.DatasetInfo, **overrides):
    """``models.create(config.model, **config.model_kwargs, **overrides)``.

    ``num_classes`` is taken from the dataset unless ``model_kwargs`` sets it."""
    kwargs = {**config.model_kwargs, **overrides}
    model = models.create(config.model, **kwargs)
    if "num_classes" in _model_fields(model) and "num_classes" not in kwargs:
        model = models.create(config.model, **kwargs, num_classes=info.num_classes)
    return model


def create_state(model, tx: optax.GradientTransformation, seed: int, image_shape) -> dict:
    """Initial train state (see module docstring) for inputs of shape (1, *image_shape)."""
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
    variables = model.init(init_rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
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

    Shapes are per example: image (*S, C), label () for classification or (*S,) per voxel."""
    label_axis = spatial_axis if label_shape else None
    return {
        "image": sharding.batch_sharding(mesh, 1 + len(image_shape), spatial_axis),
        "label": sharding.batch_sharding(mesh, 1 + len(label_shape), label_axis),
    }


def abstract_batch(global_batch_size: int, image_shape, label_shape, shardings=None) -> dict:
    """{"image": (B, *image_shape) float32, "label": (B, *label_shape) int32} as
    ShapeDtypeStructs, placed by ``shardings`` (``batch_shardings``) when given."""
    shardings = shardings or {"image": None, "label": None}
    shapes = {"image": (image_shape, jnp.float32), "label": (label_shape, jnp.int32)}
    return {
        k: jax.ShapeDtypeStruct((global_batch_size, *shape), dtype, sharding=shardings[k])
        for k, (shape, dtype) in shapes.items()
    }


# ----------------------------------------------------------------------------- steps


def task_of(config: ml_collections.ConfigDict, info: data_lib.DatasetInfo) -> tasks.Task:
    """The run's task: ``config.task`` by name, or the dataset's own (``info.task``) if ""."""
    return tasks.get_task(config.task or info.task)


def _all_finite(tree: PyTree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def objective(model, task: tasks.Task) -> Callable[..., tuple[jax.Array, tuple]]:
    """``(params, model_state, images, labels, rng) -> (mean loss, (logits, model_state))``:
    ``revjax.tasks.training_loss`` of ``model`` with the task's loss (a ``functools.partial``;
    ``revjax.memory.model_loss`` differentiates the same loss function)."""
    return functools.partial(tasks.training_loss, model, task.loss)


def make_train_step(
    model,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    task: tasks.Task | str = "classification",
    regularise: Callable[[PyTree], jax.Array] | None = None,
) -> Callable[[dict, dict], tuple[dict, dict]]:
    """The (unjitted) update ``(state, batch) -> (state, metrics)`` for any registry model.

    loss(theta) = mean over label entries of task.loss(f_theta(x), y) + R(theta), R the
    regulariser (``revjax.tasks.regulariser(config.regularisers)``, None: 0); gradients come
    from ``jax.grad`` and so use the model's own backprop mode. ``metrics``: loss (without R),
    total_loss, the task's per-step metrics (e.g. accuracy), grad_norm, learning_rate, finite."""
    task = tasks.get_task(task) if isinstance(task, str) else task
    loss_of = objective(model, task)

    def loss_fn(params, model_state, batch, rng):
        loss, (logits, model_state) = loss_of(
            params, model_state, batch["image"], batch["label"], rng
        )
        total = loss if regularise is None else loss + regularise(params)
        return total, (loss, logits, model_state)

    def train_step(state, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (total, (loss, logits, model_state)), grads = grad_fn(
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
            **task.step_metrics(logits, batch["label"]),
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": schedule(state["step"]),
            "finite": jnp.isfinite(total) & _all_finite(params),
        }
        return new_state, metrics

    return train_step


def make_eval_step(
    model, task: tasks.Task | str = "classification"
) -> Callable[[dict, dict], dict]:
    """``(state, batch with "weight") -> task.eval_sums``: the loss and metric sums of one
    padded eval batch (``_evaluate`` adds them over the test split and reports)."""
    task = tasks.get_task(task) if isinstance(task, str) else task

    def eval_step(state, batch):
        variables = {"params": state["params"], **state.get("model_state", {})}
        logits = model.apply(variables, batch["image"], train=False)
        return task.eval_sums(logits, batch["label"], batch["weight"])

    return eval_step


# ----------------------------------------------------------------------------- helpers


def _prepare_workdir(workdir: str | os.PathLike) -> Path:
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
    """Clear errors for a bad config, before anything is traced or written."""
    for key in ("model", "dataset", "global_batch_size", "optimizer"):
        if key not in config:
            raise ValueError(f"config is missing the required field {key!r}")
    if "weight_smoothness" in config:
        raise ValueError(
            "config.weight_smoothness is now config.regularisers.weight_smoothness (regularisers "
            f"are chosen by name; valid: {', '.join(tasks.regulariser_names())})"
        )
    if config.num_steps <= 0 and config.num_epochs <= 0:
        raise ValueError("set config.num_steps > 0 or config.num_epochs > 0")
    if config.drift_check_every < 0:
        raise ValueError("config.drift_check_every must be >= 0 (0 disables the drift guard)")
    if not config.drift_rtol > 0:
        raise ValueError(f"config.drift_rtol must be > 0, got {config.drift_rtol}")
    if config.fake_examples < 0:
        raise ValueError("config.fake_examples must be >= 0 (0 reads the real data)")
    if config.task:
        tasks.get_task(config.task)  # ValueError listing the valid tasks
    unknown = sorted(set(config.regularisers) - set(tasks.regulariser_names()))
    if unknown:
        raise ValueError(
            f"unknown regulariser(s) {unknown} in config.regularisers; valid regularisers: "
            f"{', '.join(tasks.regulariser_names())}"
        )


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
    a record whose (split, step, metric names) is already in the file is not written again."""

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
        """Keeps the records with ``record["step"] <= step`` (a fresh start passes ``step=0``)."""
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

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
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


# Train metrics not shown on the progress line (the loss and the task's metrics are).
_NOT_SHOWN = ("loss", "total_loss", "grad_norm", "learning_rate", "steps_per_sec")


class _Progress:
    """A tqdm bar when ``bar`` (stdout is a terminal), else one plain line every ``every`` steps:
    ``step S/N loss L accuracy A steps/s R lr E`` (the task's per-step metrics after the loss)."""

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
        """Called with each step's fetched metrics (loss and the task's per-step metrics)."""
        shown = {"loss": values["loss"]}
        shown.update({k: v for k, v in values.items() if k not in _NOT_SHOWN})
        if self.use_bar:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in shown.items()})
            return
        if step % self.every == 0 or step == self.total:
            parts = " ".join(f"{k} {v:.4f}" for k, v in shown.items())
            print(
                f"step {step}/{self.total} {parts} steps/s {self.rate(step):.2f} "
                f"lr {values['learning_rate']:.4g}",
                flush=True,
            )
            self._mark = (step, time.time())

    def write(self, line: str) -> None:
        if self.use_bar:
            tqdm.write(line)
        else:
            print(line, flush=True)


def _interactive() -> bool:
    """Whether a progress bar can redraw: stdout is a terminal, or a Jupyter kernel (where
    ``tqdm.auto`` draws a widget)."""
    if sys.stdout.isatty():
        return True
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None and hasattr(shell, "get_ipython") else None
    return ip is not None and "ipykernel" in sys.modules


def _memory_line(temp_bytes: Mapping[str, int]) -> str:
    """One line comparing compiled train-step temp bytes across backprop modes."""
    parts = [f"{mode} {b / 2**20:.2f} MiB" for mode, b in temp_bytes.items()]
    line = "train-step memory (compiled temp bytes): " + ", ".join(parts)
    if "reversible" in temp_bytes and "store" in temp_bytes and temp_bytes["reversible"] > 0:
        line += f" -> store/reversible = {temp_bytes['store'] / temp_bytes['reversible']:.2f}x"
    return line


# ----------------------------------------------------------------------------- main loop


def _eval_batch_size(config: ml_collections.ConfigDict) -> int:
    """``config.eval_batch_size``, or the training batch when it is 0."""
    return int(config.eval_batch_size or config.global_batch_size)


def _evaluate(eval_fn, state, config, task: tasks.Task, mesh, spatial_axis=None) -> dict:
    """The task's report over the whole test split (last batch padded and masked): the mean
    loss and each metric (accuracy; segmentation also ``iou_<k>`` per class present and
    ``mean_iou``; next_token ``bits_per_byte``)."""
    batch_size = _eval_batch_size(config)
    ds = _open_data(config, "test", batch_size, train=False, drop_remainder=False)
    local = batch_size // jax.process_count()
    totals = None
    for batch in ds:
        out = eval_fn(state, sharding.shard_batch(_pad_batch(batch, local), mesh, spatial_axis))
        out = jax.tree.map(lambda x: np.asarray(x, np.float64), jax.device_get(out))
        totals = out if totals is None else jax.tree.map(np.add, totals, out)
    return task.eval_report(totals)


def _drift_checker(model) -> Callable[[dict, jax.Array], float | None] | None:
    """``(state, images) -> worst relative reconstruction error`` of the model's reversible
    body, from ``revjax.models.model_reconstruction_error`` (None when that function is absent).

    The error is max over the body of ||x - f^{-1}(f(x))|| / ||x||, so it stays ~1e-7 in float32
    while the body is well conditioned and grows when training makes the inverse unstable (Chang et
    al. 2018, arXiv:1709.03698, Sec. 3; Gomez et al. 2017, arXiv:1707.04585, Sec. 4.1)."""
    measure = getattr(models, "model_reconstruction_error", None)
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


# Config fields that may differ between the processes of one job (each host's own data copy,
# its terminal); every other field, and the workdir, must be equal on all processes.
PROCESS_LOCAL_FIELDS = ("data_dir", "progress_bar")


def _check_processes_agree(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
    """Stops a multi-process job whose processes were started with different configs: compares the
    flattened config (all fields but ``PROCESS_LOCAL_FIELDS``) and the absolute workdir across
    processes through the distributed key-value store (`sharding.check_same_across_processes`)
    before anything is compiled; a ValueError names each differing field and every process's value.
    A no-op for one process."""
    flat = checkpointing.flat_config(json.loads(config.to_json()))
    fields = {k: v for k, v in flat.items() if k.split(".")[0] not in PROCESS_LOCAL_FIELDS}
    fields["workdir"] = str(Path(workdir).absolute())
    sharding.check_same_across_processes(fields, "run config")


def steps_per_epoch(config: ml_collections.ConfigDict, info: data_lib.DatasetInfo) -> int:
    return max(info.num_train // config.global_batch_size, 1)


def run_length(config: ml_collections.ConfigDict, info: data_lib.DatasetInfo) -> int:
    """Train steps of the run: ``num_steps`` if > 0, else ``num_epochs`` epochs."""
    if config.num_steps > 0:
        return int(config.num_steps)
    return int(round(config.num_epochs * steps_per_epoch(config, info)))


def _make_run_mesh(config: ml_collections.ConfigDict, info: data_lib.DatasetInfo):
    """(mesh, spatial_axis): the ("data", "space") mesh of ``config.mesh``, after checking
    that the train and eval batches (and, split over "space", the examples) divide over it;
    ``spatial_axis`` is None unless "space" > 1."""
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.space)
    data_devices = mesh.shape[sharding.DATA_AXIS]
    sharding.check_batch_divisible(config.global_batch_size, data_devices)
    sharding.check_batch_divisible(_eval_batch_size(config), data_devices)
    sharding.check_process_rows(mesh, config.global_batch_size)
    spatial_axis = config.mesh.spatial_axis if mesh.shape["space"] > 1 else None
    if spatial_axis is not None:
        shape = (config.global_batch_size, *info.image_shape)
        sharding.check_spatial_divisible(shape, mesh, spatial_axis, config.mesh.spatial_multiple)
    return mesh, spatial_axis


def _open_data(config: ml_collections.ConfigDict, split: str, batch_size: int, **kwargs):
    """``config.dataset``'s ``split`` as a grain dataset: the shuffled, repeated training stream
    with ``train=True``, one ordered pass with ``train=False``."""
    return data_lib.make_dataset(
        config.dataset,
        split,
        global_batch_size=batch_size,
        seed=config.seed,
        **kwargs,
        **data_lib.dataset_kwargs(config),
    )


def _init_state(model, tx, config, info, mesh) -> tuple[dict, PyTree]:
    """(state, state shardings): ``create_state`` jitted with its output placed on ``mesh``
    (replicated, or split over "data" with ``config.fsdp``)."""
    make_state = functools.partial(create_state, model, tx, config.seed, info.image_shape)
    shardings = sharding.state_shardings(mesh, jax.eval_shape(make_state), fsdp=config.fsdp)
    return jax.jit(make_state, out_shardings=shardings)(), shardings


@dataclasses.dataclass
class _Run:
    """What the training loop shares with the rest of a run: its files and where it stands."""

    config: ml_collections.ConfigDict
    config_dict: dict
    checkpointer: checkpointing.Checkpointer
    writer: _MetricsWriter
    train_iter: Any
    total_steps: int
    step: int = 0
    resumed_from: int | None = None
    skipped: list = dataclasses.field(default_factory=list)
    messages: list = dataclasses.field(default_factory=list)

    def where_good(self) -> str:
        """Where the last good checkpoint is (for a stop message)."""
        self.checkpointer.wait()
        good = self.checkpointer.latest_step()
        if good is None:
            return "no checkpoint was written yet"
        return f"the last good checkpoint is step {good} in {self.checkpointer.directory}"

    def save(self, step: int, state: dict) -> None:
        self.checkpointer.save(step, state, self.train_iter.get_state(), self.config_dict)


def _open_run(config, workdir: Path, state: dict, train_ds, total_steps: int) -> tuple[_Run, dict]:
    """Opens the checkpointer and the metrics log of ``workdir`` and restores the latest
    checkpoint (state, data position) if there is one; writes ``config.json`` for a run that
    trains. Returns (run, state to start from)."""
    config_dict = json.loads(config.to_json())
    checkpointer = checkpointing.Checkpointer(
        workdir / "checkpoints",
        max_to_keep=config.keep_checkpoints,
        async_save=config.async_checkpointing,
    )
    # A resumed run may change its length, unless the schedule depends on it.
    cosine = config.optimizer.schedule == "cosine"
    checkpointer.allowed_changes = () if cosine else ("num_steps", "num_epochs")
    checkpointer.force = config.force_resume
    try:
        train_iter = iter(train_ds)
        restored = checkpointer.restore_latest(state, config_dict)
        run = _Run(config, config_dict, checkpointer, None, train_iter, total_steps)
        if restored is not None:
            state = _resume(run, restored)
    except BaseException:
        checkpointer.close()
        raise
    run.step = int(jax.device_get(state["step"]))
    if run.step < total_steps or not (workdir / "config.json").exists():
        # Written only by a run that trains (or starts) under this config.
        (workdir / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True))
    run.writer = _MetricsWriter(workdir / "metrics.jsonl", jax.process_index() == 0)
    run.writer.resume_at(run.step)
    tensorboard = workdir / "tensorboard"
    if config.tensorboard and not run.writer.open_tensorboard(tensorboard, purge_step=run.step + 1):
        run.messages.append(
            "TensorBoard events off: pip install tensorboardX (metrics.jsonl is written)"
        )
    return run, state


def _resume(run: _Run, restored) -> dict:
    """Takes a restored (state, data state, step, skipped) into ``run``; returns the state."""
    state, data_state, run.resumed_from, run.skipped = restored
    run.train_iter.set_state(data_state)
    directory = run.checkpointer.directory
    run.messages.append(f"Resumed from checkpoint at step {run.resumed_from} in {directory}")
    if run.skipped:
        run.messages.append(
            f"Skipped unreadable checkpoint(s) {run.skipped}; fell back to {run.resumed_from}"
        )
    for line in run.checkpointer.forced_differences:
        run.messages.append(f"force_resume: continuing under the changed value {line}")
    if run.resumed_from > run.total_steps:
        raise ValueError(
            f"The checkpoint in {directory} is at step {run.resumed_from}, past this config's "
            f"{run.total_steps} steps; use a fresh --workdir for a shorter run."
        )
    return state


def _compile_train_step(train_step, state, state_shardings, config, info, task, mesh, spatial_axis):
    """(compiled step, its abstract batch): ``train_step`` jitted with the state donated and
    sharded, the batch rows over "data", lowered once for the config's global batch."""
    label_shape = task.label_shape(info.image_shape)
    shardings = batch_shardings(mesh, info.image_shape, label_shape, spatial_axis)
    step_batch = abstract_batch(config.global_batch_size, info.image_shape, label_shape, shardings)
    jitted = jax.jit(
        train_step,
        in_shardings=(state_shardings, shardings),
        out_shardings=(state_shardings, sharding.replicated_sharding(mesh)),
        donate_argnums=0,
    )
    return jitted.lower(state, step_batch).compile(), step_batch


def _step_memory(config, info, model, compiled, make_step, state, step_batch) -> dict[str, int]:
    """{mode: compiled temp bytes} of the train step in each of ``config.memory_modes`` the
    model accepts (the configured mode's figure from ``compiled`` itself; ``make_step(model)``
    builds the others), or {"model": bytes} for a model without a backprop mode; {} when
    ``config.memory_report`` is off."""
    if not config.memory_report:
        return {}
    temp_bytes = {}
    own_mode = getattr(model, "backprop", None)
    for mode in config.memory_modes if "backprop" in _model_fields(model) else ():
        if mode == own_mode:
            temp_bytes[mode] = compiled_memory(compiled)["temp"]
        else:
            try:
                other = build_model(config, info, backprop=mode)
            except ValueError:  # a mode the model refuses: a ResNet cannot be reversible
                continue
            temp_bytes[mode] = jitted_step_memory(make_step(other), state, step_batch)["temp"]
    return temp_bytes or {"model": compiled_memory(compiled)["temp"]}


def _fetch_metrics(step: int, metrics: dict, where_good: Callable[[], str]) -> dict:
    """The step's metrics as floats; ``NonFiniteLossError`` if the loss or the parameters
    became non-finite (naming the step and the last good checkpoint)."""
    values = jax.device_get(metrics)
    if not bool(values["finite"]):
        raise NonFiniteLossError(
            f"Non-finite loss or parameters at step {step} "
            f"(loss={float(values['loss'])}, grad_norm={float(values['grad_norm'])}, "
            f"learning_rate={float(values['learning_rate'])}); stopped. The non-finite "
            f"state was not saved; {where_good()}. Lower optimizer.learning_rate or set "
            "optimizer.grad_clip_norm."
        )
    return {k: float(v) for k, v in values.items() if k != "finite"}


class _LoopEnd(NamedTuple):
    state: dict
    step: int
    last: dict  # the last fetched train metrics
    stopped_by: str | None  # "SIGTERM"/"SIGINT" when a signal stopped the run
    train_time: float  # seconds in train steps (evaluation and saves excluded)
    images: Any  # the last training batch's images (None if no step ran)


def _train_loop(run: _Run, compiled, state, eval_fn, task, mesh, spatial_axis, drift) -> _LoopEnd:
    """Steps ``compiled`` from ``run.step`` to ``run.total_steps``: logs every
    ``log_every_steps`` (fetching each step's metrics one step late, so the device never
    waits), saves every ``checkpoint_every_steps``, evaluates every ``eval_every_steps``,
    guards the reconstruction drift every ``drift_check_every`` steps, and saves and stops at
    the next step boundary after SIGTERM/SIGINT (the final checkpoint otherwise)."""
    config, writer = run.config, run.writer
    log_every = max(config.log_every_steps, 1)
    save_every = config.checkpoint_every_steps
    eval_every = configs.eval_every(config.eval_every_steps, run.total_steps)  # < 0: "auto"
    drift_every = config.drift_check_every if drift is not None else 0
    step, first_step = run.step, run.step
    last: dict = {}
    bar = bool(config.progress_bar) and _interactive()
    progress = _Progress(run.total_steps, step, config.name or config.model, bar, log_every)
    for line in run.messages:
        progress.write(line)

    def log(at_step: int, metrics: dict) -> None:
        values = _fetch_metrics(at_step, metrics, run.where_good)
        last.update(values)
        if at_step % log_every == 0 or at_step == 1 or at_step == run.total_steps:
            writer.write(at_step, "train", {**values, "steps_per_sec": progress.rate(at_step)})
        progress.update(at_step, values)

    def guard(at_step: int, images) -> bool:
        """Checks the drift; False when the model has no reversible body to guard."""
        error = drift(state, images)
        if error is None:  # no reversible body (e.g. ResNet): nothing to guard
            return False
        writer.write(at_step, "train", {"reconstruction_error": error})
        if not error <= config.drift_rtol:
            raise ReconstructionDriftError(
                f"Reconstruction drift at step {at_step}: relative error {error:.3g} > drift_rtol "
                f"{config.drift_rtol:g}; stopped, the drifted state was not saved "
                f"({run.where_good()}). Remedies: a smaller step size h (model_kwargs.h), "
                "float32/float64 states, the weight-smoothness penalty "
                "(config.weight_smoothness), a lower optimizer.learning_rate."
            )
        return True

    stopped_by, images = None, None
    sharding.wait_for_all_processes("train_loop")  # every process compiled: meet first here
    try:
        with _StopSignals() as stop:
            loop_start = time.time()
            side_time = 0.0  # evaluation and checkpoint saves, excluded from steps_per_sec
            pending = None  # (step, metrics) of the previous update, fetched one step later
            while step < run.total_steps:
                batch = sharding.shard_batch(next(run.train_iter), mesh, spatial_axis)
                images = batch["image"]
                if drift_every and step == first_step and not guard(step, images):
                    drift_every = 0  # the state we start from
                state, metrics = compiled(state, batch)
                step += 1
                if pending is not None:
                    log(*pending)
                pending = (step, metrics)
                progress.bar.update(1)
                if drift_every and step % drift_every == 0:
                    log(*pending)  # a non-finite state stops here, before the drift check
                    pending = None
                    guard(step, images)
                if stop.received or (save_every and step % save_every == 0):
                    if pending is not None:
                        log(*pending)
                        pending = None
                    side_start = time.time()
                    run.save(step, state)
                    side_time += time.time() - side_start
                if stop.received:
                    run.checkpointer.wait()
                    stopped_by = stop.received
                    break
                if eval_every and step % eval_every == 0 and step < run.total_steps:
                    side_start = time.time()
                    writer.write(
                        step, "test", _evaluate(eval_fn, state, config, task, mesh, spatial_axis)
                    )
                    side_time += time.time() - side_start
            if pending is not None:
                log(*pending)
            train_time = time.time() - loop_start - side_time
            if stopped_by is None:
                run.save(step, state)
                run.checkpointer.wait()
            elif jax.process_index() == 0:
                progress.write(
                    f"{stopped_by}: saved checkpoint at step {step} in "
                    f"{run.checkpointer.directory}; rerun the same command to resume."
                )
    finally:
        progress.bar.close()
        run.checkpointer.close()  # finishes an in-flight save of a good state
        if stopped_by is not None or sys.exc_info()[0] is not None:
            writer.close()
    return _LoopEnd(state, step, last, stopped_by, train_time, images)


def _summarize(
    config, task: tasks.Task, run: _Run, end: _LoopEnd, num_params: int, temp_bytes, drift
) -> dict:
    """The ``summary.json`` dict of a finished (or signal-stopped) loop: run facts,
    ``train_<metric>`` of the last step, memory, speed and, after a finished run, the
    reconstruction error of the final state on the last batch (None without a reversible
    body or with the drift guard off)."""
    first_step = run.resumed_from or 0
    summary: dict[str, Any] = {
        "config": config.name,
        "model": config.model,
        "dataset": config.dataset,
        "task": task.name,
        "seed": config.seed,
        "global_batch_size": config.global_batch_size,
        "num_params": num_params,
        "steps": end.step,
        "total_steps": run.total_steps,
        **{f"train_{k}": v for k, v in end.last.items() if k not in _NOT_TASK_METRICS},
        "resumed_from_step": run.resumed_from,
        "skipped_corrupted_checkpoints": run.skipped,
        "preempted": end.stopped_by is not None,
        "stopped_by": end.stopped_by,
        "memory_temp_bytes": temp_bytes,
        "memory_line": _memory_line(temp_bytes) if temp_bytes else "",
        "steps_per_sec": (end.step - first_step) / end.train_time if end.train_time > 0 else 0.0,
        "reconstruction_error": None,
    }
    summary.setdefault("train_loss", float("nan"))
    if drift is not None and end.images is not None and end.stopped_by is None:
        summary["reconstruction_error"] = drift(end.state, end.images)
    return summary


# Train-step metrics that are not the task's (not repeated as train_<name> in the summary).
_NOT_TASK_METRICS = ("total_loss", "grad_norm", "learning_rate")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints) and evaluates.

    Args:
      config: experiment config (see ``revjax/configs/default.py`` for every field).
      workdir: output directory: ``checkpoints/``, ``metrics.jsonl``, ``config.json``,
        ``summary.json``.

    Returns:
      the summary dict written to ``summary.json`` (test_loss, the task's test metrics such
      as test_accuracy or mean_iou, steps, memory, ...); ``summary["stopped_by"]`` is
      "SIGTERM"/"SIGINT" (and ``preempted`` True) when a signal stopped the run after saving
      a checkpoint.

    Raises:
      ValueError: unknown dataset/model/task/regulariser, batch not divisible by devices, bad
        config, or (in a multi-process job) processes started with different configs or workdirs.
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
    _check_processes_agree(config, workdir)
    _validate(config)
    info = data_lib.dataset_info(config.dataset, **data_lib.dataset_kwargs(config))
    task = task_of(config, info)
    regularise = tasks.regulariser(config.regularisers)
    mesh, spatial_axis = _make_run_mesh(config, info)
    # A missing dataset is reported before any write.
    train_ds = _open_data(config, "train", config.global_batch_size, train=True)
    model = build_model(config, info)
    workdir = _prepare_workdir(workdir)
    if jax.process_index() == 0:  # what `revjax.train.load` needs, without the training data
        write_model_info(workdir, config, info)
    total_steps = run_length(config, info)
    tx, schedule = optim.make_optimizer(config, steps_per_epoch(config, info), total_steps)

    def step_of(m):  # the train step of `m` (also of the other backprop modes' models)
        return make_train_step(m, tx, schedule, task, regularise)

    state, state_shardings = _init_state(model, tx, config, info, mesh)
    num_params = models.count_params(state["params"])
    run, state = _open_run(config, workdir, state, train_ds, total_steps)
    compiled, step_batch = _compile_train_step(
        step_of(model), state, state_shardings, config, info, task, mesh, spatial_axis
    )
    temp_bytes = _step_memory(config, info, model, compiled, step_of, state, step_batch)
    eval_fn = jax.jit(make_eval_step(model, task))
    drift = _drift_checker(model) if config.drift_check_every > 0 else None
    end = _train_loop(run, compiled, state, eval_fn, task, mesh, spatial_axis, drift)
    summary = _summarize(config, task, run, end, num_params, temp_bytes, drift)
    if end.stopped_by is None:
        result = _evaluate(eval_fn, end.state, config, task, mesh, spatial_axis)
        run.writer.write(end.step, "test", result)
        summary.update(_test_entries(result))
    run.writer.close()
    summary["wall_time_s"] = time.time() - start_time
    if jax.process_index() == 0:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _test_entries(result: Mapping[str, float]) -> dict[str, float]:
    """Summary entries of the final evaluation: ``test_loss``, ``test_accuracy``, and every
    other metric (``mean_iou``, ``iou_<k>``, ``bits_per_byte``) under its own name."""
    prefixed = ("loss", "accuracy")
    return {(f"test_{k}" if k in prefixed else k): float(v) for k, v in result.items()}


def train_step_memory(
    config: ml_collections.ConfigDict, modes: tuple[str, ...] = ("reversible", "store", "remat")
) -> dict[str, int]:
    """{mode: compiled temp bytes of the trainer's own step} for ``config``'s model and batch.

    The step is ``make_train_step`` (the config's task and regularisers, optimizer update,
    state donated) built with ``backprop=mode``; nothing is trained and no data is read
    (``revjax.memory``)."""
    info = data_lib.dataset_info(config.dataset, **data_lib.dataset_kwargs(config))
    task = task_of(config, info)
    regularise = tasks.regulariser(config.regularisers)
    per_epoch = steps_per_epoch(config, info)
    tx, schedule = optim.make_optimizer(config, per_epoch, per_epoch)
    label_shape = task.label_shape(info.image_shape)
    batch = abstract_batch(config.global_batch_size, info.image_shape, label_shape)
    out = {}
    for mode in modes:
        model = build_model(config, info, backprop=mode)
        state = abstract_state(model, tx, config.seed, info.image_shape)
        step = make_train_step(model, tx, schedule, task, regularise)
        out[mode] = jitted_step_memory(step, state, batch, donate_argnums=0)["temp"]
    return out

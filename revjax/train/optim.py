"""Optimizers and learning-rate schedules of the papers, as optax transformations.

``make_optimizer(config, steps_per_epoch)`` reads ``config.optimizer`` (a ConfigDict)::

    name:            "sgd" (momentum) | "adam" | "adamw"
    learning_rate:   base rate eta_0
    momentum, nesterov:            SGD only
    b1, b2, eps:                   Adam and AdamW
    weight_decay:    lambda on conv/dense *kernels* only (biases, BN scales/offsets
                     untouched). sgd/adam: L2, adds lambda * w to the gradient, as in RevNet
                     (Gomez et al. 2017, arXiv:1707.04585, Sec. 5); adamw: decoupled,
                     w <- w - eta(t) * (adam_update + lambda * w) (Loshchilov & Hutter 2019,
                     arXiv:1711.05101)
    schedule:        "constant" | "piecewise" | "halving" | "cosine"
    boundaries_epochs, decay_factor:   piecewise: eta = eta_0 * decay_factor^k after the
                     k-th boundary (RevNet/Hamiltonian: 0.1 at fixed epochs);
                     ``boundaries_steps`` (non-empty) gives the boundaries in steps instead
    halve_every_epochs:                halving: eta = eta_0 * 0.5^floor(epoch / N)
                     (LeanResNet: Adam, 0.01, halved every 60 epochs; Ephrath et al. 2019,
                     arXiv:1805.07821, Sec. 4)
    warmup_steps:    W > 0 multiplies the schedule by a linear warm-up,
                     eta(t) = schedule(t) * min(1, (t + 1) / W); the schedule keeps its own
                     (absolute) step boundaries
    scalar_lr_factor: f (default 1) multiplies the learning rate of every non-kernel leaf
                     (biases, scalar multipliers, see ``is_kernel``) by f. Fixup's recipe uses
                     f = 0.1: its reference training script gives the scalar biases and
                     multipliers a tenth of the base rate (Zhang, Dauphin, Ma 2019,
                     arXiv:1901.09321; github.com/hongyi-zhang/Fixup, cifar/cifar_train.py)
    grad_clip_norm:  > 0 clips the global gradient norm first
    accumulate_steps: k > 1 accumulates (averages) the gradients of k consecutive batches
                     and applies one update every k train steps (``optax.MultiSteps``); the
                     schedule then counts updates, t = train step // k

The update is ``chain(clip?, add_decayed_weights(mask=kernels)?, sgd|adam(schedule),
scale_non_kernels?)`` or ``chain(clip?, adamw(schedule, mask=kernels), scale_non_kernels?)``,
wrapped in ``MultiSteps`` when k > 1.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import optax

__all__ = [
    "SCHEDULES",
    "OPTIMIZERS",
    "kernel_mask",
    "scale_non_kernels",
    "make_schedule",
    "make_optimizer",
]

SCHEDULES = ("constant", "piecewise", "halving", "cosine")
OPTIMIZERS = ("sgd", "adam", "adamw")


def _leaf_name(path) -> str:
    last = path[-1]
    return str(getattr(last, "key", getattr(last, "name", last)))


# Leaf names that are *not* kernels: biases ("bias", "b", "b1", "b2a", "head_bias", "stem_b"),
# normalisation scales/offsets ("scale", "scale_raw") and running statistics.
_NOT_KERNEL = re.compile(r"(.*_)?(bias|b\d*[a-z]?|scale|scale_raw|offset|mean|var)")


def is_kernel(path) -> bool:
    """Whether a parameter path names a convolution/dense kernel (weight-decayed).

    Every registry family names biases and normalisation parameters ``bias``, ``b``,
    ``b1``/``b2``/``b1a``..., ``*_bias``, ``*_b``, ``scale``, ``scale_raw``; every other leaf
    (``kernel``, ``K``, ``W``, ``w1``, ``dw_kernel``, ``mix``, ``circ``...) is a kernel.
    """
    return _NOT_KERNEL.fullmatch(_leaf_name(path)) is None


def kernel_mask(params: Any) -> Any:
    """Pytree of bools: True on conv/dense kernels (see ``is_kernel``), else False."""
    return jax.tree_util.tree_map_with_path(lambda path, _: is_kernel(path), params)


def scale_non_kernels(factor: float) -> optax.GradientTransformation:
    """Multiplies the updates of the non-kernel leaves (biases, scales) by `factor`.

    Placed after the optimizer (sgd with momentum, adam, adamw), whose update is linear in its
    learning rate eta, it gives those leaves the rate factor * eta(t) and leaves kernels at
    eta(t): the parameter groups of Fixup's reference recipe (factor 0.1).
    """
    factor = float(factor)
    if not factor > 0.0:
        raise ValueError(f"scalar_lr_factor must be > 0, got {factor!r}")

    def non_kernels(params):
        return jax.tree.map(lambda kernel: not kernel, kernel_mask(params))

    return optax.masked(optax.scale(factor), non_kernels)


def make_schedule(opt: Any, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    """Learning-rate schedule eta(step) from ``config.optimizer`` (see module docstring)."""
    eta0 = float(opt.learning_rate)
    name = opt.get("schedule", "constant")
    if name == "constant":
        return optax.constant_schedule(eta0)
    if name == "piecewise":
        factor = float(opt.get("decay_factor", 0.1))
        boundaries = [int(s) for s in opt.get("boundaries_steps", ()) or ()]
        if not boundaries:
            epochs = opt.get("boundaries_epochs", ()) or ()
            boundaries = [int(round(e * steps_per_epoch)) for e in epochs]
        return optax.piecewise_constant_schedule(eta0, {b: factor for b in boundaries if b > 0})
    if name == "halving":
        every = int(round(float(opt.halve_every_epochs) * steps_per_epoch))
        if every < 1:
            raise ValueError(f"halve_every_epochs gives {every} steps; must be >= 1 step")
        return optax.exponential_decay(eta0, every, 0.5, staircase=True)
    if name == "cosine":
        return optax.cosine_decay_schedule(eta0, max(total_steps, 1))
    raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")


def with_warmup(schedule: optax.Schedule, warmup_steps: int) -> optax.Schedule:
    """eta(t) = schedule(t) * min(1, (t + 1) / W): linear warm-up over the first W steps."""
    if warmup_steps <= 0:
        return schedule

    def warmed(step):
        ramp = jax.numpy.minimum(1.0, (step + 1) / warmup_steps)
        return schedule(step) * ramp

    return warmed


def make_optimizer(
    config: Any, steps_per_epoch: int, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optax transformation, learning rate as a function of the *train* step).

    Args:
      config: run config with ``config.optimizer`` (module docstring).
      steps_per_epoch: train steps (batches) per epoch.
      total_steps: train steps of the run.
    """
    opt = config.optimizer
    name = opt.get("name", "sgd")
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    accumulate = int(opt.get("accumulate_steps", 1))
    if accumulate < 1:
        raise ValueError(f"optimizer.accumulate_steps must be >= 1, got {accumulate}")
    warmup = int(opt.get("warmup_steps", 0) or 0)
    if warmup < 0:
        raise ValueError(f"optimizer.warmup_steps must be >= 0, got {warmup}")
    updates_per_epoch = max(steps_per_epoch // accumulate, 1)
    schedule = with_warmup(
        make_schedule(opt, updates_per_epoch, max(total_steps // accumulate, 1)), warmup
    )
    parts = []
    clip = float(opt.get("grad_clip_norm", 0.0) or 0.0)
    if clip > 0:
        parts.append(optax.clip_by_global_norm(clip))
    wd = float(opt.get("weight_decay", 0.0) or 0.0)
    if wd > 0 and name != "adamw":
        parts.append(optax.add_decayed_weights(wd, mask=kernel_mask))
    if name == "sgd":
        parts.append(
            optax.sgd(
                schedule,
                momentum=opt.get("momentum", 0.9) or None,
                nesterov=bool(opt.get("nesterov", False)),
            )
        )
    elif name == "adamw":
        parts.append(
            optax.adamw(
                schedule,
                b1=float(opt.get("b1", 0.9)),
                b2=float(opt.get("b2", 0.999)),
                eps=float(opt.get("eps", 1e-8)),
                weight_decay=wd,
                mask=kernel_mask,
            )
        )
    else:
        parts.append(
            optax.adam(
                schedule,
                b1=float(opt.get("b1", 0.9)),
                b2=float(opt.get("b2", 0.999)),
                eps=float(opt.get("eps", 1e-8)),
            )
        )
    scalar_factor = float(opt.get("scalar_lr_factor", 1.0))
    if scalar_factor != 1.0:
        parts.append(scale_non_kernels(scalar_factor))
    tx = optax.chain(*parts)
    if accumulate == 1:
        return tx, schedule
    multi = optax.MultiSteps(tx, every_k_schedule=accumulate).gradient_transformation()
    return multi, lambda step: schedule(step // accumulate)

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
    boundaries_fractions, decay_factor: piecewise: eta = eta_0 * decay_factor^k after the
                     k-th boundary, each a fraction of the run's T updates (step round(f T)),
                     so the schedule keeps its shape when num_steps/num_epochs change
                     (RevNet/Hamiltonian: x0.1 at 1/2 and 3/4 of the run); absolute
                     boundaries win when non-empty: ``boundaries_steps``, then
                     ``boundaries_epochs``
    halve_every_fraction, halve_every_epochs: halving: eta = eta_0 * 0.5^floor(t / N), N =
                     round(f T) updates, or N epochs if ``halve_every_epochs`` > 0
                     (LeanResNet: Adam, 0.01, halved every 60 of 300 epochs, f = 0.2;
                     Ephrath et al. 2019, arXiv:1805.07821, Sec. 4)
    warmup_steps:    W > 0 multiplies the schedule by a linear warm-up,
                     eta(t) = schedule(t) * min(1, (t + 1) / W); the schedule keeps its own
                     (absolute) step boundaries
    scalar_lr_factor: f (default 1) multiplies the learning rate of every non-kernel leaf
                     (biases, scalar multipliers, see ``_is_kernel``) by f. Fixup's recipe uses
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
    "piecewise_boundaries",
    "halving_period",
    "describe_schedule",
]

SCHEDULES = ("constant", "piecewise", "halving", "cosine")
OPTIMIZERS = ("sgd", "adam", "adamw")


def _leaf_name(path) -> str:
    last = path[-1]
    return str(getattr(last, "key", getattr(last, "name", last)))


# Leaf names that are *not* kernels: biases ("bias", "b", "b1", "b2a", "head_bias", "stem_b"),
# normalisation scales/offsets ("scale", "scale_raw") and running statistics.
_NOT_KERNEL = re.compile(r"(.*_)?(bias|b\d*[a-z]?|scale|scale_raw|offset|mean|var)")


def _is_kernel(path) -> bool:
    """Whether a parameter path names a convolution/dense kernel (weight-decayed).

    Every registry family names biases and normalisation parameters ``bias``, ``b``,
    ``b1``/``b2``/``b1a``..., ``*_bias``, ``*_b``, ``scale``, ``scale_raw``; every other leaf
    (``kernel``, ``K``, ``W``, ``w1``, ``dw_kernel``, ``mix``, ``circ``...) is a kernel."""
    return _NOT_KERNEL.fullmatch(_leaf_name(path)) is None


def kernel_mask(params: Any) -> Any:
    """Pytree of bools: True on conv/dense kernels (see ``_is_kernel``), else False."""
    return jax.tree_util.tree_map_with_path(lambda path, _: _is_kernel(path), params)


def scale_non_kernels(factor: float) -> optax.GradientTransformation:
    """Multiplies the updates of the non-kernel leaves (biases, scales) by `factor`.

    Placed after the optimizer (sgd with momentum, adam, adamw), whose update is linear in its
    learning rate eta, it gives those leaves the rate factor * eta(t) and leaves kernels at
    eta(t): the parameter groups of Fixup's reference recipe (factor 0.1)."""
    factor = float(factor)
    if not factor > 0.0:
        raise ValueError(f"scalar_lr_factor must be > 0, got {factor!r}")

    def non_kernels(params):
        return jax.tree.map(lambda kernel: not kernel, kernel_mask(params))

    return optax.masked(optax.scale(factor), non_kernels)


def piecewise_boundaries(opt: Any, steps_per_epoch: int, total_steps: int) -> list[int]:
    """Update steps at which the piecewise schedule decays: ``boundaries_steps`` if
    non-empty, else ``boundaries_epochs`` x steps_per_epoch, else ``boundaries_fractions``
    x total_steps (rounded; boundaries <= 0 are dropped).

    Raises:
      ValueError: a fraction outside (0, 1].
    """
    boundaries = [int(s) for s in opt.boundaries_steps]
    if not boundaries:
        boundaries = [int(round(e * steps_per_epoch)) for e in opt.boundaries_epochs]
    if not boundaries:
        fractions = [float(f) for f in opt.boundaries_fractions]
        bad = [f for f in fractions if not 0.0 < f <= 1.0]
        if bad:
            raise ValueError(f"optimizer.boundaries_fractions must lie in (0, 1], got {bad}")
        boundaries = [int(round(f * total_steps)) for f in fractions]
    return sorted(b for b in boundaries if b > 0)


def halving_period(opt: Any, steps_per_epoch: int, total_steps: int) -> int:
    """Update steps between halvings: ``halve_every_epochs`` epochs if > 0, else
    ``halve_every_fraction`` of the run.

    Raises:
      ValueError: the period is below one step.
    """
    epochs = float(opt.halve_every_epochs)
    if epochs > 0:
        every, what = int(round(epochs * steps_per_epoch)), f"halve_every_epochs={epochs}"
    else:
        fraction = float(opt.halve_every_fraction)
        every, what = int(round(fraction * total_steps)), f"halve_every_fraction={fraction}"
    if every < 1:
        raise ValueError(f"optimizer.{what} gives {every} steps; must be >= 1 step")
    return every


def make_schedule(opt: Any, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    """Learning-rate schedule eta(step) from ``config.optimizer`` (see module docstring)."""
    eta0, name = float(opt.learning_rate), opt.schedule
    if name == "constant":
        return optax.constant_schedule(eta0)
    if name == "piecewise":
        factor = float(opt.decay_factor)
        boundaries = piecewise_boundaries(opt, steps_per_epoch, total_steps)
        return optax.piecewise_constant_schedule(eta0, {b: factor for b in boundaries})
    if name == "halving":
        every = halving_period(opt, steps_per_epoch, total_steps)
        return optax.exponential_decay(eta0, every, 0.5, staircase=True)
    if name == "cosine":
        return optax.cosine_decay_schedule(eta0, max(total_steps, 1))
    raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")


def _with_warmup(schedule: optax.Schedule, warmup_steps: int) -> optax.Schedule:
    """eta(t) = schedule(t) * min(1, (t + 1) / W): linear warm-up over the first W steps."""
    if warmup_steps <= 0:
        return schedule

    def warmed(step):
        return schedule(step) * jax.numpy.minimum(1.0, (step + 1) / warmup_steps)

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
    name = opt.name
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    accumulate = int(opt.accumulate_steps)
    if accumulate < 1:
        raise ValueError(f"optimizer.accumulate_steps must be >= 1, got {accumulate}")
    warmup = int(opt.warmup_steps)
    if warmup < 0:
        raise ValueError(f"optimizer.warmup_steps must be >= 0, got {warmup}")
    updates_per_epoch = max(steps_per_epoch // accumulate, 1)
    schedule = _with_warmup(
        make_schedule(opt, updates_per_epoch, max(total_steps // accumulate, 1)), warmup
    )
    parts = []
    clip = float(opt.grad_clip_norm)
    if clip > 0:
        parts.append(optax.clip_by_global_norm(clip))
    wd = float(opt.weight_decay)
    if wd > 0 and name != "adamw":
        parts.append(optax.add_decayed_weights(wd, mask=kernel_mask))
    if name == "sgd":
        momentum = opt.momentum or None
        parts.append(optax.sgd(schedule, momentum=momentum, nesterov=bool(opt.nesterov)))
    else:
        moments = {"b1": float(opt.b1), "b2": float(opt.b2), "eps": float(opt.eps)}
        if name == "adamw":
            parts.append(optax.adamw(schedule, **moments, weight_decay=wd, mask=kernel_mask))
        else:
            parts.append(optax.adam(schedule, **moments))
    scalar_factor = float(opt.scalar_lr_factor)
    if scalar_factor != 1.0:
        parts.append(scale_non_kernels(scalar_factor))
    tx = optax.chain(*parts)
    if accumulate == 1:
        return tx, schedule
    multi = optax.MultiSteps(tx, every_k_schedule=accumulate).gradient_transformation()
    return multi, lambda step: schedule(step // accumulate)


def describe_schedule(opt: Any, steps_per_epoch: int, total_steps: int) -> str:
    """One line: the resolved learning-rate schedule in *train* steps, e.g.
    "schedule: piecewise, lr 0.1 -> 0.01 at step 1500 -> 0.001 at step 2250; warmup 0"."""
    accumulate = max(int(opt.accumulate_steps), 1)
    per_epoch = max(steps_per_epoch // accumulate, 1)
    updates = max(total_steps // accumulate, 1)
    eta0, name = float(opt.learning_rate), opt.schedule
    text = f"schedule: {name}, lr {eta0:g}"
    if name == "piecewise":
        factor, eta = float(opt.decay_factor), eta0
        for b in piecewise_boundaries(opt, per_epoch, updates):
            eta *= factor
            text += f" -> {eta:g} at step {b * accumulate}"
    elif name == "halving":
        text += f" halved every {halving_period(opt, per_epoch, updates) * accumulate} steps"
    elif name == "cosine":
        text += f" -> 0 at step {updates * accumulate} (cosine)"
    elif name != "constant":
        raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    text += f"; warmup {int(opt.warmup_steps)}"
    if accumulate > 1:
        text += f"; {accumulate} steps per update"
    return text + f"; {total_steps} steps"

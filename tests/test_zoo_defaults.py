"""Every registered network trains correctly at its defaults: float32, at initialisation.

For each reversible model at its registered configuration and paper depth:

- the outputs are finite;
- the body's float32 reconstruction error (`model.reconstruction_error`, training mode) is
  at most 1e-4;
- the float32 gradients, reversible and stored, are each compared with the float64 gradient
  of the same parameters and inputs (the reference: `backprop="store"`, `dtype=float64`). The
  reversible gradient may be no worse than `REVERSIBLE_VS_STORE` times the stored one's error
  (floor `GRADIENT_FLOOR`): reconstruction adds round-off of its own, but a reconstruction that
  is wrong (drift, a recomputed reduction that differs) shows up as a reversible error far above
  the stored one. Comparing reversible with stored float32 gradients alone is not a check: at
  some points both are percent-level off float64 (revnet110: a ~6e-8 relative change of its
  first block's parameters, float32's rounding, moves the float64 gradient by 1.3%, so
  no float32 computation of it can be closer; docs "Numerics");
- the reversible training step really reconstructs: its compiled temporary memory is below
  the stored one (a model that ignored `backprop` would compare a mode with itself).

These tests compile at XLA's default optimisation level (`full_optimization`), as users run:
the float32 rounding of a fused reduction depends on the compiled code, and at CPU -O0 flax's
one-pass batch-norm variance once gave hamiltonian74 a reversible gradient 0.8% off float64
while the reconstruction looked fine.

An unstable default (e.g. the bias-only Hamiltonian block at h = 1, whose state grows ~10¹²
over hamiltonian218's depth) fails all three of the last checks. Inputs are small
(batch 4, 16x16) to keep the default suite fast; depth, not image size, drives the drift.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from revjax import models

BATCH = 4
SLOW = pytest.mark.slow
REVERSIBLE_VS_STORE = 4.0  # reversible error <= this x stored error (vs float64) ...
GRADIENT_FLOOR = 1e-5  # ... or this, whichever is larger (float32 round-off of a deep net)

# name -> input shape (one example) for every reversible model of the zoo. The default suite
# runs the flagship depths (and lean_hamiltonian_circulant, whose unscaled block-circulant init
# once reconstructed with error 2.6e5); the rest are `slow`.
REVERSIBLE = {
    "revnet110": (16, 16, 3),
    "hamiltonian74": (16, 16, 3),
    "hamiltonian218": (16, 16, 3),
    "lean_hamiltonian_circulant": (16, 16, 3),
    "hyperbolic2d": (16, 16, 3),
    "hyperbolic3d": (8, 16, 16, 3),
}
REVERSIBLE_SLOW = {
    "revnet_mini": (16, 16, 3),
    "revnet38": (16, 16, 3),
    "revnet164": (16, 16, 3),
    "midpoint62": (16, 16, 3),
    "leapfrog62": (16, 16, 3),
    "lean_hamiltonian": (16, 16, 3),
    "hamiltonian1202": (16, 16, 3),
}


def _labels(logits):
    key = jax.random.key(1)
    return jax.random.randint(key, logits.shape[:-1], 0, logits.shape[-1])


def _loss_fn(model, variables, x, labels):
    def loss(params):
        mutable = [k for k in variables if k != "params"] or False
        out = model.apply({**variables, "params": params}, x, train=True, mutable=mutable)
        logits = out[0] if mutable else out
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return loss


def _grad_and_temp_bytes(model, variables, x, labels):
    grad = jax.jit(jax.grad(_loss_fn(model, variables, x, labels)))
    compiled = grad.lower(variables["params"]).compile()
    return compiled(variables["params"]), compiled.memory_analysis().temp_size_in_bytes


def _relative(a, b) -> float:
    """‖a − b‖/‖b‖ over all leaves, computed in float64."""
    pairs = [(jnp.asarray(u, jnp.float64), jnp.asarray(v, jnp.float64))
             for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    num = sum(float(jnp.sum(jnp.square(u - v))) for u, v in pairs)
    den = sum(float(jnp.sum(jnp.square(v))) for _, v in pairs)
    return (num / den) ** 0.5


def _to_float64(tree):
    return jax.tree.map(
        lambda u: u.astype(jnp.float64) if jnp.issubdtype(u.dtype, jnp.floating) else u, tree
    )


def float64_gradient(name, variables, x, labels, **overrides):
    """The reference: stored-activation gradient of the float64 model at the same values."""
    model = models.create(name, dtype=jnp.float64, backprop="store", **overrides)
    variables, x = _to_float64(variables), x.astype(jnp.float64)
    return jax.jit(jax.grad(_loss_fn(model, variables, x, labels)))(variables["params"])


def gradient_errors(name, variables, x, labels, reversible, stored, **overrides):
    """(reversible, stored) float32 gradient errors relative to the float64 reference."""
    reference = float64_gradient(name, variables, x, labels, **overrides)
    return _relative(reversible, reference), _relative(stored, reference)


def check_gradient_errors(label, rev_error, store_error):
    bound = REVERSIBLE_VS_STORE * max(store_error, GRADIENT_FLOOR)
    assert rev_error <= bound, (
        f"{label}: reversible float32 gradient is {rev_error:.2e} off float64, the stored one "
        f"{store_error:.2e} (bound {bound:.2e})"
    )


def check_defaults(name, shape):
    model = models.create(name)
    x = jax.random.normal(jax.random.key(0), (BATCH, *shape), jnp.float32)
    variables = jax.jit(lambda k: model.init(k, x))(jax.random.key(2))
    logits, drift = jax.jit(
        lambda v: (model.apply(v, x), model.reconstruction_error(v, x, train=True))
    )(variables)
    assert logits.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(logits))), f"{name}: non-finite outputs at init"

    drift = float(drift)
    assert drift <= 1e-4, f"{name}: float32 reconstruction error {drift:.2e} at init"

    labels = _labels(logits)
    reversible, rev_bytes = _grad_and_temp_bytes(model, variables, x, labels)
    stored, store_bytes = _grad_and_temp_bytes(model.clone(backprop="store"), variables, x, labels)
    check_gradient_errors(name, *gradient_errors(name, variables, x, labels, reversible, stored))
    assert rev_bytes < store_bytes, (name, rev_bytes, store_bytes)


@pytest.mark.full_optimization
@pytest.mark.parametrize("name", sorted(REVERSIBLE))
def test_registered_model_is_stable_at_defaults(name):
    check_defaults(name, REVERSIBLE[name])


@SLOW
@pytest.mark.full_optimization
@pytest.mark.parametrize("name", sorted(REVERSIBLE_SLOW))
def test_deep_registered_model_is_stable_at_defaults(name):
    check_defaults(name, REVERSIBLE_SLOW[name])


def test_every_registered_reversible_model_is_checked():
    """A newly registered reversible model must be added to the lists above."""
    x = jnp.zeros((1, 16, 16, 3), jnp.float32)
    unchecked = []
    for name in models.names():
        model = models.create(name)
        if not hasattr(model, "reconstruction_error") or name in {**REVERSIBLE, **REVERSIBLE_SLOW}:
            continue
        if name in ("revnet104", "revup_imagenet"):  # ImageNet-sized: covered by family tests
            continue
        if name.startswith("revup"):  # Fixup's zero head hides the body's gradient at init:
            continue  # tests/test_revup.py checks revup110's defaults with a random head

        unchecked.append(name)
    del x
    assert not unchecked, f"reversible models without a defaults check: {unchecked}"


def test_bias_only_hamiltonian_at_unit_step_is_caught():
    """The failure this file exists for: bias-only block, h = 1, hamiltonian218's depth."""
    model = models.create("hamiltonian218", block="bias", h=1.0)
    x = jax.random.normal(jax.random.key(0), (BATCH, 16, 16, 3), jnp.float32)
    variables = jax.jit(lambda k: model.init(k, x))(jax.random.key(2))
    drift = jax.jit(lambda v: model.reconstruction_error(v, x, train=True))(variables)
    assert not float(drift) <= 1e-4


@SLOW
def test_hamiltonian1202_trains_with_drift_guard(tmp_path):
    """1202 layers, reversible, float32: 120 SGD steps of batch 16 through the trainer with
    the drift guard checking every 40 steps; no NaN, drift bounded, learns.

    Sized for a 2-core CPU: on the 32x32x3 digits canvas one step of batch 16 took 39 s
    (shared machine), so the run uses the raw 8x8 digits (scikit-learn's, 1 channel; the
    three stages run at 8², 4², 2²). Depth, not image size, drives the drift.
    """
    from revjax import configs
    from revjax.train import trainer

    steps, every = 120, 40
    config = configs.load_config("default")
    config.model = "hamiltonian1202"
    config.model_kwargs = {}
    config.dataset_options = {}
    config.global_batch_size = 16
    config.eval_batch_size = 120
    config.num_steps = steps
    config.optimizer.boundaries_steps = (90, 108)
    config.weight_smoothness = 2e-4
    config.drift_check_every = every
    config.drift_rtol = 1e-3
    config.memory_report = False
    config.checkpoint_every_steps = 0
    config.progress_bar = False
    summary = trainer.train_and_evaluate(config, tmp_path)
    assert summary["steps"] == steps
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    drift = [r["reconstruction_error"] for r in records if "reconstruction_error" in r]
    assert len(drift) == steps // every + 1 and max(drift) <= 1e-3
    losses = [r["loss"] for r in records if "loss" in r]
    assert np.all(np.isfinite(losses))
    assert summary["test_accuracy"] > 0.5

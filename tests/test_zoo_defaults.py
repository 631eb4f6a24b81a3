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
  no float32 computation of it can be closer);
- the reversible training step really reconstructs: its compiled temporary memory is below
  the stored one (a model that ignored `backprop` would compare a mode with itself).

The gradient comparison takes the median over three input batches: at initialisation a
float32 gradient can sit within round-off of a kink, where its error jumps (leapfrog62, one
batch in three: reversible 2.3e-3, stored 1.1e-6 off float64, while a 1e-6 relative change of
that input moves the float64 gradient itself by 2.0e-3; the other two: 1.3e-6 and 1.1e-6).

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
import pytest

from revjax import models, precision

BATCH = 4
SLOW = pytest.mark.slow
REVERSIBLE_VS_STORE = 4.0  # reversible error <= this x stored error (vs float64) ...
GRADIENT_FLOOR = 1e-5  # ... or this, whichever is larger (float32 round-off of a deep net)

# name -> input shape (one example) for every reversible model of the zoo. The default suite
# runs one flagship per family (revnet110 and hamiltonian74: float32 gradients once
# percent-level off; lean_hamiltonian_circulant, whose unscaled block-circulant init once
# reconstructed with error 2.6e5); the rest are `slow`.
REVERSIBLE = {
    "revnet110": (16, 16, 3),
    "hamiltonian74": (16, 16, 3),
    "lean_hamiltonian_circulant": (16, 16, 3),
    "hyperbolic2d": (16, 16, 3),
}
REVERSIBLE_SLOW = {
    "hamiltonian218": (16, 16, 3),
    "hyperbolic3d": (8, 16, 16, 3),
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


def check_gradient_errors(label, errors):
    """Median over input batches: reversible within REVERSIBLE_VS_STORE x stored (vs float64)."""
    rev = float(np.median([e["reversible"] for e in errors]))
    store = float(np.median([e["store"] for e in errors]))
    bound = REVERSIBLE_VS_STORE * max(store, GRADIENT_FLOOR)
    assert rev <= bound, (
        f"{label}: reversible float32 gradient is {rev:.2e} off float64 (median), the stored "
        f"one {store:.2e} (bound {bound:.2e}); per batch: {errors}"
    )


def check_defaults(name, shape, **overrides):
    model = models.create(name, **overrides)
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
    batches = [(x, labels)] + [
        (jax.random.normal(jax.random.key(seed), x.shape, x.dtype), labels) for seed in (3, 4)
    ]
    result = precision.gradient_errors(model, variables, batches)
    check_gradient_errors(name, result.errors)
    assert result.temp_bytes["reversible"] < result.temp_bytes["store"], (name, result.temp_bytes)


@pytest.mark.full_optimization
@pytest.mark.parametrize("name", sorted(REVERSIBLE))
def test_registered_model_is_stable_at_defaults(name):
    check_defaults(name, REVERSIBLE[name])


# Measured limit, pinned (strict: the test fails if it starts passing, so the note is revised):
# at 1202 layers the float32 reconstruction (relative error 2e-5) reaches the gradient; the
# reversible gradient is 0.84%, 0.14%, 0.63% off float64 on three batches where the stored one
# is 4e-6, 4e-4, 3.6e-3. Train such depths with store_every (below) or arithmetic="exact".
FLOAT32_LIMIT = {"hamiltonian1202"}


@SLOW
@pytest.mark.full_optimization
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            n,
            marks=pytest.mark.xfail(
                strict=True, reason="float32 reconstruction drift reaches the gradient"
            ),
        )
        if n in FLOAT32_LIMIT
        else n
        for n in sorted(REVERSIBLE_SLOW)
    ],
)
def test_deep_registered_model_is_stable_at_defaults(name):
    check_defaults(name, REVERSIBLE_SLOW[name])


@SLOW
@pytest.mark.full_optimization
def test_hamiltonian1202_storing_every_11_blocks_is_stable_at_defaults():
    """The float32 remedy for FLOAT32_LIMIT: each stage's 99-block stack stores its state every
    11 blocks (`store_every=11`), the reconstruction restarts there, and the reversible gradient
    is as close to float64 as the stored one (measured 4.7e-6 / 3.1e-3 / 1.2e-3 against stored
    4.2e-6 / 3.1e-3 / 1.2e-3, from 8.5e-3 / 3.4e-3 / 5.2e-3 without)."""
    check_defaults("hamiltonian1202", REVERSIBLE_SLOW["hamiltonian1202"], store_every=11)


def test_every_registered_reversible_model_is_checked():
    """A newly registered reversible image model (with stages) must be added to the lists
    above; models without stages (the transformers) check their gradients against float64 and
    their reconstruction in their own family test (tests/test_transformer.py)."""
    x = jnp.zeros((1, 16, 16, 3), jnp.float32)
    unchecked = []
    for name in models.names(stages=True):
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

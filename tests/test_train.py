"""Training system: steps, configs, checkpoint/resume, failure handling, memory figures.

Runs are tiny (digits with a 2-coupling ``revnet_mini``; CIFAR-10 through
``tfds.testing.mock_data``). The resume tests run ``python -m revjax.train`` in subprocesses
(float32, as a user would) and compare final parameters bit for bit.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from revjax import configs, tasks
from revjax.configs import zoo
from revjax.train import checkpointing, load, optim, sharding, trainer
from revjax.train.__main__ import resolve_config_argument

TINY = {  # --config.x=y overrides shrinking the default (digits) config
    "model_kwargs.widths": (8,),
    "model_kwargs.units": (2,),
    "global_batch_size": 16,
    "eval_batch_size": 120,
    "log_every_steps": 1,
    "progress_bar": False,
}


def tiny_config(**overrides):
    config = configs.load_config("default")
    for key, value in {**TINY, "memory_report": False, "async_checkpointing": False}.items():
        _set(config, key, value)
    for key, value in overrides.items():
        _set(config, key.replace("__", "."), value)
    return config


def _set(config, dotted, value):
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value


def cli(workdir, *extra, **overrides):
    """Command line of a tiny digits run (``python -m revjax.train``)."""
    flags = [f"--config.{k}={v}" for k, v in {**TINY, **overrides}.items()]
    return [
        sys.executable,
        "-m",
        "revjax.train",
        "--config=default",
        *flags,
        *extra,
        f"--workdir={workdir}",
    ]


def saved_steps(workdir):
    ckpt = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.exists() else []


def saved_params(workdir, step):
    restored = ocp.StandardCheckpointer().restore(
        Path(workdir) / "checkpoints" / str(step) / "state"
    )
    return restored["params"]


def wait_for(predicate, proc, timeout=120.0):
    start = time.time()
    while not predicate():
        assert proc.poll() is None, "the run ended before the event we wait for"
        assert time.time() - start < timeout, "timed out"
        time.sleep(0.01)


# ----------------------------------------------------------------------------- optimizer


def test_weight_decay_mask_selects_kernels_only():
    """mask(w) = True exactly for conv/dense kernels of every naming used by the families."""
    params = {
        "conv": {"kernel": 1, "bias": 2},
        "bn": {"scale": 3, "bias": 4},
        "step": {
            "K": 5,
            "W": 6,
            "w1": 7,
            "b1": 8,
            "b2a": 9,
            "dw_kernel": 10,
            "mix": 11,
            "conv1_kernel": 12,
            "conv1_bias": 13,
            "stem_b": 14,
            "scale_raw": 15,
        },
    }
    mask = optim.kernel_mask(params)
    kernels = {k for k, v in jax.tree_util.tree_leaves_with_path(mask) if v}
    names = sorted(str(path[-1].key) for path, v in jax.tree_util.tree_leaves_with_path(mask) if v)
    assert names == sorted(["kernel", "K", "W", "w1", "dw_kernel", "mix", "conv1_kernel"])
    assert kernels


def test_weight_decay_and_schedules():
    """SGD update = -eta(t) (g + lambda w) on kernels, -eta(t) g on biases; eta schedules."""
    config = tiny_config(
        optimizer__momentum=0.0,
        optimizer__weight_decay=0.5,
        optimizer__boundaries_steps=(2,),
        optimizer__decay_factor=0.1,
    )
    tx, schedule = optim.make_optimizer(config, steps_per_epoch=10, total_steps=10)
    params = {"kernel": jnp.ones(2, jnp.float32), "bias": jnp.ones(2, jnp.float32)}
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * (1 + 0.5), rtol=1e-6)
    np.testing.assert_allclose(updates["bias"], -0.1, rtol=1e-6)
    np.testing.assert_allclose([schedule(1), schedule(2)], [0.1, 0.01], rtol=1e-6)
    config = tiny_config(
        optimizer__name="adam",
        optimizer__schedule="halving",
        optimizer__halve_every_epochs=2.0,
        optimizer__learning_rate=0.01,
    )
    _, schedule = optim.make_optimizer(config, steps_per_epoch=5, total_steps=100)
    np.testing.assert_allclose([schedule(9), schedule(10), schedule(20)], [0.01, 0.005, 0.0025])


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_scalar_lr_factor_slows_biases_and_scales_only(name):
    """Fixup's parameter groups: biases and scalar multipliers step f*eta, kernels eta."""
    config = tiny_config(
        optimizer__name=name,
        optimizer__momentum=0.0,
        optimizer__weight_decay=0.0,
        optimizer__schedule="constant",
        optimizer__learning_rate=0.1,
        optimizer__scalar_lr_factor=0.1,
    )
    tx, _ = optim.make_optimizer(config, steps_per_epoch=10, total_steps=10)
    params = {
        "stage0": {"w1": jnp.ones(2), "b1a": jnp.ones(()), "scale_raw": jnp.ones(())},
        "head": {"kernel": jnp.ones(2), "bias": jnp.ones(2)},
    }
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    # SGD: -eta g; Adam's first step: -eta m/(sqrt(v) + eps) = -eta (1 - 1e-8) for g = 1.
    np.testing.assert_allclose(updates["stage0"]["w1"], -0.1, rtol=1e-6)
    np.testing.assert_allclose(updates["head"]["kernel"], -0.1, rtol=1e-6)
    for leaf in (updates["stage0"]["b1a"], updates["stage0"]["scale_raw"], updates["head"]["bias"]):
        np.testing.assert_allclose(leaf, -0.01, rtol=1e-6)
    with pytest.raises(ValueError, match="scalar_lr_factor must be > 0"):
        optim.make_optimizer(
            tiny_config(optimizer__scalar_lr_factor=0.0), steps_per_epoch=10, total_steps=10
        )


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_give_clear_errors(tmp_path):
    """Unknown config/dataset names list the valid ones; batch % devices; unwritable workdir."""
    with pytest.raises(ValueError, match="valid names: .*default"):
        configs.config_path("no_such_config")
    with pytest.raises(SystemExit, match="valid names"):
        resolve_config_argument(["prog", "--config=no_such_config"])
    assert resolve_config_argument(["prog", "--config=default:smoke"])[1].endswith(
        "default.py:smoke"
    )
    with pytest.raises(ValueError, match="digits"):
        trainer.train_and_evaluate(tiny_config(dataset="mnist"), tmp_path / "a")
    with pytest.raises(ValueError, match="valid names|Valid names"):
        trainer.train_and_evaluate(tiny_config(model="no_such_model"), tmp_path / "b")
    with pytest.raises(ValueError, match="global_batch_size=10 .* axis .data. \\(4\\)"):
        sharding.check_batch_divisible(10, 4)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="not writable"):
        trainer.train_and_evaluate(tiny_config(), blocker / "workdir")


# ----------------------------------------------------------------------------- real steps


def test_one_real_step_cifar10_mock(tmp_path):
    """One update of a CIFAR config on mocked TFDS data: finite loss, metrics and summary."""
    config = configs.load_config("cifar10_revnet110", "smoke")
    config.model, config.model_kwargs = "revnet_mini", {"widths": (8,), "units": (1,)}
    config.num_steps, config.memory_report, config.progress_bar = 1, False, False
    with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
        summary = trainer.train_and_evaluate(config, tmp_path)
    assert summary["steps"] == 1 and np.isfinite(summary["train_loss"])
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {x["split"] for x in lines} == {"train", "test"}
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Workdir of a 4-step tiny digits run with checkpoints at steps 2 and 4."""
    workdir = tmp_path_factory.mktemp("trained")
    trainer.train_and_evaluate(tiny_config(num_steps=4, checkpoint_every_steps=2), workdir)
    return workdir


def test_corrupted_latest_checkpoint_falls_back(trained, tmp_path):
    """Unreadable latest step 4 -> resume from step 2, moved aside, reported, run completes."""
    workdir = tmp_path / "w"
    shutil.copytree(trained, workdir)
    assert saved_steps(workdir) == [2, 4]
    for path in (workdir / "checkpoints" / "4" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"corrupted")
    summary = trainer.train_and_evaluate(
        tiny_config(num_steps=6, checkpoint_every_steps=2), workdir
    )
    assert summary["resumed_from_step"] == 2
    assert summary["skipped_corrupted_checkpoints"] == [4]
    assert summary["steps"] == 6
    assert any((workdir / "corrupted_checkpoints").iterdir())
    # The restored state was used: the result equals an uninterrupted 6-step run.
    fresh = tmp_path / "fresh"
    trainer.train_and_evaluate(tiny_config(num_steps=6, checkpoint_every_steps=2), fresh)
    resumed, uninterrupted = load(workdir)[1], load(fresh)[1]
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_incompatible_config_names_differences(trained, tmp_path):
    """Resuming with another model width fails, naming the field and both values."""
    workdir = tmp_path / "w"
    shutil.copytree(trained, workdir)
    with pytest.raises(
        checkpointing.IncompatibleCheckpointError,
        match=r"model_kwargs\.widths: checkpoint \[8\], now \[12\]",
    ):
        trainer.train_and_evaluate(tiny_config(num_steps=6, model_kwargs__widths=(12,)), workdir)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    """lr jumps to 1e29 after step 4: NonFiniteLossError names the step; saved state finite."""
    config = tiny_config(
        num_steps=30,
        checkpoint_every_steps=2,
        optimizer__boundaries_steps=(4,),
        optimizer__decay_factor=1e30,
    )
    with pytest.raises(trainer.NonFiniteLossError, match=r"at step (\d+).*last good checkpoint"):
        trainer.train_and_evaluate(config, tmp_path)
    steps = saved_steps(tmp_path)
    assert steps and steps[-1] >= 4
    params = saved_params(tmp_path, steps[-1])
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


# ----------------------------------------------------------------------------- CLI and resume


RESUME = {
    "num_steps": 300,
    "checkpoint_every_steps": 20,
    "memory_report": True,
    "progress_bar": True,
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """(workdir, stdout) of an uninterrupted CLI run with the RESUME settings."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    out = subprocess.run(cli(workdir, **RESUME), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir, out.stdout


def test_cli_default_config_summary_and_memory(uninterrupted):
    """`python -m revjax.train` prints accuracy and memory; summary.json has both figures."""
    workdir, stdout = uninterrupted
    assert "test accuracy" in stdout and "train-step memory" in stdout
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == 300 and 0 <= summary["test_accuracy"] <= 1
    memory = summary["memory_temp_bytes"]
    assert 0 < memory["reversible"] < memory["store"]
    assert (workdir / "config.json").exists() and (workdir / "metrics.jsonl").exists()


def _metric_keys(workdir):
    records = [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["split"], r["step"], tuple(sorted(r))) for r in records]


def _run_until_signal(workdir, signum, lines_after):
    """Starts the CLI run, sends ``signum`` once it logged ``lines_after`` more metric lines;
    returns (returncode, stdout, stderr)."""
    proc = subprocess.Popen(
        cli(workdir, **RESUME), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    metrics = workdir / "metrics.jsonl"
    lines = len(metrics.read_text().splitlines()) if metrics.exists() else 0
    wait_for(lambda: len(metrics.read_text().splitlines()) > lines + lines_after, proc)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    return proc.returncode, stdout, stderr


def test_kill_interrupt_preempt_resume_matches_uninterrupted(uninterrupted, tmp_path):
    """SIGKILL, restart, SIGINT (Ctrl-C: saves, exit 130), restart, SIGTERM (saves, exit 75),
    restart to the end: final parameters == uninterrupted run's, bit for bit, and
    metrics.jsonl has no step twice."""
    reference, _ = uninterrupted
    workdir = tmp_path / "w"
    # 1. SIGKILL as soon as the first checkpoint is committed (metrics run ahead of it).
    proc = subprocess.Popen(
        cli(workdir, **RESUME), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(lambda: saved_steps(workdir), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = saved_steps(workdir)
    assert first and first[-1] < 300
    # 2. Restart; SIGINT once it has resumed and trained on: one line, saved, exit 130.
    code, stdout, stderr = _run_until_signal(workdir, signal.SIGINT, 5)
    assert code == trainer.EXIT_INTERRUPTED == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "SIGINT: saved checkpoint at step" in stdout
    interrupt_step = saved_steps(workdir)[-1]
    assert first[-1] < interrupt_step < 300
    assert not list((workdir / "checkpoints").glob("*tmp*"))
    # 3. Restart; SIGTERM (preemption): saved, exit 75 so that a scheduler requeues.
    code, stdout, stderr = _run_until_signal(workdir, signal.SIGTERM, 5)
    assert code == trainer.EXIT_PREEMPTED == 75, stderr[-3000:]
    assert f"Resumed from checkpoint at step {interrupt_step}" in stdout
    preempt_step = saved_steps(workdir)[-1]
    assert interrupt_step < preempt_step < 300
    assert json.loads((workdir / "summary.json").read_text())["stopped_by"] == "SIGTERM"
    # 4. Restart to the end.
    out = subprocess.run(cli(workdir, **RESUME), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Resumed from checkpoint at step {preempt_step}" in out.stdout
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == 300 and summary["resumed_from_step"] == preempt_step
    a, b = saved_params(reference, 300), saved_params(workdir, 300)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    keys = _metric_keys(workdir)
    assert len(keys) == len(set(keys)), "a step was logged twice"

    def train_losses(keys):
        return sorted(k for k in keys if k[0] == "train" and "loss" in k[2])

    assert train_losses(keys) == train_losses(_metric_keys(reference))


def test_plain_log_lines_when_stdout_is_not_a_terminal(uninterrupted):
    """progress_bar=True but stdout is a pipe: periodic plain lines, no carriage returns."""
    _, stdout = uninterrupted
    assert "\r" not in stdout
    lines = [x for x in stdout.splitlines() if x.startswith("step ")]
    assert len(lines) >= 300 // 20
    assert re.fullmatch(
        r"step 20/300 loss \d+\.\d{4} accuracy \d\.\d{4} steps/s \d+\.\d\d lr \S+", lines[19]
    )


@pytest.mark.slow
def test_default_digits_run_reaches_97_percent(tmp_path):
    """The default config (no arguments) reaches >= 97% test accuracy on digits."""
    out = subprocess.run(
        [sys.executable, "-m", "revjax.train", f"--workdir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=1800,
        env=dict(os.environ),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / "summary.json").read_text())["test_accuracy"] >= 0.97


def test_structure_mismatch_is_refused_not_discarded(tmp_path):
    """A readable checkpoint whose state structure differs (e.g. gradient clipping added to the
    optimizer) raises IncompatibleCheckpointError and stays on disk."""
    import optax

    from revjax.train.checkpointing import Checkpointer, IncompatibleCheckpointError

    params = {"w": jnp.ones((3,))}
    plain = {"params": params, "opt_state": optax.sgd(0.1, momentum=0.9).init(params)}
    config = {"model": "m", "optimizer": {"name": "sgd"}}
    ckpt = Checkpointer(tmp_path / "ck", async_save=False)
    ckpt.save(5, plain, {"next_index": 0}, config)
    ckpt.wait()
    clipped_tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.9))
    clipped = {"params": params, "opt_state": clipped_tx.init(params)}
    with pytest.raises(IncompatibleCheckpointError, match="structure"):
        ckpt.restore_latest(clipped, config)
    assert ckpt.all_steps() == [5]
    state, _, step, skipped = ckpt.restore_latest(plain, config)
    assert step == 5 and not skipped
    ckpt.close()


# ----------------------------------------------------------------------------- resume safety


def test_rerun_with_other_settings_is_refused(trained, tmp_path):
    """A finished run's workdir rerun with another learning rate and seed: refused, naming
    both fields and values; config.json untouched. More steps (same settings) continue."""
    workdir = tmp_path / "w"
    shutil.copytree(trained, workdir)
    before = (workdir / "config.json").read_text()
    config = tiny_config(num_steps=6, checkpoint_every_steps=2, seed=5)
    config.optimizer.learning_rate = 0.01
    with pytest.raises(checkpointing.IncompatibleCheckpointError) as error:
        trainer.train_and_evaluate(config, workdir)
    message = str(error.value)
    assert "optimizer.learning_rate: checkpoint 0.1, now 0.01" in message
    assert "seed: checkpoint 0, now 5" in message
    assert "--workdir" in message and "force_resume" in message
    assert (workdir / "config.json").read_text() == before
    # Logging/checkpoint cadence and the backprop mode are not run-defining; more steps are.
    config = tiny_config(num_steps=6, checkpoint_every_steps=3, model_kwargs__backprop="store")
    summary = trainer.train_and_evaluate(config, workdir)
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 6
    assert json.loads((workdir / "config.json").read_text())["num_steps"] == 6
    # force_resume continues under the new values and says so.
    config = tiny_config(num_steps=8, checkpoint_every_steps=2, force_resume=True)
    config.optimizer.learning_rate = 0.01
    summary = trainer.train_and_evaluate(config, workdir)
    assert summary["steps"] == 8
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["optimizer"]["learning_rate"] == 0.01


def test_metrics_writer_drops_records_past_the_resumed_step(tmp_path):
    """Records written after the last checkpoint (run killed) are dropped on resume; an
    already-written (split, step, names) is not written twice."""
    path = tmp_path / "metrics.jsonl"
    writer = trainer._MetricsWriter(path, enabled=True)
    for step in range(1, 8):
        writer.write(step, "train", {"loss": step})
    writer.write(4, "test", {"loss": 0.5})
    path.write_text(path.read_text() + '{"step": 9, "spl')  # a line cut by SIGKILL
    resumed = trainer._MetricsWriter(path, enabled=True)
    resumed.resume_at(4)
    resumed.write(4, "test", {"loss": 0.5})
    resumed.write(5, "train", {"loss": 5})
    records = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(r["split"], r["step"]) for r in records] == [
        ("train", 1),
        ("train", 2),
        ("train", 3),
        ("train", 4),
        ("test", 4),
        ("train", 5),
    ]


# ----------------------------------------------------------------------------- drift guard


def test_drift_guard_logs_and_stops_keeping_last_good_checkpoint(tmp_path, monkeypatch):
    """reconstruction_error is measured at step 0 and every N steps, logged, and above
    drift_rtol stops the run (exit status 3) without saving the drifted state."""
    from revjax import models

    calls = []

    def fake_error(model, variables, x, train=False):
        assert set(variables) >= {"params"} and x.shape[0] == 16 and train

        def host():  # runs at every check (the trainer jits the measurement)
            calls.append(len(calls))
            return np.float32(1e-7 if len(calls) < 3 else 0.5)  # drifts at the 3rd check

        return jax.pure_callback(host, jax.ShapeDtypeStruct((), jnp.float32))

    monkeypatch.setattr(models, "model_reconstruction_error", fake_error, raising=False)
    config = tiny_config(num_steps=20, checkpoint_every_steps=2, drift_check_every=3)
    with pytest.raises(trainer.ReconstructionDriftError) as error:
        trainer.train_and_evaluate(config, tmp_path)
    message = str(error.value)
    assert "\n" not in message and "at step 6" in message and "0.5 > drift_rtol 0.001" in message
    for remedy in ("step size h", "float32/float64", "weight_smoothness", "learning_rate"):
        assert remedy in message
    assert error.value.exit_status == trainer.EXIT_RECONSTRUCTION_DRIFT == 3
    assert saved_steps(tmp_path) == [2, 4]  # step 6 (drifted) was not saved
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    drift = [(r["step"], r["reconstruction_error"]) for r in records if "reconstruction_error" in r]
    assert drift == [(0, pytest.approx(1e-7)), (3, pytest.approx(1e-7)), (6, 0.5)]


def test_drift_guard_measures_the_real_model(trained):
    """The default (reversible) model's body drift is measured at step 0 and is tiny."""
    records = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    drift = [r["reconstruction_error"] for r in records if "reconstruction_error" in r]
    assert drift and 0 <= drift[0] < 1e-5


def test_drift_guard_skips_models_without_reversible_body(tmp_path, monkeypatch):
    """reconstruction_error returning None (no reversible body) disables the guard."""
    from revjax import models

    calls = []
    monkeypatch.setattr(
        models, "model_reconstruction_error", lambda *a, **k: calls.append(1), raising=False
    )
    summary = trainer.train_and_evaluate(
        tiny_config(num_steps=4, checkpoint_every_steps=0, drift_check_every=1), tmp_path
    )
    assert summary["steps"] == 4 and calls == [1]


# ----------------------------------------------------------------------------- load, data


def test_load_round_trip_predictions_equal_trained_state(trained):
    """load(workdir) rebuilds the model; its test accuracy equals the run's own evaluation
    and its parameters are the saved ones; step= picks an earlier checkpoint."""
    from revjax import data

    model, variables, config = load(trained)
    assert tuple(config.model_kwargs.widths) == (8,) and set(variables) == {"params", "batch_stats"}
    jax.tree.map(np.testing.assert_array_equal, variables["params"], saved_params(trained, 4))
    batch = next(
        iter(
            data.make_dataset(
                "digits", "test", global_batch_size=360, seed=0, train=False, drop_remainder=False
            )
        )
    )
    logits = model.apply(variables, jnp.asarray(batch["image"]), train=False)
    correct = int(np.sum(np.asarray(jnp.argmax(logits, -1)) == batch["label"]))
    summary = json.loads((trained / "summary.json").read_text())
    assert correct == round(summary["test_accuracy"] * 360)
    _, early, _ = load(trained, step=2)
    jax.tree.map(np.testing.assert_array_equal, early["params"], saved_params(trained, 2))
    with pytest.raises(FileNotFoundError, match="step 3"):
        load(trained, step=3)


def test_numpy_arrays_dataset_trains(tmp_path):
    """register_arrays: the user's (images, labels) train through the same pipeline."""
    from revjax import data

    rng = np.random.default_rng(0)
    images = rng.standard_normal((40, 8, 8, 1)).astype(np.float32)
    labels = (images.mean(axis=(1, 2, 3)) > 0).astype(np.int64)
    info = data.register_arrays("my_arrays", (images[:32], labels[:32]), (images[32:], labels[32:]))
    assert info == data.DatasetInfo(2, (8, 8, 1), 32, 8, "classification")
    ds = data.make_dataset("my_arrays", "test", global_batch_size=8, seed=0, train=False)
    batch = next(iter(ds))
    np.testing.assert_array_equal(batch["image"], images[32:])
    np.testing.assert_array_equal(batch["label"], labels[32:])
    summary = trainer.train_and_evaluate(
        tiny_config(dataset="my_arrays", num_steps=3, global_batch_size=8, eval_batch_size=8),
        tmp_path,
    )
    assert summary["steps"] == 3 and 0 <= summary["test_accuracy"] <= 1
    with pytest.raises(ValueError, match="5 labels"):
        data.register_arrays("bad", (images, labels[:5]), (images, labels))
    with pytest.raises(ValueError, match="built-in"):
        data.register_arrays("digits", (images, labels), (images, labels))


def test_fake_data_runs_cifar_smoke_offline(tmp_path):
    """cifar10_revnet110:smoke uses fake_examples: random CIFAR-shaped records through the
    CIFAR preprocessing, no prepared dataset needed (data_dir points at nothing)."""
    from revjax import data

    config = configs.load_config("cifar10_revnet110", "smoke")
    assert config.fake_examples > 0
    config.model, config.model_kwargs = "revnet_mini", {"widths": (8,), "units": (1,)}
    config.data_dir = str(tmp_path / "no_data")
    config.memory_report, config.progress_bar = False, False
    summary = trainer.train_and_evaluate(config, tmp_path / "w")
    assert summary["steps"] == 2 and np.isfinite(summary["train_loss"])
    ds = data.make_dataset(
        "cifar10",
        "train",
        global_batch_size=4,
        seed=1,
        train=True,
        fake_examples=8,
        data_dir=str(tmp_path / "no_data"),
    )
    a, b = next(iter(ds)), next(iter(ds))
    assert a["image"].shape == (4, 32, 32, 3) and a["image"].dtype == np.float32
    np.testing.assert_array_equal(a["image"], b["image"])
    assert abs(float(a["image"].mean())) < 1e-4  # per-image standardised by the CIFAR recipe


@pytest.mark.parametrize("model", zoo.RECIPES)
def test_every_zoo_recipe_is_a_config_that_trains_one_step(model, tmp_path):
    """``--config=zoo:<model>,smoke``: the recipe's model, task and optimiser through the one
    trainer, one step on random canvases (the learning table's runs differ only in size)."""
    recipe = zoo.RECIPES[model]
    full = configs.load_config("zoo", model)
    assert (full.model, full.task, full.num_steps) == (
        model,
        recipe.get("task", "classification"),
        recipe["steps"],
    )
    assert (full.optimizer.name, full.optimizer.learning_rate) == (
        recipe["optimizer"],
        recipe["learning_rate"],
    )
    config = configs.load_config("zoo", f"{model},smoke")
    config.progress_bar, config.tensorboard = False, False
    summary = trainer.train_and_evaluate(config, tmp_path / "w")
    assert summary["steps"] == 1 and np.isfinite(summary["train_loss"])
    assert summary["task"] == full.task and summary["model"] == model


def test_memory_report_skips_the_modes_a_model_refuses(tmp_path):
    """zoo:resnet32 (backprop "store" or "remat", never "reversible") reports the stored
    step's memory instead of failing on the config's memory_modes ("reversible", "store")."""
    config = configs.load_config("zoo", "resnet32,smoke")
    config.progress_bar, config.tensorboard, config.memory_report = False, False, True
    summary = trainer.train_and_evaluate(config, tmp_path / "w")
    assert set(summary["memory_temp_bytes"]) == {"store"}, summary["memory_temp_bytes"]
    assert summary["memory_temp_bytes"]["store"] > 0


def test_unprepared_dataset_fails_first_and_leaves_no_workdir(tmp_path):
    """A missing TFDS dataset raises before anything is written; the message names
    data_dir and how to prepare it."""
    from revjax import data

    config = tiny_config(dataset="cifar10", data_dir=str(tmp_path / "no_data"))
    config.dataset_options = {}
    with pytest.raises(data.DatasetNotPreparedError, match="tfds build cifar10"):
        trainer.train_and_evaluate(config, tmp_path / "w")
    assert not (tmp_path / "w").exists()


# ----------------------------------------------------------------------------- optimizers


def test_adamw_warmup_and_gradient_accumulation():
    """AdamW decays kernels only (decoupled); warm-up ramps the schedule linearly;
    accumulate_steps=k applies the mean gradient of k steps once every k steps."""
    params = {"kernel": jnp.ones(2), "bias": jnp.ones(2)}
    zero = jax.tree.map(jnp.zeros_like, params)
    config = tiny_config(
        optimizer__name="adamw",
        optimizer__weight_decay=0.5,
        optimizer__schedule="constant",
        optimizer__learning_rate=0.1,
    )
    tx, _ = optim.make_optimizer(config, steps_per_epoch=10, total_steps=10)
    updates, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5)  # lr * lambda * w, no Adam step
    np.testing.assert_allclose(updates["bias"], 0.0)
    config = tiny_config(optimizer__warmup_steps=4, optimizer__boundaries_steps=(6,))
    _, schedule = optim.make_optimizer(config, steps_per_epoch=10, total_steps=10)
    np.testing.assert_allclose(
        [float(schedule(t)) for t in (0, 1, 3, 5, 6)], [0.025, 0.05, 0.1, 0.1, 0.01], rtol=1e-6
    )
    config = tiny_config(
        optimizer__accumulate_steps=2,
        optimizer__momentum=0.0,
        optimizer__weight_decay=0.0,
        optimizer__schedule="constant",
    )
    tx, schedule = optim.make_optimizer(config, steps_per_epoch=10, total_steps=10)
    state = tx.init(params)
    g1 = jax.tree.map(lambda x: 1.0 * jnp.ones_like(x), params)
    g2 = jax.tree.map(lambda x: 3.0 * jnp.ones_like(x), params)
    u1, state = tx.update(g1, state, params)
    u2, state = tx.update(g2, state, params)
    np.testing.assert_allclose(u1["kernel"], 0.0)
    np.testing.assert_allclose(u2["kernel"], -0.1 * 2.0, rtol=1e-6)
    with pytest.raises(ValueError, match="accumulate_steps"):
        optim.make_optimizer(tiny_config(optimizer__accumulate_steps=0), 10, 10)


# ----------------------------------------------------------------------------- CLI


def _cli_only(*args):
    return subprocess.run(
        [sys.executable, "-m", "revjax.train", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_typo_help_and_print_only(tmp_path):
    """A config-field typo is a one-line "did you mean" error with exit status 1 and no
    workdir; --help lists the config names; --print_only prints the resolved config."""
    out = _cli_only("--config.num_step=60", f"--workdir={tmp_path / 'w'}")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip() == (
        'error: unknown config field \'num_step\'; did you mean "num_steps" instead of "num_step"?'
    )
    assert not (tmp_path / "w").exists()
    out = _cli_only("--help")
    assert all(name in out.stdout for name in configs.names())
    out = _cli_only("--config=cifar10_revnet110:smoke", "--config.seed=7", "--print_only")
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert printed["seed"] == 7 and printed["dataset"] == "cifar10"


def test_plot_curves_writes_into_workdir(tmp_path):
    """plot_curves.py WORKDIR writes WORKDIR/curves.png (not ./results); a workdir without
    metrics gets a one-line message."""
    script = Path(__file__).resolve().parents[1] / "experiments" / "plot_curves.py"
    workdir = tmp_path / "run"
    workdir.mkdir()
    records = [{"step": s, "split": "train", "loss": 1.0 / s, "accuracy": 0.5} for s in (1, 2)]
    records.append({"step": 0, "split": "train", "reconstruction_error": 1e-7})
    records.append({"step": 2, "split": "test", "loss": 0.7, "accuracy": 0.6})
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    env = dict(os.environ, PYTHONPATH=str(script.parents[1]))
    out = subprocess.run(
        [sys.executable, str(script), str(workdir)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert (workdir / "curves.png").stat().st_size > 0 and not (tmp_path / "results").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    out = subprocess.run(
        [sys.executable, str(script), str(empty)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    assert "no metrics.jsonl yet" in out.stderr


def _tensorboard_scalars(logdir):
    """{tag: [(step, value)]} read from tensorboardX event files (TFRecord framing)."""
    import struct

    from tensorboardX.proto import event_pb2

    scalars = {}
    for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_events_have_learning_rate_and_grad_norm(trained):
    """TensorBoard event files (tensorboardX, no TensorFlow) mirror metrics.jsonl."""
    pytest.importorskip("tensorboardX")
    scalars = _tensorboard_scalars(trained / "tensorboard")
    assert [s for s, _ in scalars["train/learning_rate"]] == [1, 2, 3, 4]
    assert all(v > 0 for _, v in scalars["train/grad_norm"])
    records = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    test = [r for r in records if r["split"] == "test"]
    assert scalars["test/accuracy"] == [(4, pytest.approx(test[-1]["accuracy"]))]


def test_iou_from_confusion_hand_example():
    """IoU_k = TP / (TP + FP + FN) from C[true, pred]; absent classes are NaN."""
    labels = jnp.array([[0, 0, 1, 1]])
    logits = jax.nn.one_hot(jnp.array([[0, 1, 1, 1]]), 3)
    counts = tasks.confusion_matrix(logits, labels, jnp.ones(1), 3)
    np.testing.assert_array_equal(counts, [[1, 1, 0], [0, 2, 0], [0, 0, 0]])
    iou = tasks.iou_from_confusion(counts)
    np.testing.assert_allclose(iou[:2], [1 / 2, 2 / 3])
    assert np.isnan(iou[2])
    padded = tasks.confusion_matrix(logits, labels, jnp.zeros(1), 3)
    assert float(padded.sum()) == 0.0


def test_segmentation_task_reports_iou_through_the_trainer(tmp_path):
    """video_hyperbolic3d:smoke through train_and_evaluate: per-class IoU and mean IoU equal
    those recomputed from the loaded model on the test clips."""
    from revjax import data

    config = configs.load_config("video_hyperbolic3d", "smoke")
    config.memory_report, config.progress_bar = False, False
    summary = trainer.train_and_evaluate(config, tmp_path)
    assert "mean_iou" in summary and 0 <= summary["mean_iou"] <= 1
    model, variables, loaded = load(tmp_path)
    options = dict(loaded.dataset_options)
    ds = data.make_dataset(
        "synthetic_video", "test", global_batch_size=2, seed=0, train=False, **options
    )
    info = data.dataset_info("synthetic_video", **options)
    counts = sum(
        np.asarray(
            tasks.confusion_matrix(
                model.apply(variables, jnp.asarray(b["image"]), train=False),
                jnp.asarray(b["label"]),
                jnp.ones(len(b["label"])),
                info.num_classes,
            )
        )
        for b in ds
    )
    iou = tasks.iou_from_confusion(counts)
    for k, value in enumerate(iou):
        if np.isfinite(value):
            assert summary[f"iou_{k}"] == pytest.approx(value, abs=1e-6)
    assert summary["mean_iou"] == pytest.approx(np.nanmean(iou), abs=1e-6)
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("mean_iou" in r for r in records if r["split"] == "test")


def test_config_differences_rules():
    """Run-independent fields and allowed fields are not differences; fields added later
    compare equal to their implicit old value."""
    saved = {"seed": 0, "num_steps": 4, "progress_bar": True, "optimizer": {"name": "sgd"}}
    current = {
        "seed": 0,
        "num_steps": 8,
        "progress_bar": False,
        "mesh": {"data": 2},
        "model_kwargs": {"backprop": "store"},
        "optimizer": {"name": "sgd", "accumulate_steps": 1},
    }
    assert checkpointing.config_differences(saved, current, ("num_steps",)) == []
    assert checkpointing.config_differences(saved, current) == ["num_steps: checkpoint 4, now 8"]
    current["optimizer"]["accumulate_steps"] = 2
    assert checkpointing.config_differences(saved, current, ("num_steps",)) == [
        "optimizer.accumulate_steps: checkpoint 1, now 2"
    ]


def test_train_step_memory_compiles_the_trainers_step_per_mode():
    """`train_step_memory`: the trainer's own donated step compiled for each backprop mode of
    the config's model (nothing trained); the reversible step's temp bytes are below store's,
    and a mode's figure equals `revjax.memory.jitted_step_memory` of that step."""
    from revjax import memory

    config = tiny_config(global_batch_size=16)
    temps = trainer.train_step_memory(config, modes=("reversible", "store"))
    assert 0 < temps["reversible"] < temps["store"]

    info = trainer.data_lib.dataset_info(config.dataset)
    steps_per_epoch = max(info.num_train // 16, 1)
    tx, schedule = optim.make_optimizer(config, steps_per_epoch, steps_per_epoch)
    model = trainer.build_model(config, info, backprop="store")
    step = trainer.make_train_step(model, tx, schedule)
    state = trainer.abstract_state(model, tx, config.seed, info.image_shape)
    batch = trainer.abstract_batch(16, info.image_shape, ())
    assert memory.jitted_step_memory(step, state, batch)["temp"] == temps["store"]

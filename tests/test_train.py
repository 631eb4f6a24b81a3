"""Training system: steps, configs, checkpoint/resume, failure handling, memory figures.

Runs are tiny (digits with a 2-coupling ``revnet_mini``; CIFAR-10 through
``tfds.testing.mock_data``). The resume tests run ``python -m revjax.train`` in subprocesses
(float32, as a user would) and compare final parameters bit for bit.
"""

import json
import os
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

from revjax import configs
from revjax.train import checkpointing, optim, sharding, trainer
from revjax.train.__main__ import resolve_config_argument

TINY = {  # --config.x=y overrides shrinking the default (digits) config
    "model_kwargs.channels": 4,
    "model_kwargs.depth": 2,
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
    config.model, config.model_kwargs = "revnet_mini", {"channels": 4, "depth": 1}
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


def test_incompatible_config_names_differences(trained, tmp_path):
    """Resuming with another model width fails, naming the field and both values."""
    workdir = tmp_path / "w"
    shutil.copytree(trained, workdir)
    with pytest.raises(
        checkpointing.IncompatibleCheckpointError,
        match=r"model_kwargs\.channels: checkpoint 4, now 6",
    ):
        trainer.train_and_evaluate(tiny_config(num_steps=6, model_kwargs__channels=6), workdir)


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


RESUME = {"num_steps": 300, "checkpoint_every_steps": 20, "memory_report": True}


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


def test_sigkill_then_sigterm_resume_matches_uninterrupted(uninterrupted, tmp_path):
    """Run killed by SIGKILL, restarted, preempted by SIGTERM (saves), restarted again:
    final parameters == uninterrupted run's, bit for bit."""
    reference, _ = uninterrupted
    workdir = tmp_path / "w"
    # 1. SIGKILL as soon as the first checkpoint is committed.
    proc = subprocess.Popen(
        cli(workdir, **RESUME), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(lambda: saved_steps(workdir), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = saved_steps(workdir)
    assert first and first[-1] < 300
    # 2. Restart; SIGTERM once it has resumed and trained on: saves at the next step boundary.
    proc = subprocess.Popen(
        cli(workdir, **RESUME), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    metrics = workdir / "metrics.jsonl"
    lines = len(metrics.read_text().splitlines()) if metrics.exists() else 0
    wait_for(lambda: len(metrics.read_text().splitlines()) > lines + 5, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert "preempted" in stdout and proc.returncode == 0, stderr[-3000:]
    preempt_step = saved_steps(workdir)[-1]
    assert first[-1] < preempt_step < 300
    assert json.loads((workdir / "summary.json").read_text())["preempted"]
    # 3. Restart to the end.
    out = subprocess.run(cli(workdir, **RESUME), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Resumed from checkpoint at step {preempt_step}" in out.stdout + out.stderr
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == 300 and summary["resumed_from_step"] is not None
    a, b = saved_params(reference, 300), saved_params(workdir, 300)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert jax.tree.structure(a) == jax.tree.structure(b)


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

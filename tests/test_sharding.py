"""Sharding: meshes, batch/state shardings, and sharded training equal to single-device training."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from revjax.train import sharding

CHECK_SCRIPT = Path(__file__).with_name("sharded_training_check.py")


# One case per model and per mesh kind in the default suite; the other pairs are `slow`.
FAST_CASES = [
    ("revnet", "data"),
    ("hamiltonian", "fsdp"),
    ("revup", "data"),
    ("hyperbolic3d", "spatial"),
]
SLOW_CASES = [
    ("revnet", "fsdp"),
    ("hamiltonian", "data"),
    ("revup", "fsdp"),
    ("hyperbolic3d", "data"),
    ("hyperbolic3d", "fsdp"),
]


def _run_sharded_cases(cases, x64: bool = False) -> dict:
    """Run the (model, mode) cases (and the FFT case) once on 8 fake CPU devices in a
    subprocess (in float64 with `x64`)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env.pop("JAX_ENABLE_X64", None)
    if x64:
        env["JAX_ENABLE_X64"] = "1"
    out = subprocess.run(
        [sys.executable, str(CHECK_SCRIPT), *(f"{m}:{mode}" for m, mode in cases)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    return {(r["model"], r["mode"]): r for r in results}


@pytest.fixture(scope="module")
def sharded_results():
    return _run_sharded_cases(FAST_CASES)


@pytest.fixture(scope="module")
def slow_sharded_results():
    return _run_sharded_cases(SLOW_CASES)


def _check_sharded_result(result: dict, mode: str, rtol: float = 1e-4) -> None:
    assert result["max_rel_diff"] < rtol, result
    if mode == "fsdp":
        assert result["sharded_leaves"] > 0, result


@pytest.mark.parametrize("model,mode", FAST_CASES)
def test_sharded_training_equals_single_device(sharded_results, model, mode):
    """Parameters after 3 sharded SGD steps equal the single-device ones (float32 tolerance);
    FSDP really shards parameters; spatial mode splits H of each clip over 4 devices."""
    _check_sharded_result(sharded_results[(model, mode)], mode)


@pytest.mark.slow
@pytest.mark.parametrize("model,mode", SLOW_CASES)
def test_sharded_training_equals_single_device_other_meshes(slow_sharded_results, model, mode):
    """The remaining (model, mesh) pairs of the test above."""
    _check_sharded_result(slow_sharded_results[(model, mode)], mode)


TRANSFORMER_CASES = [("rev_byte_lm_f64", "fsdp"), ("rev_vit_f64", "fsdp")]


def test_reversible_transformers_sharded_fsdp_equal_single_device_in_float64():
    """A reversible language model (leapfrog blocks, dropout replayed) and a reversible ViT
    trained 3 steps with data parallelism + fully sharded parameters and optimizer state
    (FSDP) on 8 devices equal the single-device run to float64 round-off."""
    results = _run_sharded_cases(TRANSFORMER_CASES, x64=True)
    for model, mode in TRANSFORMER_CASES:
        _check_sharded_result(results[(model, mode)], mode, rtol=1e-10)


def test_fft_axis_sharded_is_gathered_and_exact(sharded_results):
    """An FFT conv over an H axis sharded on "space" equals the unsharded result."""
    assert sharded_results[("fft_depthwise", "spatial")]["max_rel_diff"] < 1e-6


def test_mesh_and_divisibility_errors_name_the_axis():
    """Mesh sizes that do not match the devices, and indivisible batch/spatial sizes, are errors."""
    n = jax.device_count()
    with pytest.raises(ValueError, match="'space'"):
        sharding.make_mesh(space=n + 1)
    with pytest.raises(ValueError, match="mesh shape"):
        sharding.make_mesh(data=n + 1)
    with pytest.raises(ValueError, match="axis 'data'"):
        sharding.check_batch_divisible(10, 4)
    mesh = sharding.make_mesh()
    assert mesh.axis_names == ("data", "space")
    with pytest.raises(ValueError, match="'space'"):
        sharding.check_spatial_divisible((2, 6, 8, 3), _FakeMesh(space=4), 1)
    with pytest.raises(ValueError, match="multiple of 4"):
        sharding.check_spatial_divisible((2, 8, 8, 3), _FakeMesh(space=4), 1, multiple=4)
    sharding.check_spatial_divisible((2, 16, 8, 3), _FakeMesh(space=4), 1, multiple=4)


class _FakeMesh:
    """Just enough of a Mesh (its axis sizes) to test the spatial checks on one device."""

    def __init__(self, space):
        self.shape = {"data": 1, "space": space}


def test_fsdp_shards_largest_divisible_axis():
    """FSDP splits the largest axis divisible by the data-axis size; small leaves replicate."""
    spec = sharding._fsdp_spec((3, 3, 64, 128), 8, 16)
    assert spec == jax.sharding.PartitionSpec(None, None, None, "data")
    assert sharding._fsdp_spec((10,), 8, 1) == jax.sharding.PartitionSpec()
    assert sharding._fsdp_spec((64,), 8, 1000) == jax.sharding.PartitionSpec()
    state = {"w": jnp.zeros((16, 8))}
    shardings = sharding.state_shardings(sharding.make_mesh(), state)
    assert shardings["w"].spec == jax.sharding.PartitionSpec()


def test_multiprocess_detection():
    """jax.distributed is initialised only for multi-process environments (SLURM, TPU, env)."""
    assert not sharding.is_multiprocess_env({})
    assert not sharding.is_multiprocess_env({"SLURM_NTASKS": "1"})
    assert sharding.is_multiprocess_env({"SLURM_NTASKS": "8"})
    assert sharding.is_multiprocess_env({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
    assert sharding.is_multiprocess_env({"TPU_WORKER_HOSTNAMES": "a,b"})
    assert not sharding.is_multiprocess_env({"TPU_WORKER_HOSTNAMES": "a"})


# --------------------------------------------------------------------------------------------
# Multi-process jobs on this machine (revjax.train.launch; gloo CPU collectives).

MULTIPROCESS_SCRIPT = Path(__file__).with_name("multiprocess_check.py")
PEER_DEATH_SCRIPT = Path(__file__).with_name("peer_death_check.py")
ROOT = str(Path(__file__).resolve().parents[1])


def _subprocess_env(**extra):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", **extra)
    env.pop("JAX_ENABLE_X64", None)
    return env


def test_distributed_settings_pass_the_explicit_environment():
    """All three JAX_* variables reach jax.distributed.initialize (JAX reads only the address);
    incomplete or inconsistent ones are ValueErrors naming the variable, before any waiting."""
    env = {
        "JAX_COORDINATOR_ADDRESS": "127.0.0.1:23456",
        "JAX_NUM_PROCESSES": "2",
        "JAX_PROCESS_ID": "1",
        "REVJAX_DISTRIBUTED_TIMEOUT": "7",
    }
    assert sharding.distributed_settings(env | {"REVJAX_HEARTBEAT_TIMEOUT": "9"}) == dict(
        coordinator_address="127.0.0.1:23456",
        num_processes=2,
        process_id=1,
        initialization_timeout=7,
        heartbeat_timeout_seconds=9,
        shutdown_timeout_seconds=sharding.DEFAULT_SHUTDOWN_S,
    )
    assert sharding.distributed_settings({}) is None
    assert sharding.distributed_settings({"SLURM_NTASKS": "4"}) == {
        "initialization_timeout": sharding.DEFAULT_TIMEOUT_S,
        "heartbeat_timeout_seconds": sharding.DEFAULT_HEARTBEAT_S,
        "shutdown_timeout_seconds": sharding.DEFAULT_SHUTDOWN_S,
    }
    with pytest.raises(ValueError, match="REVJAX_SHUTDOWN_TIMEOUT must be >= 1"):
        sharding.distributed_settings(env | {"REVJAX_SHUTDOWN_TIMEOUT": "0"})
    with pytest.raises(ValueError, match="JAX_PROCESS_ID missing"):
        sharding.distributed_settings({k: env[k] for k in list(env)[:2]})
    with pytest.raises(ValueError, match=r"\[0, JAX_NUM_PROCESSES=2\)"):
        sharding.distributed_settings(env | {"JAX_PROCESS_ID": "2"})
    with pytest.raises(ValueError, match="host:port"):
        sharding.distributed_settings(env | {"JAX_COORDINATOR_ADDRESS": "127.0.0.1"})
    with pytest.raises(ValueError, match="not an integer"):
        sharding.distributed_settings(env | {"JAX_NUM_PROCESSES": "two"})


def test_two_processes_data_parallel_gradient_equals_single_process(capfd):
    """2 processes x 2 CPU devices: one mesh of 4 devices spanning both processes, each process
    feeding its half of the batch; the jitted float64 gradient (a cross-process all-reduce)
    equals the single-process numpy gradient on every process. Process p's devices hold rows
    [8p, 8p + 8), and a mesh in reversed process order is refused by check_process_rows."""
    import numpy as np

    from revjax.train import launch

    status = launch.launch(
        [sys.executable, str(MULTIPROCESS_SCRIPT)],
        2,
        cpu_devices=2,
        timeout=240,
        env=_subprocess_env(),
    )
    out = capfd.readouterr().out
    assert status == 0, out[-4000:]
    results = [json.loads(line.split("] ", 1)[1]) for line in out.splitlines() if '"grad"' in line]
    assert sorted(r["process_index"] for r in results) == [0, 1]
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 3)), rng.normal(size=(16,))
    expected = x.T @ (x @ np.array([0.5, -1.0, 2.0]) - y) / 16
    for r in results:
        assert (r["process_count"], r["device_count"], r["local_device_count"]) == (2, 4, 2)
        np.testing.assert_allclose(r["grad"], expected, rtol=1e-12)
        p = r["process_index"]
        assert r["rows"] == [[8 * p, 8 * (p + 1)]]  # the rows make_dataset feeds process p
        assert (
            f"process {p}'s devices hold rows [({8 * (1 - p)}, {8 * (2 - p)})]"
            in (r["swapped_mesh_error"])
        )


def test_unreachable_coordinator_is_a_clear_error_in_bounded_time():
    """A process whose coordinator never comes up exits non-zero with a message naming the
    address within REVJAX_DISTRIBUTED_TIMEOUT (not an XLA abort, not a hang)."""
    from revjax.train.launch import free_port

    address = f"127.0.0.1:{free_port()}"
    env = _subprocess_env(
        JAX_COORDINATOR_ADDRESS=address,
        JAX_NUM_PROCESSES="2",
        JAX_PROCESS_ID="1",
        REVJAX_DISTRIBUTED_TIMEOUT="2",
    )
    code = "from revjax.train import sharding; sharding.maybe_initialize_distributed()"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode != 0
    assert f"coordinator {address} not reachable within 2 s" in out.stderr


def test_launcher_stops_every_process_when_one_dies():
    """One process exiting with status 3 stops the others (which would sleep 120 s) and the
    launcher returns 3 well before they would have finished."""
    import time

    from revjax.train import launch

    code = (
        "import os, sys, time\n"
        "sys.exit(3) if os.environ['JAX_PROCESS_ID'] == '1' else time.sleep(120)"
    )
    start = time.monotonic()
    status = launch.launch([sys.executable, "-c", code], 3, timeout=100, grace=5)
    assert status == 3
    assert time.monotonic() - start < 60


def _start_peer_death_pair(**env_extra) -> list[subprocess.Popen]:
    """Processes 0 and 1 of a 2-process job running PEER_DEATH_SCRIPT (which SIGKILLs 1)."""
    from revjax.train.launch import free_port

    port = free_port()
    procs = []
    for pid in (0, 1):
        env = _subprocess_env(
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(pid),
            **env_extra,
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(PEER_DEATH_SCRIPT)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def test_survivor_of_a_killed_process_exits_in_bounded_time():
    """Process 1 of 2 is SIGKILLed between all-reduces. Process 0 (started without the
    launcher, which would stop it anyway) leaves by itself within seconds with EXIT_PEER_LOST
    and one line saying another process stopped, instead of waiting in JAX's shutdown barrier
    until the heartbeat timeout and aborting with a C++ trace (about 110 s measured before)."""
    import time

    start = time.monotonic()
    # REVJAX_HEARTBEAT_TIMEOUT=100 (JAX's default): not what ends the survivor
    procs = _start_peer_death_pair(REVJAX_HEARTBEAT_TIMEOUT="100")
    try:
        out0, err0 = procs[0].communicate(timeout=90)
        procs[1].communicate(timeout=30)
    finally:
        for p in procs:
            p.kill()
    elapsed = time.monotonic() - start
    assert procs[1].returncode == -signal.SIGKILL
    assert procs[0].returncode == sharding.EXIT_PEER_LOST, err0[-3000:]
    assert "error: process 0 of 2: another process of this job stopped or fell behind" in err0
    assert "Rerun the job." in err0
    assert "Check failure stack trace" not in err0
    assert elapsed < 60, elapsed


def test_idle_survivor_is_ended_after_the_heartbeat_timeout():
    """Process 0 idles outside any collective when process 1 is SIGKILLed: JAX's coordination
    service ends it (non-zero, naming the missed heartbeats) about REVJAX_HEARTBEAT_TIMEOUT
    (here 10 s) after the kill, long before its 300 s sleep would end (JAX's default: 100 s)."""
    import time

    procs = _start_peer_death_pair(REVJAX_HEARTBEAT_TIMEOUT="10", PEER_DEATH_IDLE="1")
    try:
        procs[1].communicate(timeout=120)
        killed = time.monotonic()
        _, err0 = procs[0].communicate(timeout=120)
    finally:
        for p in procs:
            p.kill()
    assert procs[1].returncode == -signal.SIGKILL
    assert procs[0].returncode != 0
    assert "heartbeat" in err0, err0[-3000:]
    assert time.monotonic() - killed < 60


def test_processes_with_different_configs_stop_before_training(tmp_path, capfd):
    """Process 1 started with other num_steps and learning rate: both processes stop before
    compiling anything, with status 1 and an error naming each differing field and both
    values; nothing is trained (no checkpoint)."""
    import time

    from revjax.train import launch

    script = (
        'extra=""; [ "$JAX_PROCESS_ID" = 1 ] && '
        'extra="--config.num_steps=10 --config.optimizer.learning_rate=0.2"; '
        f"exec {sys.executable} -m revjax.train --config=default:smoke "
        f"--workdir={tmp_path / 'run'} $extra"
    )
    start = time.monotonic()
    status = launch.launch(
        ["bash", "-c", script], 2, cpu_devices=1, timeout=240, grace=5, env=_subprocess_env()
    )
    elapsed = time.monotonic() - start
    out = capfd.readouterr().out
    assert status == 1, out[-4000:]
    for pid in (0, 1):
        assert (
            f"[{pid}] error: the processes of this job were started with different run "
            "configs" in out
        ), out[-4000:]
    assert "num_steps: process 0 20, process 1 10" in out
    assert "optimizer.learning_rate: process 0 0.1, process 1 0.2" in out
    assert "seed" not in out.split("different run configs", 1)[1].split("launch:")[0]
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert elapsed < 120, elapsed


TRAIN = [sys.executable, "-m", "revjax.train", "--config=default:smoke"]  # 20 steps


def _train_losses(workdir) -> dict[int, float]:
    """{step: train loss} from a run's metrics.jsonl (steps 1, 5, 10, 15, 20 for smoke)."""
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train" and "loss" in r}


def _launch_two_processes(workdir, capfd, *flags, command=TRAIN) -> dict:
    """`command` as 2 processes x 2 CPU devices; returns the summary process 0 wrote."""
    from revjax.train import launch

    status = launch.launch(
        [*command, f"--workdir={workdir}", *flags],
        2,
        cpu_devices=2,
        timeout=900,
        env=_subprocess_env(),
    )
    assert status == 0, capfd.readouterr().out[-4000:]
    return json.loads((workdir / "summary.json").read_text())


def _assert_same_run(mp: dict, sp: dict, mp_losses: dict, sp_losses: dict) -> None:
    assert mp["steps"] == sp["steps"] > 0
    for key in ("train_loss", "test_loss", "test_accuracy"):
        assert abs(mp[key] - sp[key]) <= 1e-5 * max(1.0, abs(sp[key])), (key, mp[key], sp[key])
    assert sorted(mp_losses) == sorted(sp_losses) and 1 in sp_losses
    for step, loss in sp_losses.items():  # step 1 was 2.394 vs 2.420 with per-host shuffles
        assert abs(mp_losses[step] - loss) <= 1e-5 * max(1.0, abs(loss)), (step, mp_losses, loss)


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory):
    """`TRAIN` as 1 process x 4 CPU devices: (summary, {step: train loss})."""
    workdir = tmp_path_factory.mktemp("sp")
    env = _subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=4")
    single = subprocess.run(
        [*TRAIN, f"--workdir={workdir}"], env=env, capture_output=True, text=True, timeout=900
    )
    assert single.returncode == 0, single.stderr[-4000:]
    return json.loads((workdir / "summary.json").read_text()), _train_losses(workdir)


@pytest.mark.slow
def test_two_process_training_run_equals_one_process_on_as_many_devices(
    tmp_path, capfd, single_process_run
):
    """`python -m revjax.train --config=default:smoke` as 2 processes x 2 CPU devices logs the
    same train losses at every logged step and ends with the same test metrics as 1 process x
    4 CPU devices (same global batches: each process feeds its rows of every batch of the
    single-process stream, revjax.data.ProcessRows)."""
    mp = _launch_two_processes(tmp_path / "mp", capfd)
    sp, sp_losses = single_process_run
    print("2 processes:", _train_losses(tmp_path / "mp"), "\n1 process:  ", sp_losses)
    _assert_same_run(mp, sp, _train_losses(tmp_path / "mp"), sp_losses)


@pytest.mark.slow
def test_two_process_checkpoint_and_restart_resume_exactly(tmp_path, capfd, single_process_run):
    """2 processes train 10 steps and save an orbax checkpoint together (state and input
    pipeline position); both restarted with 20 steps resume at step 10 and end exactly where
    the uninterrupted 1-process run ends."""
    workdir = tmp_path / "mp"
    first = _launch_two_processes(workdir, capfd, "--config.num_steps=10")
    assert first["steps"] == 10
    assert (workdir / "checkpoints" / "10").is_dir()
    resumed = _launch_two_processes(workdir, capfd)
    assert resumed["resumed_from_step"] == 10
    sp, sp_losses = single_process_run
    _assert_same_run(resumed, sp, _train_losses(workdir), sp_losses)


def test_trainer_abstract_inputs_carry_the_trainers_shardings():
    """The trainer's abstract step inputs (used by its memory report and by
    experiments/sharding_scaling.py): images split over "data" and, with a spatial axis, over
    "space"; a per-voxel label map split like its image, a class label only over "data";
    the state replicated (or FSDP) on the mesh; nothing allocated."""
    from revjax import models
    from revjax.train import trainer

    mesh = jax.sharding.AbstractMesh((1, 2), ("data", "space"))
    P = jax.sharding.PartitionSpec
    seg = trainer.batch_shardings(mesh, (4, 8, 8, 3), (4, 8, 8), spatial_axis=2)
    assert seg["image"].spec == P("data", None, "space", None, None)
    assert seg["label"].spec == P("data", None, "space", None)
    cls = trainer.batch_shardings(mesh, (8, 8, 3), (), spatial_axis=2)
    assert cls["label"].spec == P("data")
    batch = trainer.abstract_batch(2, (4, 8, 8, 3), (4, 8, 8), seg)
    assert batch["image"].shape == (2, 4, 8, 8, 3) and batch["image"].dtype == jnp.float32
    assert batch["label"].shape == (2, 4, 8, 8) and batch["label"].dtype == jnp.int32
    assert batch["label"].sharding == seg["label"]
    assert trainer.abstract_batch(2, (8, 8, 3), ())["label"].sharding is None

    import optax

    model = models.create("revnet38")
    tx = optax.sgd(0.1, momentum=0.9)
    state = trainer.abstract_state(model, tx, 0, (8, 8, 3), sharding.make_mesh())
    leaves = jax.tree.leaves(state)
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)
    assert all(leaf.sharding.spec == P() for leaf in leaves)
    plain = trainer.abstract_state(model, tx, 0, (8, 8, 3))
    assert jax.tree.structure(plain) == jax.tree.structure(state)


KILL_SCRIPT = Path(__file__).with_name("kill_after_checkpoint.py")


class _TimedLines:
    """A launcher `out` that keeps each line with the monotonic time it arrived."""

    def __init__(self):
        self.lines: list[tuple[float, str]] = []

    def write(self, text: str) -> None:
        self.lines.append((time.monotonic(), text))

    def flush(self) -> None:
        pass

    def text(self) -> str:
        return "".join(t for _, t in self.lines)

    def time_of(self, needle: str) -> float:
        return next(when for when, t in self.lines if needle in t)


@pytest.mark.slow
def test_sigkill_of_one_process_then_restart_of_all_resumes_exactly(tmp_path, capfd):
    """2 processes x 2 CPU devices train the 20-step smoke run; process 1 is SIGKILLed right
    after the checkpoint at step 10. The launcher reports it, stops process 0 and fails within
    a bounded time (no hang); rerunning the same launch resumes at step 10 and logs exactly
    (bitwise) the train losses and test metrics of an uninterrupted 2-process run."""
    import time

    from revjax.train import launch

    quick = ("--config.memory_report=False", "--config.drift_check_every=0")  # fewer compiles
    uninterrupted = _launch_two_processes(tmp_path / "whole", capfd, *quick)
    workdir = tmp_path / "killed"
    lines = _TimedLines()
    status = launch.launch(
        [
            sys.executable,
            str(KILL_SCRIPT),
            "--config=default:smoke",
            f"--workdir={workdir}",
            *quick,
        ],
        2,
        cpu_devices=2,
        timeout=600,
        grace=10,
        env=_subprocess_env(REVJAX_TEST_KILL_AFTER_STEP="10"),
        out=lines,
    )
    ended = time.monotonic()
    out = lines.text()
    assert status == -signal.SIGKILL, out[-4000:]
    killed = lines.time_of("[1] process 1: SIGKILL after the checkpoint at step 10")
    assert "launch: process 1 was killed by SIGKILL; stopping the other processes" in out
    # The survivor left by itself (broken all-reduce), not by the launcher's SIGKILL.
    assert "launch: process 0 exited with status 76" in out, out[-4000:]
    assert "[0] error: process 0 of 2: another process of this job stopped or fell behind" in out
    print(f"survivor and launcher done {ended - killed:.1f} s after the kill")
    assert ended - killed < 30
    assert not (workdir / "summary.json").exists()
    resumed = _launch_two_processes(workdir, capfd, *quick)
    assert resumed["resumed_from_step"] == 10
    assert resumed["steps"] == uninterrupted["steps"] == 20
    for key in ("train_loss", "test_loss", "test_accuracy"):
        assert resumed[key] == uninterrupted[key], (key, resumed[key], uninterrupted[key])
    losses, whole = _train_losses(workdir), _train_losses(tmp_path / "whole")
    assert sorted(losses) == sorted(whole)  # no step logged twice or lost
    assert all(losses[s] == whole[s] for s in whole), (losses, whole)

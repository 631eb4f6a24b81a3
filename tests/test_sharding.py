"""Sharding: meshes, batch/state shardings, and sharded training equal to single-device training."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from revjax.train import sharding

CHECK_SCRIPT = Path(__file__).with_name("sharded_training_check.py")


@pytest.fixture(scope="module")
def sharded_results():
    """Run every (model, mode) case once on 8 fake CPU devices in a subprocess."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env.pop("JAX_ENABLE_X64", None)
    out = subprocess.run(
        [sys.executable, str(CHECK_SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    return {(r["model"], r["mode"]): r for r in results}


@pytest.mark.parametrize(
    "model,mode",
    [
        (m, mode)
        for m in ("revnet", "hamiltonian", "revup", "hyperbolic3d")
        for mode in ("data", "fsdp")
    ]
    + [("hyperbolic3d", "spatial")],
)
def test_sharded_training_equals_single_device(sharded_results, model, mode):
    """Parameters after 3 sharded SGD steps equal the single-device ones (float32 tolerance);
    FSDP really shards parameters; spatial mode splits H of each clip over 4 devices."""
    result = sharded_results[(model, mode)]
    assert result["max_rel_diff"] < 1e-4, result
    if mode == "fsdp":
        assert result["sharded_leaves"] > 0, result


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

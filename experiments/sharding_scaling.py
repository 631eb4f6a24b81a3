"""Scale-out on paper: spatially sharded memory per device, and a weak-scaling estimate.

Runs on CPU with 8 fake devices (the flag is set before JAX starts) and only *compiles*:

1. Spatial (domain) parallelism: the trainer's own training step (`trainer.make_train_step`,
   SGD with momentum, state donated) of the hyperbolic 3D network with each clip's H axis
   split over "space" = 1, 2, 4, 8 devices; per-device compiled temp bytes
   (`revjax.memory.jitted_step_memory`), expected to fall roughly as 1/devices.
2. Data parallelism: per-device FLOPs of a training step, counted from its jaxpr (convolutions
   and matmuls, scan bodies times their length: XLA's `cost_analysis()` counts a while-loop
   body once, so it undercounts scanned networks), and the bytes the gradient all-reduce
   moves (the gradient is the size of the parameters), then a weak-scaling estimate for a GPU
   cluster under stated assumptions (per-GPU throughput, NVLink inside a node, InfiniBand
   between nodes, ring all-reduce 2(n−1)/n, no compute/communication overlap as the
   pessimistic case and full overlap as the optimistic one).

    python experiments/sharding_scaling.py --quick \
        --out experiments/results/sharding_scaling_quick.json
"""

from __future__ import annotations

import os

# Compile only, nothing runs: XLA CPU backend at -O0 (JAX's "disable most optimizations")
# keeps every HLO pass, so buffer assignment and memory_analysis() bytes are the same as
# fully optimised (checked: the --quick sweep reproduces its committed bytes exactly), and
# compiles several times faster. JAX_DISABLE_MOST_OPTIMIZATIONS=0 turns it off.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402

import jax  # noqa: E402
import optax  # noqa: E402
from result_files import default_out, write_json

from revjax import memory, models  # noqa: E402
from revjax.train import sharding, trainer  # noqa: E402

# Assumptions for the estimate (documented in the output).
CLUSTER = {
    "gpu_tflops_effective": 200.0,  # sustained dense TF32/bf16 training throughput per H100
    "nvlink_gb_per_s": 300.0,  # per-GPU all-reduce bus bandwidth inside an 8-GPU node
    "infiniband_gb_per_s": 40.0,  # per-GPU bandwidth between nodes (400 Gb/s NIC per GPU)
    "gpus_per_node": 8,
}


def _conv_flops(eqn) -> float:
    lhs, rhs = (v.aval for v in eqn.invars[:2])
    out = eqn.outvars[0].aval
    dn = eqn.params["dimension_numbers"]
    kernel_spatial = math.prod(rhs.shape[d] for d in dn.rhs_spec[2:])
    in_features = rhs.shape[dn.rhs_spec[1]]
    return 2.0 * math.prod(out.shape) * kernel_spatial * in_features


def _dot_flops(eqn) -> float:
    lhs = eqn.invars[0].aval
    (contract, _), _ = eqn.params["dimension_numbers"]
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs.shape[d] for d in contract)


def jaxpr_flops(jaxpr) -> float:
    """Multiply-add FLOPs of convolutions and matmuls in a (closed) jaxpr, scans unrolled."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "dot_general":
            total += _dot_flops(eqn)
        multiplier = eqn.params.get("length", 1) if name == "scan" else 1
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += multiplier * jaxpr_flops(inner)
    return total


OPTIMIZER = optax.sgd(0.1, momentum=0.9)


def train_step_and_inputs(model, image_shape, mesh, spatial_axis=None, segmentation=False):
    """The trainer's own step (`trainer.make_train_step`) and its abstract (state, batch),
    sharded as the trainer shards them on `mesh`; `image_shape` is the global (B, *S, C)."""
    step = trainer.make_train_step(model, OPTIMIZER, optax.constant_schedule(0.1))
    example_shape = tuple(image_shape[1:])
    label_shape = example_shape[:-1] if segmentation else ()
    state = trainer.abstract_state(model, OPTIMIZER, 0, example_shape, mesh)
    shardings = trainer.batch_shardings(mesh, example_shape, label_shape, spatial_axis)
    batch = trainer.abstract_batch(image_shape[0], example_shape, label_shape, shardings)
    return step, state, batch


def spatial_table(clip, width, levels, layers):
    """Per-device temp bytes of hyperbolic3d's training step (`revjax.memory`) with H split
    over 1/2/4/8 devices."""
    model = models.create("hyperbolic3d", width=width, levels=levels, units=layers, num_classes=4)
    rows = []
    for space in (1, 2, 4, 8):
        mesh = sharding.make_mesh(1, space, devices=jax.devices()[:space])
        shape = (1, *clip, 3)
        sharding.check_spatial_divisible(shape, mesh, 2, 2**levels)
        step, state, batch = train_step_and_inputs(
            model, shape, mesh, spatial_axis=2, segmentation=True
        )
        temp = memory.jitted_step_memory(step, state, batch, donate_argnums=0)["temp"]
        rows.append({"space_devices": space, "clip": list(clip), "temp_bytes_per_device": temp})
    base = rows[0]["temp_bytes_per_device"]
    for r in rows:
        r["fraction_of_one_device"] = r["temp_bytes_per_device"] / base
    return rows


def weak_scaling(model_name, overrides, per_device_batch, image_shape, num_classes):
    """Per-device FLOPs (jaxpr count) and gradient all-reduce bytes, then the estimate."""
    model = models.create(model_name, **overrides)
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    step, state, batch = train_step_and_inputs(model, (per_device_batch, *image_shape), mesh)
    flops = jaxpr_flops(jax.make_jaxpr(step)(state, batch).jaxpr)
    params = state["params"]
    allreduce = sum(math.prod(p.shape) * p.dtype.itemsize for p in jax.tree.leaves(params))
    t_compute = flops / (CLUSTER["gpu_tflops_effective"] * 1e12)
    estimates = []
    for n in (1, 8, 64, 512):
        if n == 1:
            t_comm = 0.0
        else:
            bandwidth = (
                CLUSTER["nvlink_gb_per_s"]
                if n <= CLUSTER["gpus_per_node"]
                else CLUSTER["infiniband_gb_per_s"]
            )
            t_comm = 2 * (n - 1) / n * allreduce / (bandwidth * 1e9)
        estimates.append(
            {
                "gpus": n,
                "step_ms_no_overlap": 1e3 * (t_compute + t_comm),
                "step_ms_full_overlap": 1e3 * max(t_compute, t_comm),
                "efficiency_no_overlap": t_compute / (t_compute + t_comm),
                "efficiency_full_overlap": t_compute / max(t_compute, t_comm),
            }
        )
    return {
        "model": model_name,
        "per_device_batch": per_device_batch,
        "flops_per_device_step": flops,
        "allreduce_bytes_per_device_step": allreduce,
        "estimates": estimates,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=default_out("sharding_scaling.json"))
    args = parser.parse_args(argv)
    if args.quick:
        clip, width, levels, layers = (4, 64, 32), 8, 2, 1
        dp_models = [("revnet38", {}, 8, (32, 32, 3), 10)]
    else:
        clip, width, levels, layers = (8, 256, 128), 8, 2, 2
        dp_models = [
            ("revnet110", {}, 128, (32, 32, 3), 10),
            ("hamiltonian218", {}, 128, (32, 32, 3), 10),
        ]
    spatial = spatial_table(clip, width, levels, layers)
    print(f"Spatially sharded hyperbolic3d training step, clip {clip} (T, H, W), batch 1:")
    print("| devices on 'space' | temp MiB per device | fraction of 1 device |")
    print("|---:|---:|---:|")
    for r in spatial:
        print(
            f"| {r['space_devices']} | {r['temp_bytes_per_device'] / 2**20:.1f} | "
            f"{r['fraction_of_one_device']:.2f} |"
        )
    scaling = [weak_scaling(*m) for m in dp_models]
    print("\nWeak scaling estimate (data parallel), assumptions:", json.dumps(CLUSTER))
    for s in scaling:
        print(
            f"{s['model']}: {s['flops_per_device_step'] / 1e9:.1f} GFLOP and "
            f"{s['allreduce_bytes_per_device_step'] / 2**20:.2f} MiB all-reduce per device step "
            f"(batch {s['per_device_batch']} per device)"
        )
        print("| GPUs | step ms (no overlap) | efficiency | efficiency (full overlap) |")
        print("|---:|---:|---:|---:|")
        for e in s["estimates"]:
            print(
                f"| {e['gpus']} | {e['step_ms_no_overlap']:.2f} | "
                f"{e['efficiency_no_overlap']:.2f} | {e['efficiency_full_overlap']:.2f} |"
            )
    write_json(args.out, {"spatial": spatial, "weak_scaling": scaling, "assumptions": CLUSTER})


if __name__ == "__main__":
    main()

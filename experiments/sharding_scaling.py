"""Scale-out on paper: spatially sharded memory per device, and a weak-scaling estimate.

Runs on CPU with 8 fake devices (the flag is set before JAX starts) and only *compiles*:

1. Spatial (domain) parallelism: the hyperbolic 3D network's training step with each clip's
   H axis split over "space" = 1, 2, 4, 8 devices; per-device compiled temp bytes
   (`memory_analysis()`), expected to fall roughly as 1/devices.
2. Data parallelism: per-device FLOPs of a training step (`cost_analysis()`) and the bytes
   each collective moves (parsed from the partitioned HLO: all-reduce of the gradients,
   halo `collective-permute`s for spatial sharding), then a weak-scaling estimate for a GPU
   cluster under stated assumptions (per-GPU throughput, NVLink inside a node, InfiniBand
   between nodes, ring all-reduce 2(n−1)/n, no compute/communication overlap as the
   pessimistic case and full overlap as the optimistic one).

    python experiments/sharding_scaling.py --quick --out results/sharding_scaling.json
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from revjax import models  # noqa: E402
from revjax.train import sharding, trainer  # noqa: E402

DTYPE_BYTES = {"f32": 4, "f64": 8, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "s8": 1, "pred": 1}
COLLECTIVES = ("all-reduce", "collective-permute", "all-gather", "reduce-scatter", "all-to-all")
SHAPE = re.compile(r"\b(f32|f64|bf16|f16|s32|u32|s8|pred)\[([0-9,]*)\]")

# Assumptions for the estimate (documented in the output).
CLUSTER = {
    "gpu_tflops_effective": 200.0,  # sustained dense TF32/bf16 training throughput per H100
    "nvlink_gb_per_s": 300.0,  # per-GPU all-reduce bus bandwidth inside an 8-GPU node
    "infiniband_gb_per_s": 40.0,  # per-GPU bandwidth between nodes (400 Gb/s NIC per GPU)
    "gpus_per_node": 8,
}


def collective_bytes(hlo_text: str) -> dict[str, int]:
    """Bytes produced by each kind of collective in a partitioned HLO module (per device)."""
    totals = dict.fromkeys(COLLECTIVES, 0)
    for line in hlo_text.splitlines():
        for kind in COLLECTIVES:
            if f" {kind}(" in line or f" {kind}-start(" in line:
                lhs = line.split(f" {kind}", 1)[0]
                for dtype, dims in SHAPE.findall(lhs):
                    size = 1
                    for d in filter(None, dims.split(",")):
                        size *= int(d)
                    totals[kind] += size * DTYPE_BYTES[dtype]
                break
    return totals


def compile_step(model, image_shape, num_classes, mesh, spatial_axis=None, segmentation=False):
    tx = optax.sgd(0.1, momentum=0.9)
    step = trainer.make_train_step(model, tx, optax.constant_schedule(0.1))
    state = jax.eval_shape(lambda: trainer.create_state(model, tx, 0, image_shape[1:]))
    state_sh = sharding.state_shardings(mesh, state)
    label_shape = image_shape[:-1] if segmentation else image_shape[:1]
    batch = {
        "image": jax.ShapeDtypeStruct(
            image_shape,
            jnp.float32,
            sharding=sharding.batch_sharding(mesh, len(image_shape), spatial_axis),
        ),
        "label": jax.ShapeDtypeStruct(
            label_shape,
            jnp.int32,
            sharding=sharding.batch_sharding(
                mesh, len(label_shape), spatial_axis if segmentation else None
            ),
        ),
    }
    state = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state, state_sh
    )
    return jax.jit(step, donate_argnums=0).lower(state, batch).compile()


def spatial_table(clip, width, levels, layers):
    """Per-device temp bytes of hyperbolic3d with H split over 1/2/4/8 devices."""
    model = models.create(
        "hyperbolic3d", width=width, levels=levels, layers_per_level=layers, num_classes=4
    )
    rows = []
    for space in (1, 2, 4, 8):
        mesh = sharding.make_mesh(1, space, devices=jax.devices()[:space])
        shape = (1, *clip, 3)
        sharding.check_spatial_divisible(shape, mesh, 2, 2**levels)
        compiled = compile_step(model, shape, 4, mesh, spatial_axis=2, segmentation=True)
        temp = compiled.memory_analysis().temp_size_in_bytes
        comm = collective_bytes(compiled.as_text())
        rows.append(
            {
                "space_devices": space,
                "clip": list(clip),
                "temp_bytes_per_device": int(temp),
                "halo_bytes_per_device": comm["collective-permute"],
                "all_gather_bytes_per_device": comm["all-gather"],
            }
        )
    base = rows[0]["temp_bytes_per_device"]
    for r in rows:
        r["fraction_of_one_device"] = r["temp_bytes_per_device"] / base
    return rows


def weak_scaling(model_name, overrides, per_device_batch, image_shape, num_classes):
    """Measured per-device FLOPs and gradient all-reduce bytes, then the estimate."""
    model = models.create(model_name, **overrides)
    mesh = sharding.make_mesh(8, 1)
    compiled = compile_step(model, (8 * per_device_batch, *image_shape), num_classes, mesh)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", 0.0))
    allreduce = collective_bytes(compiled.as_text())["all-reduce"]
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
    parser.add_argument("--out", default="results/sharding_scaling.json")
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
    print("| devices on 'space' | temp MiB per device | fraction of 1 device | halo KiB |")
    print("|---:|---:|---:|---:|")
    for r in spatial:
        print(
            f"| {r['space_devices']} | {r['temp_bytes_per_device'] / 2**20:.1f} | "
            f"{r['fraction_of_one_device']:.2f} | {r['halo_bytes_per_device'] / 2**10:.0f} |"
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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"spatial": spatial, "weak_scaling": scaling, "assumptions": CLUSTER}, indent=2)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

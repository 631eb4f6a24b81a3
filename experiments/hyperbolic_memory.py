"""Training-step memory of hyperbolic3d: fully reversible vs stored vs block-reversible.

Three variants of the same network (Lensink, Peters, Haber 2019, "Symmetric block-low-rank
layers for fully reversible multilevel neural networks", arXiv:1912.12137: a multilevel network
that is reversible through its Haar-wavelet resolution changes too):

  (a) "reversible":  backprop="reversible", transition="reversible" — nothing stored but the
                     output; the backward pass rebuilds every state, Haar levels included;
  (b) "store":       backprop="store" — plain autodiff, every activation stored;
  (c) "block":       backprop="reversible", transition="stored" — RevNet/Chang-style block
                     reversibility, both states stored at every resolution change.

Memory of one training step as `revjax.memory.model_step_memory` defines it (loss = mean
per-voxel softmax cross-entropy, then an Adam update, parameters and optimizer state donated),
read from XLA's `compiled.memory_analysis()` on `jax.ShapeDtypeStruct` inputs: compile only,
nothing is executed or allocated. "temp" is the scratch XLA needs (activations, gradients,
workspaces); "total" = arguments (params, Adam moments, clip, labels) + outputs + temp.

Two results:

1. temp bytes vs depth (layers per unit) at a fixed clip: (a)'s activations are flat in depth
   (its temp grows only by parameter-sized gradient and Adam-update buffers), (b) grows
   linearly with the activations, (c) is like (a) but pays for the stored resolution changes.
2. the largest clip (frames × S × S, batch 1, float32) each variant can train within 16 GiB
   and 80 GiB. Total memory is affine in the number of voxels V at fixed depth
   (total ≈ α + β·V, α = parameters and gradients), so we compile two clip sizes, fit α, β,
   and extrapolate S_max = sqrt((budget − α)/(β·frames)), rounded down to a multiple of
   2**levels. The extrapolation is an estimate; the full run re-compiles at the predicted
   16 GiB size and reports the compiled total as a check.

Run:  python experiments/hyperbolic_memory.py [--quick] [--out PATH]

Expected (full settings): (a) far below (b), the gap growing with depth. (Earlier versions
measured the gradient only, without the optimizer update; re-measure before comparing.)
"""

from __future__ import annotations

import argparse
import math
import os
import time

# Compile only, nothing runs: XLA CPU backend at -O0 (JAX's "disable most optimizations")
# keeps every HLO pass, so buffer assignment and memory_analysis() bytes are the same as
# fully optimised (checked: the --quick sweep reproduces its committed bytes exactly), and
# compiles several times faster. JAX_DISABLE_MOST_OPTIMIZATIONS=0 turns it off.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402  (after the environment it reads)
import ml_collections  # noqa: E402
import optax  # noqa: E402
from hyperbolic_variants import COMPARISON_VARIANTS  # noqa: E402
from result_files import default_out, write_json  # noqa: E402

from revjax import memory, models  # noqa: E402

GIB = 2**30


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    """Sweep settings; `quick` shrinks everything for a < 1 min smoke run."""
    c = ml_collections.ConfigDict()
    c.model = dict(width=8, levels=2, ranks=8, h=0.5, num_classes=4)
    c.frames = 8
    c.depth_clip_size = 32  # S for the depth sweep (frames × S × S)
    c.depths = [1, 2, 4, 8, 16]  # layers per unit (5 units for 2 levels)
    c.fit_depth = 2  # depth of the largest-clip table
    c.fit_sizes = [32, 64]  # two clip sizes for the affine fit
    c.budgets_gib = [16, 80]
    c.verify = True
    if quick:
        c.frames = 4
        c.depths = [1, 16]
        c.fit_sizes = [16, 32]
        c.verify = False
    return c


OPTIMIZER = optax.adam(1e-3)


def step_memory(model, shape: tuple[int, ...]) -> dict[str, int]:
    """Bytes of one compiled training step (`revjax.memory.model_step_memory`: mean per-voxel
    cross-entropy, Adam update, donated) for a float32 clip of `shape` (N, *S, 3)."""
    return memory.model_step_memory(model, shape, OPTIMIZER)


def make_model(config, variant: str, depth: int):
    return models.create(
        "hyperbolic3d", units=depth, **config.model, **COMPARISON_VARIANTS[variant]
    )


def depth_sweep(config) -> list[dict]:
    """temp bytes per variant and depth at a fixed clip."""
    s = config.depth_clip_size
    shape = (1, config.frames, s, s, 3)
    rows = []
    for depth in config.depths:
        row = {"layers_per_unit": depth, "clip": list(shape[1:4])}
        for variant in COMPARISON_VARIANTS:
            mem = step_memory(make_model(config, variant, depth), shape)
            row[variant] = mem["temp"]
        rows.append(row)
    return rows


def _round_size(size: float, multiple: int) -> int:
    return int(size // multiple) * multiple


def largest_clips(config) -> list[dict]:
    """Affine fit total(V) = α + β·V from two compiled sizes, solved for each budget."""
    multiple = 2 ** config.model["levels"]
    rows = []
    for variant in COMPARISON_VARIANTS:
        model = make_model(config, variant, config.fit_depth)
        points = []
        for s in config.fit_sizes:
            shape = (1, config.frames, s, s, 3)
            points.append((config.frames * s * s, step_memory(model, shape)["total"]))
        (v0, m0), (v1, m1) = points
        beta = (m1 - m0) / (v1 - v0)
        alpha = m0 - beta * v0
        row = {
            "variant": variant,
            "bytes_per_voxel": beta,
            "fixed_bytes": alpha,
            "fit_points": points,
        }
        for gib in config.budgets_gib:
            voxels = (gib * GIB - alpha) / beta
            side = _round_size(math.sqrt(max(voxels, 0) / config.frames), multiple)
            row[f"side_{gib}gib"] = side
            row[f"voxels_{gib}gib"] = config.frames * side * side
        if config.verify:
            side = row[f"side_{config.budgets_gib[0]}gib"]
            shape = (1, config.frames, side, side, 3)
            row["verified_total_at_first_budget"] = step_memory(model, shape)["total"]
        rows.append(row)
    return rows


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def markdown(depth_rows: list[dict], clip_rows: list[dict], config) -> str:
    lines = [
        f"temp MiB of one training step, clip {depth_rows[0]['clip']} (frames, H, W):",
        "",
        "| layers/unit | (a) reversible | (b) store | (c) block | (b)/(a) |",
        "|---|---|---|---|---|",
    ]
    for r in depth_rows:
        ratio = r["store"] / max(r["reversible"], 1)
        lines.append(
            f"| {r['layers_per_unit']} | {_mib(r['reversible'])} | {_mib(r['store'])} | "
            f"{_mib(r['block'])} | {ratio:.1f}x |"
        )
    lines += [
        "",
        f"largest trainable clip, {config.frames} frames × S × S, batch 1, float32, "
        f"{config.fit_depth} layers/unit (extrapolated from compiled sizes "
        f"{list(config.fit_sizes)}; memory affine in voxels):",
        "",
        "| variant | bytes/voxel | "
        + " | ".join(f"S @ {g} GiB | voxels @ {g} GiB" for g in config.budgets_gib)
        + " | compiled total at first budget |",
        "|---|---|" + "---|---|" * len(config.budgets_gib) + "---|",
    ]
    for r in clip_rows:
        cells = " | ".join(
            f"{r[f'side_{g}gib']} | {r[f'voxels_{g}gib']:,}" for g in config.budgets_gib
        )
        check = r.get("verified_total_at_first_budget")
        check = f"{check / GIB:.2f} GiB" if check is not None else "—"
        lines.append(f"| {r['variant']} | {r['bytes_per_voxel']:.0f} | {cells} | {check} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings, < 1 min")
    parser.add_argument("--out", default=default_out("hyperbolic_memory.json"))
    args = parser.parse_args(argv)
    config = get_config(args.quick)
    start = time.perf_counter()
    depth_rows = depth_sweep(config)
    # the depth sweep so far, in case the fit is cut short
    write_json(
        args.out, {"config": config.to_dict(), "depth_sweep_temp_bytes": depth_rows}, quiet=True
    )
    clip_rows = largest_clips(config)
    table = markdown(depth_rows, clip_rows, config)
    print(table)
    result = {
        "config": config.to_dict(),
        "backend": jax.default_backend(),
        "depth_sweep_temp_bytes": depth_rows,
        "largest_clip": clip_rows,
        "seconds": time.perf_counter() - start,
    }
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()

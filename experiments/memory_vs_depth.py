"""Memory and time of a training step vs depth: reversible vs store vs remat (issue: the engine).

A RevNet-style stack of additive couplings, F and G = conv3x3 -> ReLU -> conv3x3 on C/2
channels, run with `lax.scan` over stacked parameters. For each depth and backprop mode it
compiles value_and_grad of a scalar loss w.r.t. (params, x) and reports

- temp_bytes: XLA's compiled temporary buffer size (`memory_analysis()`), exact;
- step_seconds: median wall time of the compiled step (all modes timed in one run, so only the
  ratios are meaningful).

Two extra baselines show the conv-in-scan trap on CPU (see revjax/conv.py):
- "store_loop_lax": Python-unrolled loop of plain `lax.conv` steps, plain autodiff;
- "store_scan_lax": the same inside `lax.scan` (XLA's own conv transpose in the scan body).

`--exact` instead measures the cost of exact (fixed-point) arithmetic (`revjax.fixed_point`):
the same stack with `exact_additive_coupling` (int32 states, straight-through gradients), for
reversible and store backprop, the four compiled steps timed round-robin (interleaved) so that
machine load affects float and exact alike.

Expected (issue targets): reversible temp bytes flat in depth and >= 10x below "store" at
depth 64; reversible time <= 1.4x "store" and no slower than "remat".

    python experiments/memory_vs_depth.py --quick --json results/memory_vs_depth.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax

from revjax import engine
from revjax import fixed_point as fp
from revjax.conv import conv
from revjax.couplings import additive_coupling

DN = ("NHWC", "HWIO", "NHWC")


def residual(conv_fn):
    def F(p, u, rng=None):
        return conv_fn(jax.nn.relu(conv_fn(u, p["w1"]) + p["b1"]), p["w2"])

    return F


def lax_conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)


def init_params(key, depth, half):
    def one(k):
        ks = jax.random.split(k, 4)
        w = lambda kk: jax.random.normal(kk, (3, 3, half, half)) * (0.5 / (3 * half**0.5))
        return {
            "F": {"w1": w(ks[0]), "w2": w(ks[1]), "b1": jnp.zeros(half)},
            "G": {"w1": w(ks[2]), "w2": w(ks[3]), "b1": jnp.zeros(half)},
        }

    return jax.vmap(one)(jax.random.split(key, depth))


def make_step(mode: str):
    """value_and_grad of loss(params, x) for one backprop strategy."""
    if mode in ("reversible", "store", "remat"):
        step = additive_coupling(residual(conv), residual(conv))

        def body(params, x):
            return engine.apply([engine.Scan(step)], [params], x, backprop=mode)

    elif mode == "store_scan_lax":
        step = additive_coupling(residual(lax_conv), residual(lax_conv))

        def body(params, x):
            return engine.apply([engine.Scan(step)], [params], x, backprop="store")

    elif mode == "store_loop_lax":
        step = additive_coupling(residual(lax_conv), residual(lax_conv))

        def body(params, x):
            depth = jax.tree.leaves(params)[0].shape[0]
            for j in range(depth):
                x = step.forward(jax.tree.map(lambda a, j=j: a[j], params), x)
            return x

    elif mode in ("exact_reversible", "exact_store"):
        step = fp.exact_additive_coupling(residual(conv), residual(conv))
        backprop = mode.removeprefix("exact_")

        def body(params, x):
            state = engine.apply([engine.Scan(step)], [params], fp.encode(x), backprop=backprop)
            return fp.decode(state)

    else:
        raise ValueError(mode)

    def loss(params, x):
        y1, y2 = body(params, x)
        return jnp.mean(y1**2) + jnp.mean(y2**2)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def measure(mode, depth, batch, size, channels, repeats, time_it=True):
    half = channels // 2
    params = init_params(jax.random.key(0), depth, half)
    kx1, kx2 = jax.random.split(jax.random.key(1))
    x = (
        jax.random.normal(kx1, (batch, size, size, half)),
        jax.random.normal(kx2, (batch, size, size, half)),
    )
    fn = make_step(mode)
    t0 = time.perf_counter()
    compiled = fn.lower(params, x).compile()
    compile_seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    record = {
        "depth": depth,
        "backprop": mode,
        "temp_bytes": int(mem.temp_size_in_bytes),
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "compile_seconds": compile_seconds,
        "step_seconds": None,
    }
    if time_it:
        jax.block_until_ready(compiled(params, x))
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            jax.block_until_ready(compiled(params, x))
            times.append(time.perf_counter() - t)
        record["step_seconds"] = statistics.median(times)
    return record


def measure_exact_cost(depth, batch, size, channels, repeats):
    """Float vs exact, reversible and store: temp bytes and interleaved median step time."""
    modes = ["reversible", "exact_reversible", "store", "exact_store"]
    half = channels // 2
    params = init_params(jax.random.key(0), depth, half)
    kx1, kx2 = jax.random.split(jax.random.key(1))
    x = (
        jax.random.normal(kx1, (batch, size, size, half)),
        jax.random.normal(kx2, (batch, size, size, half)),
    )
    compiled = {m: make_step(m).lower(params, x).compile() for m in modes}
    times = {m: [] for m in modes}
    for m in modes:
        jax.block_until_ready(compiled[m](params, x))
    for _ in range(repeats):
        for m in modes:
            t = time.perf_counter()
            jax.block_until_ready(compiled[m](params, x))
            times[m].append(time.perf_counter() - t)
    records = []
    for m in modes:
        mem = compiled[m].memory_analysis()
        records.append(
            {
                "depth": depth,
                "backprop": m,
                "temp_bytes": int(mem.temp_size_in_bytes),
                "step_seconds": statistics.median(times[m]),
            }
        )
    by_mode = {r["backprop"]: r for r in records}
    for r in records:
        float_mode = r["backprop"].removeprefix("exact_")
        ref = by_mode[float_mode]
        r["time_ratio_this_over_float"] = r["step_seconds"] / ref["step_seconds"]
        r["memory_ratio_this_over_float"] = r["temp_bytes"] / max(ref["temp_bytes"], 1)
    return records


def format_exact_table(records):
    lines = [
        "| depth | backprop | temp MiB | step ms | time / float | memory / float |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in records:
        lines.append(
            f"| {r['depth']} | {r['backprop']} | {r['temp_bytes'] / 2**20:.2f} | "
            f"{1e3 * r['step_seconds']:.1f} | {r['time_ratio_this_over_float']:.2f} | "
            f"{r['memory_ratio_this_over_float']:.2f} |"
        )
    return "\n".join(lines)


def add_ratios(records):
    by_key = {(r["depth"], r["backprop"]): r for r in records}
    for r in records:
        store = by_key.get((r["depth"], "store"))
        if store is None:
            continue
        r["memory_ratio_store_over_this"] = store["temp_bytes"] / max(r["temp_bytes"], 1)
        if r["step_seconds"] and store["step_seconds"]:
            r["time_ratio_this_over_store"] = r["step_seconds"] / store["step_seconds"]
    return records


def format_table(records):
    lines = [
        "| depth | backprop | temp MiB | store/this memory | time / store time |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in records:
        mem_ratio = r.get("memory_ratio_store_over_this")
        t_ratio = r.get("time_ratio_this_over_store")
        lines.append(
            f"| {r['depth']} | {r['backprop']} | {r['temp_bytes'] / 2**20:.1f} | "
            f"{'' if mem_ratio is None else f'{mem_ratio:.1f}x'} | "
            f"{'' if t_ratio is None else f'{t_ratio:.2f}'} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="sub-minute run")
    parser.add_argument("--json", default="results/memory_vs_depth.json")
    parser.add_argument("--depths", type=int, nargs="*")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--exact", action="store_true", help="float vs exact arithmetic cost")
    args = parser.parse_args(argv)
    if args.exact:
        depths = args.depths or [16]
        records = []
        for depth in depths:
            records += measure_exact_cost(depth, args.batch, args.size, args.channels, args.repeats)
        print(
            f"RevNet-style stack, {args.channels} channels, {args.size}x{args.size}, batch "
            f"{args.batch}, {jax.devices()[0].platform}, float vs exact (interleaved timing)"
        )
        print(format_exact_table(records))
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(records, indent=2))
        print(f"wrote {out}")
        return
    if args.quick:
        depths = args.depths or [4, 16]
        batch, size, repeats = 8, 16, 3
    else:
        depths = args.depths or [8, 16, 32, 64]
        batch, size, repeats = args.batch, args.size, args.repeats
    modes = ["reversible", "store", "remat", "store_loop_lax", "store_scan_lax"]
    records = []
    for depth in depths:
        for mode in modes:
            # The lax-conv-in-scan baseline is very slow on CPU: time it at the smallest depth.
            time_it = mode != "store_scan_lax" or depth == depths[0]
            records.append(measure(mode, depth, batch, size, args.channels, repeats, time_it))
            print(f"  measured depth={depth} {mode}", file=sys.stderr, flush=True)
    add_ratios(records)
    print(
        f"RevNet-style stack, {args.channels} channels, {size}x{size}, batch {batch}, "
        f"{jax.devices()[0].platform}"
    )
    print(format_table(records))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

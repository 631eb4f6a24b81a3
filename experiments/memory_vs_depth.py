"""Memory and time of a training step vs depth: reversible vs store vs remat (issue: the engine).

A RevNet-style stack of additive couplings, F and G = conv3x3 -> ReLU -> conv3x3 on C/2
channels, run with `lax.scan` over stacked parameters. For each depth and backprop mode it
compiles one training step (`revjax.memory.update_step`: value_and_grad of a scalar loss, then
an SGD-with-momentum update, params and optimizer state donated) and reports

- temp_bytes: XLA's compiled temporary buffer size (`revjax.memory.update_step_memory`), exact;
- step_seconds / time_ratio_this_over_store: all modes of one depth timed round-robin in the
  same process (`revjax.benchmark.interleaved_times`); the ratio is the median over rounds of
  t(mode) / t(store) within a round, so machine load cancels out of it.

Two extra baselines show the conv-in-scan trap on CPU (see revjax/conv.py):
- "store_loop_lax": Python-unrolled loop of plain `lax.conv` steps, plain autodiff;
- "store_scan_lax": the same inside `lax.scan` (XLA's own conv transpose in the scan body).

`--exact` instead measures the cost of exact (fixed-point) arithmetic (`revjax.fixed_point`):
the same stack with `exact_additive_coupling` (int32 states, straight-through gradients), for
reversible and store backprop, the four compiled steps timed round-robin (interleaved) so that
machine load affects float and exact alike.

Expected (issue targets): reversible temp bytes flat in depth and >= 10x below "store" at
depth 64; reversible time <= 1.4x "store" and no slower than "remat".

    python experiments/memory_vs_depth.py --quick --out experiments/results/memory_vs_depth.json
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import optax
from jax import lax
from result_files import default_out, write_json

from revjax import benchmark, engine, memory
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


OPTIMIZER = optax.sgd(0.01, momentum=0.9)


def make_loss(mode: str):
    """loss(params, x) for one backprop strategy (or one of the lax-conv baselines)."""
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

    return loss


def inputs(depth, batch, size, channels):
    half = channels // 2
    params = init_params(jax.random.key(0), depth, half)
    kx1, kx2 = jax.random.split(jax.random.key(1))
    x = (
        jax.random.normal(kx1, (batch, size, size, half)),
        jax.random.normal(kx2, (batch, size, size, half)),
    )
    return params, x


def measure_memory(mode, depth, batch, size, channels):
    """(record, compiled step): temp bytes of the donated update, and the executable itself."""
    params, x = inputs(depth, batch, size, channels)
    t0 = time.perf_counter()
    compiled = memory.compile_update_step(make_loss(mode), params, x, OPTIMIZER)
    stats = memory.compiled_memory(compiled)
    record = {
        "depth": depth,
        "backprop": mode,
        "temp_bytes": stats["temp"],
        "argument_bytes": stats["arguments"],
        "output_bytes": stats["outputs"],
        "compile_seconds": time.perf_counter() - t0,
        "step_seconds": None,
    }
    return record, compiled


def time_modes(compiled_steps, depth, batch, size, channels, rounds):
    """{mode: {"median_seconds", "ratio_to_baseline"}} of the compiled steps, round-robin
    (`revjax.benchmark`), each mode threading its own donated (params, opt_state)."""
    params, x = inputs(depth, batch, size, channels)
    calls = benchmark.update_step_calls(compiled_steps, params, OPTIMIZER.init(params), x)
    return benchmark.summarize(benchmark.interleaved_times(calls, rounds), baseline="store")


def measure_exact_cost(depth, batch, size, channels, rounds):
    """Float vs exact, reversible and store: temp bytes of the donated update and interleaved
    step times (round-robin, ratios from the same rounds)."""
    modes = ["reversible", "exact_reversible", "store", "exact_store"]
    compiled, records = {}, []
    for mode in modes:
        record, compiled[mode] = measure_memory(mode, depth, batch, size, channels)
        records.append(record)
    timing = time_modes(compiled, depth, batch, size, channels, rounds)
    by_mode = {r["backprop"]: r for r in records}
    for r in records:
        r["step_seconds"] = timing[r["backprop"]]["median_seconds"]
    for r in records:
        ref = by_mode[r["backprop"].removeprefix("exact_")]
        r["time_ratio_this_over_float"] = (
            timing[r["backprop"]]["ratio_to_baseline"]
            / timing[ref["backprop"]]["ratio_to_baseline"]
        )
        r["memory_ratio_this_over_float"] = r["temp_bytes"] / max(ref["temp_bytes"], 1)
    return records


def add_ratios(records):
    by_key = {(r["depth"], r["backprop"]): r for r in records}
    for r in records:
        store = by_key.get((r["depth"], "store"))
        if store is None:
            continue
        r["memory_ratio_store_over_this"] = store["temp_bytes"] / max(r["temp_bytes"], 1)
    return records


def _ratio_cell(value, suffix=""):
    return "" if value is None else f"{value:.2f}{suffix}"


# (header, cell) columns of the two tables; `cell(record) -> str`.
DEPTH_COLUMNS = (
    ("depth", lambda r: str(r["depth"])),
    ("backprop", lambda r: r["backprop"]),
    ("temp MiB", lambda r: f"{r['temp_bytes'] / 2**20:.2f}"),
    ("store/this memory", lambda r: _ratio_cell(r.get("memory_ratio_store_over_this"), "x")),
    ("time / store time", lambda r: _ratio_cell(r.get("time_ratio_this_over_store"))),
)
EXACT_COLUMNS = (
    ("depth", lambda r: str(r["depth"])),
    ("backprop", lambda r: r["backprop"]),
    ("temp MiB", lambda r: f"{r['temp_bytes'] / 2**20:.2f}"),
    ("step ms", lambda r: f"{1e3 * r['step_seconds']:.1f}"),
    ("time / float", lambda r: _ratio_cell(r["time_ratio_this_over_float"])),
    ("memory / float", lambda r: _ratio_cell(r["memory_ratio_this_over_float"])),
)


def format_table(records, columns=DEPTH_COLUMNS) -> str:
    """A markdown table, one row per record; `columns` = ((header, cell(record) -> str), ...).
    Numbers are right-aligned, the backprop name left-aligned."""
    align = ["---:" if header != "backprop" else "---" for header, _ in columns]
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "|".join(align) + "|"]
    for r in records:
        lines.append("| " + " | ".join(cell(r) for _, cell in columns) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="sub-minute run")
    parser.add_argument("--out", default=default_out("memory_vs_depth.json"))
    parser.add_argument("--depths", type=int, nargs="*")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--exact", action="store_true", help="float vs exact arithmetic cost")
    args = parser.parse_args(argv)
    if args.exact:
        depths = args.depths or [16]
        records = []
        for depth in depths:
            records += measure_exact_cost(depth, args.batch, args.size, args.channels, args.rounds)
        print(
            f"RevNet-style stack, {args.channels} channels, {args.size}x{args.size}, batch "
            f"{args.batch}, {jax.devices()[0].platform}, float vs exact (interleaved timing)"
        )
        print(format_table(records, EXACT_COLUMNS))
        write_json(args.out, records)
        return
    if args.quick:
        depths = args.depths or [4, 16]
        batch, size, rounds = 8, 16, 3
    else:
        depths = args.depths or [8, 16, 32, 64]
        batch, size, rounds = args.batch, args.size, args.rounds
    modes = ["reversible", "store", "remat", "store_loop_lax", "store_scan_lax"]
    records = []
    for depth in depths:
        by_mode, compiled = {}, {}
        for mode in modes:
            by_mode[mode], compiled[mode] = measure_memory(mode, depth, batch, size, args.channels)
            records.append(by_mode[mode])
            print(f"  compiled depth={depth} {mode}", file=sys.stderr, flush=True)
        # The lax-conv-in-scan baseline is very slow on CPU: time it at the smallest depth.
        timed = {m: c for m, c in compiled.items() if m != "store_scan_lax" or depth == depths[0]}
        for mode, t in time_modes(timed, depth, batch, size, args.channels, rounds).items():
            by_mode[mode]["step_seconds"] = t["median_seconds"]
            by_mode[mode]["time_ratio_this_over_store"] = t["ratio_to_baseline"]
        print(f"  timed depth={depth}", file=sys.stderr, flush=True)
    add_ratios(records)
    print(
        f"RevNet-style stack, {args.channels} channels, {size}x{size}, batch {batch}, "
        f"{jax.devices()[0].platform}"
    )
    print(format_table(records))
    write_json(args.out, records)


if __name__ == "__main__":
    main()

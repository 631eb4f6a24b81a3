"""CPU training-step time of one additive-coupling stack: PyTorch (stored) vs revjax.

The block (RevNet additive coupling, Gomez, Ren, Urtasun, Grosse 2017, arXiv:1707.04585,
Sec. 3.1), `depth` times, on a state (x1, x2) of two (N, C, H, W) halves::

    y1 = x1 + F(x2),   y2 = x2 + G(y1),   F = G = conv3x3 -> ReLU -> conv3x3 (bias on both)

with C = `--channels` channels per half. Every variant runs the same training step on the same
parameters (PyTorch's default initialisation, copied into JAX in HWIO/NHWC): forward, loss
mean(y1²) + mean(y2²), backward, SGD-with-momentum update (lr 0.01, momentum 0.9).

Variants:
- torch_store: plain PyTorch autograd (all activations stored), `torch.set_num_threads` set to
  the number of CPU threads XLA uses (the cores this process may run on).
- store / reversible / remat: `revjax.engine.apply(..., backprop=...)` of the same coupling in
  one `lax.scan`, jitted with params and optimizer state donated
  (`revjax.memory.compile_update_step`).
- extra variants named on the command line (`--extra`): the same revjax steps with a scan
  unroll factor or XLA:CPU compiler options, compiled in this process
  (`Lowered.compile(compiler_options=...)`), so they are timed in the same rounds.

All variants are timed round-robin in one process (`revjax.benchmark.interleaved_times`); a
ratio is the median over rounds of t(variant) / t(torch_store) within a round, so load on this
shared machine cancels out of the ratios. Absolute milliseconds are those of this machine.

PyTorch is a measurement-only dependency (not one of revjax's); install the CPU build with

    pip install torch --index-url https://download.pytorch.org/whl/cpu

and run

    python experiments/torch_parity.py --out experiments/results/torch_parity.json

(`taskset -c 1 python ...` pins one core: one thread each, the stable setting on a shared
machine; `--ops` adds one conv layer's forward / input-gradient / kernel-gradient timings.)
Without torch the script says so in one line and exits with status 1, or with `--jax-only`
times the revjax variants alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from result_files import default_out, write_json

from revjax import benchmark, engine, memory
from revjax.conv import conv
from revjax.couplings import additive_coupling

LEARNING_RATE, MOMENTUM = 0.01, 0.9
OPTIMIZER = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)

# name -> (backprop, scan unroll, XLA compiler options) of the revjax variants.
JAX_VARIANTS = {
    "store": ("store", 1, {}),
    "reversible": ("reversible", 1, {}),
    "remat": ("remat", 1, {}),
}


def cpu_threads() -> int:
    """CPU threads XLA:CPU's thread pool uses: the cores this process may run on."""
    return len(os.sched_getaffinity(0))


# --------------------------------------------------------------------------------------------
# revjax side.


def residual(p, u, rng=None):
    """F(u) = conv3x3(relu(conv3x3(u, w1) + b1), w2) + b2; u: (N, H, W, C), w: (3, 3, C, C)."""
    h = jax.nn.relu(conv(u, p["w1"]) + p["b1"])
    return conv(h, p["w2"]) + p["b2"]


def coupling_loss(backprop: str, unroll: int = 1):
    """loss(params, (x1, x2)) = mean(y1²) + mean(y2²) of the stacked coupling, one `lax.scan`."""
    step = additive_coupling(residual, residual)
    layers = [engine.Scan(step, unroll=unroll)] if unroll != 1 else [engine.Scan(step)]

    def loss(params, x):
        y1, y2 = engine.apply(layers, [params], x, backprop=backprop)
        return jnp.mean(y1**2) + jnp.mean(y2**2)

    return loss


def compile_step(backprop: str, unroll: int, options: dict, params, x):
    """The donated update step (params, opt_state, x) -> (params, opt_state, loss), compiled."""
    abstract_params = memory.abstract(params)
    opt_state = jax.eval_shape(OPTIMIZER.init, abstract_params)
    step = jax.jit(
        memory.update_step(coupling_loss(backprop, unroll), OPTIMIZER), donate_argnums=(0, 1)
    )
    lowered = step.lower(abstract_params, opt_state, memory.abstract(x))
    return lowered.compile(compiler_options=options or None)


def random_params(seed: int, depth: int, channels: int):
    """Stacked {"w1", "b1", "w2", "b2"} of F and G (leading axis `depth`, weights HWIO), drawn
    uniformly in ±1/sqrt(9 C) (PyTorch's default Conv2d scale). NumPy: nothing to compile."""
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(9 * channels)

    def u(*shape):
        return jnp.asarray(rng.uniform(-bound, bound, (depth, *shape)).astype(np.float32))

    w = (3, 3, channels, channels)
    return {
        name: {"w1": u(*w), "b1": u(channels), "w2": u(*w), "b2": u(channels)}
        for name in ("F", "G")
    }


def random_inputs(seed: int, batch: int, size: int, channels: int):
    """(x1, x2): two (batch, size, size, channels) standard-normal halves (NHWC)."""
    rng = np.random.default_rng(seed)
    shape = (batch, size, size, channels)
    return tuple(jnp.asarray(rng.standard_normal(shape).astype(np.float32)) for _ in range(2))


def jax_runner(compiled, params, x):
    """A zero-argument call of one training step that threads its own (params, opt_state)."""
    state = [jax.tree.map(jnp.copy, params), OPTIMIZER.init(params)]

    def run():
        state[0], state[1], loss = compiled(state[0], state[1], x)
        return loss

    return run


# --------------------------------------------------------------------------------------------
# PyTorch side (imported lazily: torch is optional).


def torch_model(torch, params, depth: int):
    """The stack as torch modules, with the JAX parameters copied (HWIO -> OIHW)."""
    nn = torch.nn

    def conv_from(w, b):
        c_in, c_out = w.shape[2], w.shape[3]
        layer = nn.Conv2d(c_in, c_out, 3, padding=1, bias=True)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(np.asarray(w).transpose(3, 2, 0, 1).copy()))
            layer.bias.copy_(torch.from_numpy(np.asarray(b).copy()))
        return layer

    def residual_module(p, j):
        return nn.Sequential(
            conv_from(p["w1"][j], p["b1"][j]), nn.ReLU(), conv_from(p["w2"][j], p["b2"][j])
        )

    class Coupling(nn.Module):
        def __init__(self, j):
            super().__init__()
            self.F = residual_module(params["F"], j)
            self.G = residual_module(params["G"], j)

        def forward(self, x1, x2):
            y1 = x1 + self.F(x2)
            return y1, x2 + self.G(y1)

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Coupling(j) for j in range(depth)])

        def forward(self, x1, x2):
            for block in self.blocks:
                x1, x2 = block(x1, x2)
            return x1, x2

    return Stack()


def torch_runner(torch, model, x):
    """A zero-argument stored (plain autograd) training step: forward, loss, backward, SGD."""
    x1, x2 = (torch.from_numpy(np.asarray(u).transpose(0, 3, 1, 2).copy()) for u in x)
    opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)

    def run():
        opt.zero_grad(set_to_none=True)
        y1, y2 = model(x1, x2)
        loss = y1.square().mean() + y2.square().mean()
        loss.backward()
        opt.step()
        return loss.item()

    return run


# --------------------------------------------------------------------------------------------
# Per-operation profile: the three convolutions of one 3x3 conv layer, XLA vs PyTorch.


def time_conv_ops(torch, batch: int, size: int, channels: int, rounds: int) -> dict:
    """{op: {"median_seconds", "ratio_to_baseline"}} of one conv layer's forward, input gradient
    (K^T ȳ) and kernel gradient, revjax.conv (XLA) vs PyTorch, interleaved; baseline torch_fwd.

    The revjax ops are the exact kernels of `revjax.conv`'s custom VJP (the kernel gradient
    includes its two operand transposes), jitted one by one.
    """
    from revjax.conv import _forward, _input_cotangent, _kernel_cotangent

    rng = np.random.default_rng(2)
    shape = (batch, size, size, channels)
    x, g = (jnp.asarray(rng.standard_normal(shape).astype(np.float32)) for _ in range(2))
    w = jnp.asarray(rng.standard_normal((3, 3, channels, channels)).astype(np.float32))
    pads, unit = ((1, 1), (1, 1)), (1, 1)
    fwd = jax.jit(lambda x, w: _forward(x, w, unit, pads))
    x_grad = jax.jit(lambda g, w: _input_cotangent(g, w, unit, pads, (size, size)))
    k_grad = jax.jit(lambda x, g: _kernel_cotangent(x, g, unit, pads, (3, 3)))
    fns = {
        "xla_fwd": lambda: fwd(x, w),
        "xla_input_grad": lambda: x_grad(g, w),
        "xla_kernel_grad": lambda: k_grad(x, g),
    }
    if torch is not None:
        layer = torch.nn.Conv2d(channels, channels, 3, padding=1)
        tx = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
        tg = torch.from_numpy(np.asarray(g).transpose(0, 3, 1, 2).copy())
        grad = torch.nn.grad

        def torch_fwd():
            with torch.no_grad():
                return layer(tx).sum().item()

        fns["torch_fwd"] = torch_fwd
        fns["torch_input_grad"] = lambda: (
            grad.conv2d_input(tx.shape, layer.weight, tg, padding=1).sum().item()
        )
        fns["torch_kernel_grad"] = lambda: (
            grad.conv2d_weight(tx, layer.weight.shape, tg, padding=1).sum().item()
        )
    times = benchmark.interleaved_times(fns, rounds, warmup=3, min_seconds=0.02)
    baseline = "torch_fwd" if torch is not None else "xla_fwd"
    return benchmark.summarize(times, baseline=baseline)


# --------------------------------------------------------------------------------------------


def parse_extra(spec: str):
    """'name:backprop:unroll[:flag=value,...]' -> (name, (backprop, unroll, options))."""
    parts = spec.split(":")
    if len(parts) not in (3, 4):
        raise ValueError(f"--extra {spec!r}: expected name:backprop:unroll[:flag=value,...]")
    name, backprop, unroll = parts[0], parts[1], int(parts[2])
    engine.check_backprop(backprop)
    options = {}
    if len(parts) == 4 and parts[3]:
        for item in parts[3].split(","):
            key, value = item.split("=", 1)
            options[key] = {"true": True, "false": False}.get(value.lower(), value)
    return name, (backprop, unroll, options)


def run(args) -> dict:
    # libgomp's default busy-waiting stalls PyTorch's 2-thread ops by 10-100x whenever the
    # machine is oversubscribed (a shared 2-core box); passive waiting is the sane setting
    # there. It must be set before torch (libgomp) is loaded; an explicit value is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
    except ImportError:
        torch = None
        print(
            "torch_parity: PyTorch is not installed (pip install torch --index-url "
            "https://download.pytorch.org/whl/cpu); "
            + ("timing revjax only" if args.jax_only else "nothing to compare"),
            file=sys.stderr,
        )
        if not args.jax_only:
            raise SystemExit(1) from None
    threads = cpu_threads()
    params = random_params(0, args.depth, args.channels)
    x = random_inputs(1, args.batch, args.size, args.channels)
    variants = {k: v for k, v in JAX_VARIANTS.items() if k in args.variants}
    variants.update(parse_extra(s) for s in args.extra)
    fns, compile_seconds, first_loss = {}, {}, {}
    if torch is not None and not args.jax_only:
        torch.set_num_threads(threads)
        model = torch_model(torch, params, args.depth)
        fns["torch_store"] = torch_runner(torch, model, x)
    for name, (backprop, unroll, options) in variants.items():
        t0 = time.perf_counter()
        compiled = compile_step(backprop, unroll, options, params, x)
        compile_seconds[name] = time.perf_counter() - t0
        fns[name] = jax_runner(compiled, params, x)
        print(f"  compiled {name} ({compile_seconds[name]:.1f} s)", file=sys.stderr, flush=True)
    for name, fn in fns.items():  # the first call is the loss at the shared initial params
        first_loss[name] = float(fn())
    baseline = "torch_store" if "torch_store" in fns else next(iter(fns))
    times = benchmark.interleaved_times(fns, args.rounds, warmup=args.warmup)
    summary = benchmark.summarize(times, baseline=baseline)
    ops = None
    if args.ops:
        ops = time_conv_ops(
            None if args.jax_only else torch, args.batch, args.size, args.channels, args.rounds
        )
    return {
        "conv_ops": ops,
        "block": "additive coupling, F = G = conv3x3 -> ReLU -> conv3x3 (bias)",
        "depth": args.depth,
        "batch": args.batch,
        "size": args.size,
        "channels_per_half": args.channels,
        "threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "rounds": args.rounds,
        "baseline": baseline,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "versions": {
            "jax": jax.__version__,
            "torch": None if torch is None else torch.__version__,
        },
        "variants": {
            name: {
                "backprop": "store" if name == "torch_store" else variants[name][0],
                "unroll": None if name == "torch_store" else variants[name][1],
                "compiler_options": None if name == "torch_store" else variants[name][2],
                "median_ms": 1e3 * summary[name]["median_seconds"],
                "ratio_to_baseline": summary[name]["ratio_to_baseline"],
                "first_loss": first_loss[name],
                "compile_seconds": compile_seconds.get(name),
                "round_ms": [1e3 * t for t in times[name]],
            }
            for name in fns
        },
    }


def format_table(result: dict) -> str:
    lines = [
        f"| variant | step ms (median) | time / {result['baseline']} (median of round ratios) "
        "| loss at the shared initial params |",
        "|---|---:|---:|---:|",
    ]
    for name, r in result["variants"].items():
        lines.append(
            f"| {name} | {r['median_ms']:.1f} | {r['ratio_to_baseline']:.2f} "
            f"| {r['first_loss']:.6f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=16, help="channels of each half")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variants", nargs="*", default=["store", "reversible"])
    parser.add_argument(
        "--extra", nargs="*", default=[], help="name:backprop:unroll[:xla_flag=value,...]"
    )
    parser.add_argument("--jax-only", action="store_true", help="time the revjax variants only")
    parser.add_argument(
        "--ops", action="store_true", help="also time one conv layer's three convolutions"
    )
    parser.add_argument("--out", default=default_out("torch_parity.json"))
    args = parser.parse_args(argv)
    result = run(args)
    print(
        f"additive-coupling stack, depth {result['depth']}, {result['channels_per_half']} "
        f"channels per half, {result['size']}x{result['size']}, batch {result['batch']}, "
        f"{result['threads']} threads, {result['rounds']} interleaved rounds"
    )
    print(format_table(result))
    if result["conv_ops"]:
        print("one 3x3 conv layer, ms per call (ratio to the PyTorch forward):")
        for op, r in result["conv_ops"].items():
            print(f"  {op:18s} {1e3 * r['median_seconds']:8.3f}  {r['ratio_to_baseline']:.2f}")
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()

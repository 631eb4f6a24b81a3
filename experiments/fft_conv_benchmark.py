"""Runtime of low-cost convolutions vs a full conv (Ephrath, Eliasof, Ruthotto, Haber, Treister
2019, "LeanResNet: Low-cost parameterizations of deep convolutional neural networks",
arXiv:1805.07821, Figure 1).

For an input ``(B, n, n, c)`` and ``k x k`` stencils, times (jit, ``block_until_ready``, all ops
of a point alternated round-robin for ``--repeats`` rounds by ``revjax.benchmark``,
compile/warm-up excluded) and reports ``t(full conv) / t(op)`` (median over rounds of the
within-round ratio):

* ``full``: fully coupled ``c -> c`` ``lax.conv`` (``SAME``), the reference (ratio 1);
* ``depthwise_direct``: ``lax.conv`` with ``feature_group_count=c``;
* ``depthwise_taps``: :func:`revjax.families.lean.depthwise_zero_pad`, the same operator as a
  sum of ``k²`` shifted products (what the LeanResNet MobileNet and LinearMix steps use);
* ``depthwise_fft``: :func:`revjax.fft.depthwise_conv` (periodic);
* ``implicit_rd``: :func:`revjax.fft.implicit_diffusion_solve`;
* ``circulant``: :func:`revjax.fft.circulant_conv`.

``--grad`` times the forward and backward pass instead (the gradient of ``sum(op(x))`` with
respect to the input and the stencils), the cost a training step pays.

Sweeps (one varied, the others at the default point ``n = 64, k = 3, c = 256``): image size,
kernel size 3/5/7, channels 64-1024. The paper (Titan Xp, cuDNN, batch 64) finds the ratio
independent of image size, growing with kernel size for the FFT operators, and linear in the
channel count, crossing 1 near 200 channels for the FFT versions. On a CPU the constants
differ; the script reports where its own channel sweep crosses 1 (log-linear interpolation).

Usage::

    python experiments/fft_conv_benchmark.py --quick               # < 1 min, tiny sizes
    python experiments/fft_conv_benchmark.py --batch 8 --channels 64 128 256 512
    python experiments/fft_conv_benchmark.py                        # paper settings (slow on CPU)
    python experiments/fft_conv_benchmark.py --grad --batch 32 --size 32 --sizes 32 \
        --kernels 3 --default-channels 64 --channels 16 32 64      # a LeanResNet training step's

Writes ``<out>.json`` and ``<out>.png`` (default ``experiments/results/fft_conv_benchmark``).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax
from result_files import default_out, write_json

from revjax import benchmark, fft
from revjax.families import lean

OPS = ("full", "depthwise_direct", "depthwise_taps", "depthwise_fft", "implicit_rd", "circulant")
H = 0.1  # implicit step size; the cost does not depend on it


def make_ops(grad: bool = False):
    """name -> jitted ``(x, full_kernel (k,k,c,c), stencils (k,k,c)) -> y``, or with ``grad``
    the gradient of ``sum(y)`` with respect to all three."""
    dn = ("NHWC", "HWIO", "NHWC")

    def full(x, w_full, w):
        return lax.conv_general_dilated(x, w_full, (1, 1), "SAME", dimension_numbers=dn)

    def depthwise_direct(x, w_full, w):
        return lax.conv_general_dilated(
            x, w[:, :, None, :], (1, 1), "SAME", dimension_numbers=dn,
            feature_group_count=x.shape[-1],
        )  # fmt: skip

    ops = {
        "full": full,
        "depthwise_direct": depthwise_direct,
        "depthwise_taps": lambda x, w_full, w: lean.depthwise_zero_pad(x, w),
        "depthwise_fft": lambda x, w_full, w: fft.depthwise_conv(x, w),
        "implicit_rd": lambda x, w_full, w: fft.implicit_diffusion_solve(x, w, H),
        "circulant": lambda x, w_full, w: fft.circulant_conv(x, w),
    }
    if grad:
        ops = {n: jax.grad(lambda *a, op=op: jnp.sum(op(*a)), (0, 1, 2)) for n, op in ops.items()}
    return {name: jax.jit(op) for name, op in ops.items()}


MIN_MEASUREMENT_S = 0.02  # short ops are looped so that one measurement lasts at least this


def measure_point(ops, batch: int, size: int, kernel: int, channels: int, repeats: int) -> dict:
    """Times of every op at one configuration and the speedups t(full)/t(op).

    All ops are timed round-robin in ``repeats`` rounds (``revjax.benchmark.interleaved_times``;
    one warm-up call each, ops faster than ``MIN_MEASUREMENT_S`` looped); the speedup is the
    median over rounds of t(full)/t(op) within a round, so machine load cancels out of it.
    """
    kx, kf, kw = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (batch, size, size, channels), jnp.float32)
    w_full = jax.random.normal(kf, (kernel, kernel, channels, channels), jnp.float32)
    w = jax.random.normal(kw, (kernel, kernel, channels), jnp.float32)
    fns = {name: (lambda fn=fn: fn(x, w_full, w)) for name, fn in ops.items()}
    times = benchmark.interleaved_times(fns, repeats, min_seconds=MIN_MEASUREMENT_S)
    summary = benchmark.summarize(times, baseline="full")
    return {
        "batch": batch,
        "size": size,
        "kernel": kernel,
        "channels": channels,
        "seconds": {name: s["median_seconds"] for name, s in summary.items()},
        "ratio": {name: 1.0 / s["ratio_to_baseline"] for name, s in summary.items()},
    }


def crossing(values, ratios) -> float | str | None:
    """First value where ``ratios`` crosses 1 going up (log-log linear interpolation).

    ``"below_sweep"`` if the ratio is already >= 1 at the first value, None if it never is.
    """
    for (v0, r0), (v1, r1) in zip(zip(values, ratios), zip(values[1:], ratios[1:])):
        if r0 < 1 <= r1:
            t = (0 - math.log(r0)) / (math.log(r1) - math.log(r0))
            return math.exp(math.log(v0) + t * (math.log(v1) - math.log(v0)))
    if ratios and ratios[0] >= 1:
        return "below_sweep"
    return None


def run(args) -> dict:
    ops = make_ops(args.grad)
    d = {"size": args.size, "kernel": args.kernel, "channels": args.default_channels}
    sweeps = {"size": args.sizes, "kernel": args.kernels, "channels": args.channels}
    result = {"config": vars(args), "device": str(jax.devices()[0]), "sweeps": {}}
    for axis, values in sweeps.items():
        points = []
        for value in values:
            point = {**d, axis: value}
            points.append(
                measure_point(
                    ops,
                    args.batch,
                    point["size"],
                    point["kernel"],
                    point["channels"],
                    args.repeats,
                )  # fmt: skip
            )
            r = points[-1]["ratio"]
            print(
                f"{axis:>8}={value:<5} "
                + "  ".join(f"{name}={r[name]:7.2f}" for name in OPS if name != "full"),
                flush=True,
            )
        result["sweeps"][axis] = points
    channel_points = result["sweeps"]["channels"]
    result["channel_crossing"] = {
        name: crossing(
            [p["channels"] for p in channel_points], [p["ratio"][name] for p in channel_points]
        )
        for name in OPS
        if name != "full"
    }
    return result


def format_table(result: dict) -> str:
    lines = []
    for axis, points in result["sweeps"].items():
        header = f"{axis:>9}" + "".join(f"{name:>18}" for name in OPS[1:])
        lines += [f"ratio t(full conv) / t(op), sweep over {axis}", header]
        for p in points:
            lines.append(f"{p[axis]:>9}" + "".join(f"{p['ratio'][n]:>18.2f}" for n in OPS[1:]))
        lines.append("")
    lines.append("channel count where the ratio crosses 1 (None: not within the sweep):")
    for name, value in result["channel_crossing"].items():
        text = value if isinstance(value, str) or value is None else f"{value:.0f}"
        lines.append(f"  {name:<18}{text}")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    labels = {"size": "image size n (n x n)", "kernel": "kernel size k", "channels": "channels c"}
    for ax, (axis, points) in zip(axes, result["sweeps"].items()):
        xs = [p[axis] for p in points]
        for name in OPS[1:]:
            ax.plot(xs, [p["ratio"][name] for p in points], marker="o", label=name)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xlabel(labels[axis])
        ax.set_yscale("log")
        if axis == "channels":
            ax.set_xscale("log", base=2)
        ax.set_title(f"t(full conv) / t(op) vs {axis}")
    axes[0].set_ylabel("speed-up over full conv")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"batch {result['config']['batch']}, {result['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sweep, < 1 min on 2 CPU cores")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 64; quick 2)")
    p.add_argument("--size", type=int, default=None, help="default image size (64)")
    p.add_argument("--kernel", type=int, default=3, help="default kernel size")
    p.add_argument("--default-channels", type=int, default=None, help="default channels (256)")
    p.add_argument("--sizes", type=int, nargs="+", default=None)
    p.add_argument("--kernels", type=int, nargs="+", default=None)
    p.add_argument("--channels", type=int, nargs="+", default=None)
    p.add_argument("--repeats", type=int, default=None, help="interleaved timing rounds per point")
    p.add_argument("--grad", action="store_true", help="time forward + backward (a training step)")
    p.add_argument("--out", default=default_out("fft_conv_benchmark"), help="output path stem")
    args = p.parse_args(argv)
    if args.quick:
        defaults = dict(batch=2, size=32, default_channels=64, sizes=[16, 32], kernels=[3, 5, 7],
                        channels=[16, 64, 128], repeats=3)  # fmt: skip
    else:
        defaults = dict(batch=64, size=64, default_channels=256, sizes=[16, 32, 64, 128],
                        kernels=[3, 5, 7], channels=[64, 128, 256, 512, 1024],
                        repeats=5)  # fmt: skip
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.batch < 1 or args.repeats < 1:
        raise SystemExit("--batch and --repeats must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    result = run(args)
    result["wall_seconds"] = time.perf_counter() - start
    print()
    print(format_table(result))
    out = Path(args.out)
    write_json(out.with_suffix(".json"), result)
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.png')} ({result['wall_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()

"""Interleaved wall-clock timing: every benchmark's variants alternate round-robin in one process.

Timing variants one after another (median of a few runs each) lets a shared or busy machine skew the
ratios: a load spike during one variant's turn moves only that variant. Here each round runs every
variant once, in a rotated order, and a ratio is taken *within* each round (t_variant / t_baseline
of the same round) before the median over rounds, so slow periods cancel out of the ratios.

>>> import jax.numpy as jnp
>>> x = jnp.ones((64, 64))
>>> times = interleaved_times({"matmul": lambda: x @ x, "add": lambda: x + x}, rounds=3)
>>> sorted(summarize(times, baseline="matmul"))
['add', 'matmul']
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["interleaved_times", "summarize", "update_step_calls"]


def _run_once(fn: Callable[[], Any], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        jax.block_until_ready(fn())
    return (time.perf_counter() - start) / number


def interleaved_times(
    fns: dict[str, Callable[[], Any]], rounds: int, *, warmup: int = 1, min_seconds: float = 0.0
) -> dict[str, list[float]]:
    """Seconds per call of each variant, measured round-robin: {name: [t_round0, t_round1, ...]}.

    Args:
      fns: zero-argument callables (e.g. `lambda: compiled(params, x)`); outputs are blocked
        on with `jax.block_until_ready`, so asynchronous dispatch is included.
      rounds: timed rounds; round r runs every variant once, starting at variant r mod V.
      warmup: untimed calls of each variant first (compilation, caches).
      min_seconds: a variant faster than this per call is repeated `number` times per round
        (chosen once, after warm-up) and its mean per call is recorded.
    """
    if not fns:
        raise ValueError("interleaved_times needs at least one function")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    names = list(fns)
    number = {}
    for name in names:
        for _ in range(warmup):
            jax.block_until_ready(fns[name]())
        first = _run_once(fns[name], 1) if min_seconds > 0 else 0.0  # number: 1 if min_seconds <= 0
        number[name] = max(1, math.ceil(min_seconds / max(first, 1e-9)))
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            times[name].append(_run_once(fns[name], number[name]))
    return times


def summarize(times: dict[str, list[float]], baseline: str) -> dict[str, dict[str, float]]:
    """{name: {"median_seconds", "ratio_to_baseline"}}; ratios are medians of per-round ratios.

    ratio_to_baseline = median_r t_name[r] / t_baseline[r], so both timings of each ratio come
    from the same round.
    """
    if baseline not in times:
        raise ValueError(f"baseline {baseline!r} is not one of the timed variants {list(times)}")
    base = times[baseline]
    return {
        name: {
            "median_seconds": statistics.median(ts),
            "ratio_to_baseline": statistics.median(t / b for t, b in zip(ts, base, strict=True)),
        }
        for name, ts in times.items()
    }


def update_step_calls(
    compiled_steps: dict[str, Callable[..., Any]], params: Any, opt_state: Any, batch: Any
) -> dict[str, Callable[[], Any]]:
    """Zero-argument calls of donated update steps, ready for `interleaved_times`.

    Each `compiled_steps[name]` is `(params, opt_state, batch) -> (params, opt_state, loss)`
    with params and opt_state donated (`revjax.memory.compile_update_step`). Every variant
    threads its own copy of (params, opt_state) through its step, as a training loop does, so
    the donated buffers are never reused across variants; a call returns the loss.
    """
    calls = {}
    for name, compiled in compiled_steps.items():
        state = [jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, opt_state)]

        def call(compiled=compiled, state=state):
            state[0], state[1], loss = compiled(state[0], state[1], batch)
            return loss

        calls[name] = call
    return calls

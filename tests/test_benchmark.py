"""Interleaved timing: variants alternate round-robin; ratios come from the same rounds."""

import pytest

from revjax import benchmark


def test_variants_alternate_round_robin_with_rotated_order():
    """Warm-up first, then every round runs every variant once, starting one later each round."""
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = benchmark.interleaved_times(fns, rounds=3, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(len(ts) == 3 and min(ts) >= 0 for ts in times.values())


def test_ratios_are_medians_of_within_round_ratios():
    """A slow round (load spike) scales both variants and cancels out of the ratio; the ratio of
    medians (3.0 here) would not be the median of per-round ratios (2.0)."""
    times = {"base": [1.0, 10.0, 1.0], "v": [2.0, 20.0, 3.0]}
    summary = benchmark.summarize(times, baseline="base")
    assert summary["v"]["ratio_to_baseline"] == pytest.approx(2.0)
    assert summary["v"]["median_seconds"] == pytest.approx(3.0)
    assert summary["base"]["ratio_to_baseline"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="baseline 'x'"):
        benchmark.summarize(times, baseline="x")
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        benchmark.interleaved_times({"a": lambda: None}, rounds=0)


def test_update_step_calls_thread_each_variants_own_donated_state():
    """Each variant runs its donated update on its own copy of (params, opt_state): repeated
    calls keep training (the loss falls), a second variant starts from the same point (it was
    never handed the first one's donated buffers) and the caller's arrays stay usable."""
    import jax.numpy as jnp
    import optax

    from revjax import memory

    loss = lambda p, b: jnp.sum((b @ p - 1.0) ** 2)
    params, batch, opt = jnp.zeros((4, 1)), jnp.ones((8, 4)), optax.sgd(0.01)
    compiled = memory.compile_update_step(loss, params, batch, opt)
    calls = benchmark.update_step_calls({"a": compiled, "b": compiled}, params, opt.init(params),
                                        batch)  # fmt: skip
    losses = [float(calls["a"]()) for _ in range(3)]
    assert losses[0] == pytest.approx(8.0) and losses[0] > losses[1] > losses[2]
    assert float(calls["b"]()) == pytest.approx(8.0)
    assert float(jnp.sum(params)) == 0.0
    times = benchmark.interleaved_times(calls, rounds=2)
    assert set(times) == {"a", "b"}

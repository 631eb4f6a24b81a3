"""The engine: reversible backprop equals stored-activation autodiff, for scan and chain forms."""

import jax
import jax.extend.core
import jax.numpy as jnp
import pytest
from jax.test_util import check_grads

from revjax import engine
from revjax.conv import conv
from revjax.couplings import additive_coupling, affine_coupling, split_halves

C = 4  # channels per half


def conv_residual(p, u, rng):
    """tanh(conv(u, W1)) -> conv(·, W2), with optional dropout drawn from rng."""
    h = jnp.tanh(conv(u, p["w1"]) + p["b"])
    if rng is not None:
        keep = jax.random.bernoulli(rng, 0.8, h.shape)
        h = jnp.where(keep, h / 0.8, 0.0)
    return conv(h, p["w2"])


def affine_residual(p, u, rng):
    out = conv_residual(p, u, rng)
    return out, 0.5 * out


def init_residual(key, depth=None, dtype=jnp.float64):
    lead = () if depth is None else (depth,)
    k1, k2 = jax.random.split(key)
    return {
        "w1": (0.2 * jax.random.normal(k1, lead + (3, 3, C, C))).astype(dtype),
        "w2": (0.2 * jax.random.normal(k2, lead + (3, 3, C, C))).astype(dtype),
        "b": jnp.zeros(lead + (C,), dtype),
    }


def init_coupling(key, depth=None, dtype=jnp.float64):
    kf, kg = jax.random.split(key)
    return {"F": init_residual(kf, depth, dtype), "G": init_residual(kg, depth, dtype)}


def pool_transition(p, x, rng):
    """Non-invertible: 2x2 average pool of both halves, then a learned scale."""

    def pool(u):
        n, h, w, c = u.shape
        return u.reshape(n, h // 2, 2, w // 2, 2, c).mean((2, 4)) * p

    return tuple(pool(u) for u in x)


ADDITIVE = additive_coupling(conv_residual, conv_residual)
AFFINE = affine_coupling(affine_residual, affine_residual)


def make_state(key, shape=(2, 8, 8, 2 * C), dtype=jnp.float64):
    return split_halves(jax.random.normal(key, shape, dtype))


def chain(step, depth=3):
    """[Scan(depth), step, Transition, Scan(depth)]: the heterogeneous chain form."""
    layers = (engine.Scan(step), step, engine.Transition(pool_transition), engine.Scan(step))
    keys = jax.random.split(jax.random.key(7), 4)
    params = (
        init_coupling(keys[0], depth),
        init_coupling(keys[1]),
        jnp.asarray(1.5),
        init_coupling(keys[3], depth),
    )
    return layers, params


def loss_fn(layers, backprop, rngs=None):
    def loss(params, x):
        y = engine.apply(layers, params, x, rngs, backprop=backprop)
        return sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(y))

    return loss


def assert_trees_close(a, b, rtol):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        scale = max(float(jnp.max(jnp.abs(v))), 1e-30)
        assert float(jnp.max(jnp.abs(u - v))) <= rtol * scale, (u, v)


@pytest.mark.parametrize("step", [ADDITIVE, AFFINE], ids=["additive", "affine"])
def test_step_inverse_round_trip_float64(step):
    """inverse(forward(x)) == x to ~1e-14 relative in float64."""
    x = make_state(jax.random.key(0))
    params = init_coupling(jax.random.key(1))
    x_hat = step.inverse(params, step.forward(params, x))
    assert float(engine._relative_error(x_hat, x)) < 1e-13


@pytest.mark.parametrize("step", [ADDITIVE, AFFINE], ids=["additive", "affine"])
def test_fused_backward_equals_generic_rule(step):
    """The fused rule returns the same (x, θ̄, x̄) as inverse-then-vjp."""
    x = make_state(jax.random.key(0))
    params = init_coupling(jax.random.key(1))
    y = step.forward(params, x)
    y_bar = make_state(jax.random.key(2))
    fused = engine.step_backward(step, params, y, y_bar, None)
    generic = engine.step_backward(step._replace(backward=None), params, y, y_bar, None)
    assert_trees_close(fused, generic, 1e-12)
    assert_trees_close(fused[0], x, 1e-13)


@pytest.mark.parametrize("step", [ADDITIVE, AFFINE], ids=["additive", "affine"])
@pytest.mark.parametrize("form", ["scan", "chain"])
@pytest.mark.parametrize("dropout", [False, True])
def test_reversible_gradients_equal_store_float64(step, form, dropout):
    """∂loss/∂(θ, x) with backprop="reversible" == "store" to 1e-9 relative (float64).

    The chain form contains a non-invertible transition (stored input); with dropout every
    step gets its own key, replayed exactly during reconstruction.
    """
    if form == "scan":
        layers, params = (engine.Scan(step),), (init_coupling(jax.random.key(3), depth=5),)
        rngs = (jax.random.split(jax.random.key(9), 5),) if dropout else None
    else:
        layers, params = chain(step)
        k = jax.random.split(jax.random.key(9), 4)
        rngs = (
            (jax.random.split(k[0], 3), k[1], None, jax.random.split(k[3], 3)) if dropout else None
        )
    x = make_state(jax.random.key(4))
    # jitted: eager op-by-op execution of the dropout chains took 20-45 s per case
    g_rev = jax.jit(jax.grad(loss_fn(layers, "reversible", rngs), argnums=(0, 1)))(params, x)
    g_store = jax.jit(jax.grad(loss_fn(layers, "store", rngs), argnums=(0, 1)))(params, x)
    g_remat = jax.jit(jax.grad(loss_fn(layers, "remat", rngs), argnums=(0, 1)))(params, x)
    assert_trees_close(g_rev, g_store, 1e-9)
    assert_trees_close(g_remat, g_store, 1e-12)


def test_check_grads_on_the_custom_rule():
    """check_grads (reverse mode) on the reversible chain agrees with finite differences."""
    layers, params = chain(ADDITIVE, depth=2)
    x = make_state(jax.random.key(5), shape=(1, 4, 4, 2 * C))
    f = lambda params, x: engine.apply(layers, params, x)
    check_grads(f, (params, x), order=1, modes=("rev",), eps=1e-6, atol=1e-7, rtol=1e-7)


def test_custom_backward_is_the_one_that_runs():
    """The reversible VJP calls the step's fused backward (not autodiff through forward)."""
    calls = []

    def counting_backward(*args):
        calls.append(1)
        return ADDITIVE.backward(*args)

    step = ADDITIVE._replace(backward=counting_backward)
    x = make_state(jax.random.key(0))
    params = (init_coupling(jax.random.key(1)),)
    jax.grad(loss_fn((step,), "reversible"))(params, x)
    assert calls, "fused backward was never traced"
    calls.clear()
    jax.grad(loss_fn((step,), "store"))(params, x)
    assert not calls


def test_works_under_jit_vmap_and_grad_of_jit():
    """jit(apply), vmap(apply) over examples and grad(jit(loss)) agree with the eager values."""
    layers, params = chain(ADDITIVE, depth=2)
    x = make_state(jax.random.key(6))
    f = lambda p, x: engine.apply(layers, p, x)
    y = f(params, x)
    assert_trees_close(jax.jit(f)(params, x), y, 1e-12)
    # vmap over the batch axis, one example at a time (keeping a batch dim of 1 inside).
    xv = tuple(u[:, None] for u in x)
    yv = jax.vmap(lambda xi: f(params, xi))(xv)
    assert_trees_close(tuple(u[:, 0] for u in yv), y, 1e-12)
    loss = loss_fn(layers, "reversible")
    assert_trees_close(jax.grad(jax.jit(loss))(params, x), jax.grad(loss)(params, x), 1e-12)
    assert_trees_close(
        jax.jit(jax.grad(loss))(params, x), jax.grad(loss_fn(layers, "store"))(params, x), 1e-9
    )


def test_invert_whole_stack():
    """engine.invert undoes engine.apply for a purely invertible sequence."""
    layers = (engine.Scan(ADDITIVE), AFFINE)
    params = (init_coupling(jax.random.key(1), depth=4), init_coupling(jax.random.key(2)))
    x = make_state(jax.random.key(3))
    y = engine.apply(layers, params, x)
    assert float(engine._relative_error(engine.invert(layers, params, y), x)) < 1e-12
    with pytest.raises(ValueError, match="non-invertible"):
        engine.invert(chain(ADDITIVE)[0], chain(ADDITIVE)[1], y)


def test_reconstruction_error_reports_float32_drift():
    """Per-step drift is ~1e-14 in float64, small but nonzero in float32, and bounded."""
    layers = (engine.Scan(ADDITIVE),)
    p64 = (init_coupling(jax.random.key(1), depth=16),)
    x64 = make_state(jax.random.key(2))
    err64 = engine.reconstruction_error(layers, p64, x64)[0]
    assert err64.shape == (16,)
    assert float(jnp.max(err64)) < 1e-12
    p32 = jax.tree.map(lambda a: a.astype(jnp.float32), p64)
    x32 = jax.tree.map(lambda a: a.astype(jnp.float32), x64)
    err32 = engine.reconstruction_error(layers, p32, x32)[0]
    assert 1e-9 < float(jnp.max(err32)) < 1e-4
    # Errors accumulate towards the input: step 0's input is rebuilt last.
    assert float(err32[0]) >= float(err32[-1])
    assert engine.check_reconstruction(layers, p32, x32, rtol=1e-4) < 1e-4
    with pytest.raises(engine.ReconstructionError, match="exceeds"):
        engine.check_reconstruction(layers, p32, x32, rtol=1e-12)


def test_reconstruction_error_measures_the_fused_backward():
    """reconstruction_error rebuilds inputs as the backward pass does: a step whose fused
    backward reconstructs wrongly (while its `inverse` is right) is reported, not hidden."""

    def skewed_backward(params, y, y_bar, rng):
        x, params_bar, x_bar = ADDITIVE.backward(params, y, y_bar, rng)
        return (x[0] * (1 + 1e-3), x[1]), params_bar, x_bar

    layers = (engine.Scan(ADDITIVE._replace(backward=skewed_backward)),)
    params = (init_coupling(jax.random.key(1), depth=4),)
    x = make_state(jax.random.key(2))
    assert float(jnp.max(engine.reconstruction_error(layers, params, x)[0])) > 1e-4
    honest = (engine.Scan(ADDITIVE),)
    assert float(jnp.max(engine.reconstruction_error(honest, params, x)[0])) < 1e-12


def test_float32_gradients_close_to_float64():
    """Reversible float32 gradients stay within 1e-4 of the float64 ones."""
    layers = (engine.Scan(ADDITIVE),)
    p64 = (init_coupling(jax.random.key(1), depth=8),)
    x64 = make_state(jax.random.key(2))
    g64 = jax.grad(loss_fn(layers, "reversible"))(p64, x64)
    p32, x32 = jax.tree.map(lambda a: a.astype(jnp.float32), (p64, x64))
    g32 = jax.grad(loss_fn(layers, "reversible"))(p32, x32)
    assert_trees_close(jax.tree.map(lambda a: a.astype(jnp.float64), g32), g64, 1e-4)


def test_bad_input_errors():
    """Unknown mode, depth mismatch, rng count, dtype mismatch, odd split, bad affine scale."""
    x = make_state(jax.random.key(0))
    params = (init_coupling(jax.random.key(1), depth=3),)
    layers = (engine.Scan(ADDITIVE),)
    with pytest.raises(ValueError, match="unknown backprop mode"):
        engine.apply(layers, params, x, backprop="magic")
    bad = ({"F": init_residual(jax.random.key(2), 3), "G": init_residual(jax.random.key(3), 4)},)
    with pytest.raises(ValueError, match="leading .depth. axis"):
        engine.apply(layers, bad, x)
    with pytest.raises(ValueError, match="rngs for a stack of depth 3"):
        engine.apply(layers, params, x, (jax.random.split(jax.random.key(0), 2),))
    with pytest.raises(ValueError, match="differ from the state dtype"):
        engine.apply(layers, params, jax.tree.map(lambda a: a.astype(jnp.float32), x))
    with pytest.raises(ValueError, match="equal halves"):
        split_halves(jnp.ones((1, 4, 4, 5)))
    with pytest.raises(ValueError, match="max_log_scale"):
        affine_coupling(affine_residual, affine_residual, max_log_scale=0.0)
    with pytest.raises(ValueError, match="max_log_scale"):
        affine_coupling(affine_residual, affine_residual, max_log_scale=float("inf"))


def test_single_layer_or_single_key_is_a_clear_error():
    """A layer where a sequence is expected, or one key as rngs, names the fix."""
    x = make_state(jax.random.key(0))
    params = init_coupling(jax.random.key(1), depth=3)
    with pytest.raises(TypeError, match=r"sequence of layers.*apply\(\[layer\], \[params\], x\)"):
        engine.apply(engine.Scan(ADDITIVE), params, x)
    with pytest.raises(TypeError, match=r"rngs must be None or a sequence.*split\(key, depth\)"):
        engine.apply([engine.Scan(ADDITIVE)], [params], x, jax.random.key(0))
    with pytest.raises(TypeError, match="layer 0 is dict, not a revjax layer"):
        engine.apply([{"F": 1}], [params], x)
    with pytest.raises(ValueError, match="unknown backprop mode"):
        engine.check_backprop("magic")


def test_reverse_sweep_is_the_reconstruction_of_the_backward_pass():
    """reverse_sweep with the inverse rule rebuilds every input (restarting at transitions),
    and a per-layer custom rule sees exactly the states the forward pass produced."""
    layers, params = chain(ADDITIVE, depth=2)
    x = make_state(jax.random.key(3))
    y, _, inputs = engine.forward_sweep(layers, params, x, record_steps=True)
    assert inputs[1] is not None and jax.tree.leaves(inputs[0])[0].shape[0] == 2
    x_hat, outs = engine.reverse_sweep(layers, params, y, None, inputs)
    assert float(engine._relative_error(x_hat, x)) < 1e-12
    assert outs == (None,) * 4

    def diff_rule(step, p, h, r, true_x):
        x_rec = step.inverse(p, h, r)
        return x_rec, engine._relative_error(x_rec, true_x)

    rules = [diff_rule, engine.inverse_rule, diff_rule, diff_rule]
    _, outs = engine.reverse_sweep(layers, params, y, None, inputs, rules)
    assert outs[0].shape == (2,) and outs[1] is None and outs[2] is None
    assert float(jnp.max(outs[3])) < 1e-12
    with pytest.raises(ValueError, match="4 layers but 3 step rules"):
        engine.reverse_sweep(layers, params, y, None, inputs, rules[:3])


def _scan_unrolls(fn, *args) -> set:
    """The `unroll` parameters of every scan in fn's jaxpr (sub-jaxprs included)."""
    found = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "scan":
                found.add(eqn.params["unroll"])
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


@pytest.mark.parametrize("unroll", [2, 3, True])
def test_scan_unroll_reaches_every_sweep_and_changes_no_number(unroll):
    """Scan(step, unroll=k): the forward scan and the reverse (reconstruction) scan of the
    reversible backward pass are both unrolled k-fold, and every backprop mode's gradients equal
    those of the plain scan (float64; 3 does not divide the depth 5)."""
    params = (init_coupling(jax.random.key(3), depth=5),)
    x = make_state(jax.random.key(4))
    plain, unrolled = (engine.Scan(ADDITIVE),), (engine.Scan(ADDITIVE, unroll=unroll),)
    grad = jax.grad(loss_fn(unrolled, "reversible"), argnums=(0, 1))
    expected_unroll = 5 if unroll is True else unroll  # lax.scan stores True as the length
    assert _scan_unrolls(grad, params, x) == {expected_unroll}
    for mode in engine.BACKPROP_MODES:
        g_plain = jax.grad(loss_fn(plain, mode), argnums=(0, 1))(params, x)
        g_unrolled = jax.grad(loss_fn(unrolled, mode), argnums=(0, 1))(params, x)
        assert_trees_close(g_unrolled, g_plain, 1e-12)


@pytest.mark.parametrize("unroll", [0, -1, 1.5, "2"])
def test_bad_scan_unroll_is_a_clear_error(unroll):
    x = make_state(jax.random.key(0))
    params = (init_coupling(jax.random.key(1), depth=3),)
    with pytest.raises(ValueError, match="unroll must be a positive int or a bool"):
        engine.apply((engine.Scan(ADDITIVE, unroll=unroll),), params, x)


@pytest.mark.parametrize("every", [1, 2, 3, 4], ids=lambda k: f"every{k}")
def test_scan_store_every_changes_no_number_float64(every):
    """Scan(step, store_every=k) on the chain form with dropout (k dividing the depth 3, or not,
    or above it): outputs and the gradients of every backprop mode equal the plain Scan's
    (float64), and `invert` still undoes `apply` (nothing is stored there: it reconstructs
    through every segment)."""
    plain, params = chain(ADDITIVE)
    stored = tuple(engine.store_every(plain, every))
    assert [getattr(layer, "store_every", every) for layer in stored] == [every] * 4
    keys = jax.random.split(jax.random.key(9), 4)
    rngs = (jax.random.split(keys[0], 3), keys[1], None, jax.random.split(keys[3], 3))
    x = make_state(jax.random.key(4))
    reference = jax.jit(jax.grad(loss_fn(plain, "store", rngs), argnums=(0, 1)))(params, x)
    for mode in engine.BACKPROP_MODES:
        grads = jax.jit(jax.grad(loss_fn(stored, mode, rngs), argnums=(0, 1)))(params, x)
        assert_trees_close(grads, reference, 1e-9)
    y = engine.apply(stored, params, x, rngs)
    assert_trees_close(y, engine.apply(plain, params, x, rngs), 1e-13)
    scan_only = (engine.Scan(ADDITIVE, store_every=every),)
    scan_params = (init_coupling(jax.random.key(1), depth=5),)
    y = engine.apply(scan_only, scan_params, x)
    assert float(engine._relative_error(engine.invert(scan_only, scan_params, y), x)) < 1e-12


def test_store_every_bounds_float32_drift_and_its_gradient_error():
    """A float32 stack of 48 couplings whose reconstruction drifts (8e-5 at step 0): with
    store_every=4 every input is rebuilt from a stored state at most 4 steps later, so the worst
    reconstruction error (as the backward pass sees it) drops over 100-fold (measured 4.8e-7)
    and the reversible gradient's error against the float64 gradient falls from 8.9e-5 to the
    stored-activation gradient's own 2.3e-5; each input rebuilt from a stored one is one step of
    round-off."""
    depth, every = 48, 4
    p64 = (init_coupling(jax.random.key(1), depth=depth),)
    x64 = make_state(jax.random.key(2))
    g64 = jax.grad(loss_fn((engine.Scan(ADDITIVE),), "store"))(p64, x64)
    p32, x32 = jax.tree.map(lambda a: a.astype(jnp.float32), (p64, x64))

    def error_against_float64(layers, backprop):
        g32 = jax.grad(loss_fn(layers, backprop))(p32, x32)
        return float(engine._relative_error(jax.tree.map(jnp.float64, g32), g64))

    plain, stored = (engine.Scan(ADDITIVE),), (engine.Scan(ADDITIVE, store_every=every),)
    drift_plain = engine.reconstruction_error(plain, p32, x32)[0]
    drift_stored = engine.reconstruction_error(stored, p32, x32)[0]
    assert float(jnp.max(drift_stored)) < float(jnp.max(drift_plain)) / 100
    assert float(jnp.max(drift_stored[every - 1 :: every])) < 1e-6  # next input was stored
    store_error = error_against_float64(plain, "store")
    assert error_against_float64(plain, "reversible") > 2 * store_error
    assert error_against_float64(stored, "reversible") < 1.5 * store_error


@pytest.mark.parametrize("every", [8, 33])
def test_store_every_costs_only_its_stored_states_in_memory(every):
    """Compiled temp bytes of the reversible gradient with store_every=k exceed the plain Scan's
    by the ceil(depth / k) stored states alone, with k not dividing the depth (a ragged last
    segment). Wide parameters on a small state make a per-step parameter cotangent 36 times a
    state: the former nested per-segment scans held 2k steps' cotangents as temporaries and
    copied the whole stack for the ragged tail (measured +46 MiB at k = 8; now +0.14 MiB)."""
    depth, width = 66, 64

    def temp_bytes(layers):
        w = jax.ShapeDtypeStruct((depth, 3, 3, width, width), jnp.float32)
        b = jax.ShapeDtypeStruct((depth, width), jnp.float32)
        params = ({half: {"w1": w, "w2": w, "b": b} for half in ("F", "G")},)
        x = make_state(jax.random.key(0), (2, 4, 4, 2 * width), jnp.float32)
        grad = jax.jit(jax.grad(loss_fn(layers, "reversible")))
        return grad.lower(params, x).compile().memory_analysis().temp_size_in_bytes

    state_bytes = 2 * 4 * 4 * 2 * width * 4
    plain = temp_bytes((engine.Scan(ADDITIVE),))
    extra = temp_bytes((engine.Scan(ADDITIVE, store_every=every),)) - plain
    assert extra <= 1.25 * -(-depth // every) * state_bytes


@pytest.mark.parametrize("every", [0, -2, 1.5, True, "4"])
def test_bad_store_every_is_a_clear_error(every):
    x = make_state(jax.random.key(0))
    params = (init_coupling(jax.random.key(1), depth=3),)
    with pytest.raises(ValueError, match="store_every must be None or an int >= 1"):
        engine.apply((engine.Scan(ADDITIVE, store_every=every),), params, x)

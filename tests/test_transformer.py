"""Reversible transformers (`revjax.models.transformer`): every block kind's gradients and
reconstruction, the causal mask, dropout replay, parameter counts, bad configurations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from revjax import models
from revjax.drift import DIAGNOSTICS
from revjax.models import transformer

REVERSIBLE = ("coupling", "verlet", "midpoint", "leapfrog")


def blocks_with_slow(*slow):
    """REVERSIBLE, the kinds in `slow` marked slow (a heavy test covering the code paths of the
    others already: verlet is the additive coupling with G negated)."""
    return [pytest.param(b, marks=pytest.mark.slow) if b in slow else b for b in REVERSIBLE]


F64 = {"dtype": jnp.float64, "param_dtype": jnp.float64}
TINY = {"depth": 2, "width": 8, "num_heads": 2, "mlp_ratio": 2.0, **F64}


def tiny_lm(block, **kw):
    fields = {**TINY, "context": 8, "block": block, **kw}
    if block == "standard":
        fields.setdefault("backprop", "store")
    return transformer.ByteLM(**fields)


def tokens(key=0, shape=(2, 8)):
    return jax.random.randint(jax.random.key(key), shape, 0, 256)


def lm_grads(model, variables, x, rng=None, train=False):
    """Gradient of a random projection of the logits w.r.t. params and the embedding table."""
    w = jax.random.normal(jax.random.key(7), (*x.shape, 256), jnp.float64)

    def loss(params):
        rngs = None if rng is None else {"dropout": rng}
        return jnp.sum(w * model.apply({"params": params}, x, train=train, rngs=rngs))

    return jax.grad(loss)(variables["params"])


def assert_trees_close(a, b, rtol=1e-10, atol=1e-12):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=atol)


@pytest.mark.parametrize("block", REVERSIBLE)
def test_reversible_gradients_equal_stored_gradients(block):
    """backprop="reversible" (reconstruction) == "store" (autodiff), float64 (and "remat" for
    the coupling: the engine's strategies are tested for every step kind in test_engine)."""
    x = tokens()
    model = tiny_lm(block)
    variables = model.init(jax.random.key(1), x)
    rev = lm_grads(model, variables, x)
    store = lm_grads(model.clone(backprop="store"), variables, x)
    assert_trees_close(rev, store)
    if block == "coupling":
        assert_trees_close(lm_grads(model.clone(backprop="remat"), variables, x), store)
    assert float(jnp.abs(store["body"]["attn"]["params"]["qkv"]["kernel"]).max()) > 0


@pytest.mark.parametrize("block", blocks_with_slow("verlet", "midpoint"))
def test_reversible_gradients_with_dropout_and_stochastic_depth_replay_exactly(block):
    """Dropout and drop-path masks drawn in the forward pass are replayed in the reconstruction:
    with the same rng, reversible gradients equal stored ones (and differ from rng-free ones)."""
    x = tokens()
    model = tiny_lm(block, dropout=0.2, drop_path=0.3)
    variables = model.init(jax.random.key(1), x)
    rng = jax.random.key(3)
    rev = lm_grads(model, variables, x, rng, train=True)
    store = lm_grads(model.clone(backprop="store"), variables, x, rng, train=True)
    assert_trees_close(rev, store)
    plain = lm_grads(model.clone(backprop="store"), variables, x)
    diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), rev, plain)
    assert max(jax.tree.leaves(diff)) > 1e-3  # dropout really was on


@pytest.mark.parametrize("block", REVERSIBLE)
def test_body_check_grads(block):
    """`jax.test_util.check_grads` (reverse mode, finite differences) of the reversible body."""
    body = transformer.TransformerBody(block=block, depth=2, num_heads=2, mlp_ratio=2.0,
                                       causal=True, **F64)  # fmt: skip
    x = jax.random.normal(jax.random.key(0), (1, 4, 8), jnp.float64)
    params = body.init(jax.random.key(1), x)["params"]

    def f(params, x):
        return body.apply({"params": params}, x)

    check_grads(f, (params, x), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def body_reconstruction_error(body, x, rng=None):
    variables = body.init(jax.random.key(1), x)
    rngs = None if rng is None else {"dropout": rng}
    _, state = body.apply(variables, x, deterministic=rng is None, rngs=rngs, mutable=[DIAGNOSTICS])
    return float(jax.tree.leaves(state[DIAGNOSTICS])[0])


@pytest.mark.parametrize("block", REVERSIBLE)
def test_every_block_reconstructs_its_input(block):
    """Relative reconstruction error of every step input: float64 round-off with dropout and
    drop-path on (the masks are replayed); float32 at depth 8 within 1e-4."""
    x = jax.random.normal(jax.random.key(0), (2, 6, 8), jnp.float64)
    body = transformer.TransformerBody(block=block, depth=3, num_heads=2, dropout=0.1,
                                       drop_path=0.1, **F64)  # fmt: skip
    assert body_reconstruction_error(body, x, jax.random.key(5)) < 1e-12
    body32 = body.clone(
        dtype=jnp.float32, param_dtype=jnp.float32, depth=8, dropout=0.0, drop_path=0.0
    )
    assert body_reconstruction_error(body32, x.astype(jnp.float32)) < 1e-4


def test_model_reports_reconstruction_error():
    x = tokens()
    model = tiny_lm("leapfrog")
    variables = model.init(jax.random.key(1), x)
    assert float(model.reconstruction_error(variables, x)) < 1e-12


@pytest.mark.parametrize("block", (*REVERSIBLE, "standard"))
def test_causal_mask_holds(block):
    """Changing token 5 changes no logit at positions 0..4 and does change position 5."""
    x = tokens()
    model = tiny_lm(block)
    variables = model.init(jax.random.key(1), x)
    y = model.apply(variables, x)
    y2 = model.apply(variables, x.at[:, 5].set((x[:, 5] + 1) % 256))
    np.testing.assert_allclose(y2[:, :5], y[:, :5], rtol=0, atol=1e-13)
    assert float(jnp.max(jnp.abs(y2[:, 5:] - y[:, 5:]))) > 1e-6


def test_vit_is_bidirectional():
    """The ViT body attends both ways: changing the last token changes the first one's output."""
    model = transformer.ViT(**TINY, patch_size=2, num_classes=3)
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 1), jnp.float64)
    variables = model.init(jax.random.key(1), x)
    assert model.apply(variables, x).shape == (2, 3)
    body = transformer.TransformerBody(block="coupling", depth=1, num_heads=2, **F64)
    u = jax.random.normal(jax.random.key(2), (1, 4, 8), jnp.float64)
    bv = body.init(jax.random.key(3), u)
    y, y2 = body.apply(bv, u), body.apply(bv, u.at[:, -1].multiply(-2.0))
    assert float(jnp.max(jnp.abs(y2[:, 0] - y[:, 0]))) > 1e-6


@pytest.mark.parametrize("cls,shape", [(transformer.ViT, (1, 8, 8, 3)),
                                       (transformer.ByteLM, (1, 8))])  # fmt: skip
def test_parameter_counts_equal_across_block_kinds(cls, shape):
    """Every reversible kind has exactly the standard pre-LN baseline's parameter count."""
    kw = {"patch_size": 4} if cls is transformer.ViT else {"context": 8}
    counts = {}
    for block in (*REVERSIBLE, "standard"):
        backprop = "store" if block == "standard" else "reversible"
        model = cls(**TINY, **kw, block=block, backprop=backprop)
        variables = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), jnp.zeros(shape)))
        counts[block] = models.count_params(variables)
    assert len(set(counts.values())) == 1, counts


def test_registered_pairs_have_equal_parameter_counts():
    for rev, base, shape in (("rev_vit", "vit", (1, 8, 8, 1)),
                             ("rev_byte_lm", "byte_lm", (1, 16))):  # fmt: skip
        a = models.summary(rev, shape).split(":")[1]
        b = models.summary(base, shape).split(":")[1]
        assert a == b, (rev, a, base, b)


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"num_heads": 3}, "num_heads=3 must divide width=8"),
        ({"block": "rk4"}, "unknown block"),
        ({"block": "standard", "backprop": "reversible"}, "not invertible"),
        ({"block": "leapfrog", "h": 0.0}, "step size h"),
        ({"dropout": 1.0}, "dropout"),
        ({"drop_path": -0.1}, "drop_path"),
        ({"depth": 0}, "depth"),
        ({"backprop": "magic"}, "backprop"),
        ({"context": 0}, "context"),
        ({"h": float("nan")}, "step size h"),
        ({"block": "standard", "backprop": "store", "arithmetic": "exact"}, "stored baseline"),
        ({"arithmetic": "integer"}, "unknown arithmetic"),
    ],
)
def test_bad_configuration_is_a_value_error_on_construction(fields, match):
    with pytest.raises(ValueError, match=match):
        tiny_lm(fields.pop("block", "coupling"), **fields)


def test_bad_inputs_are_value_errors():
    model = tiny_lm("coupling")
    with pytest.raises(ValueError, match="exceeds context=8"):
        model.init(jax.random.key(0), tokens(shape=(1, 9)))
    vit = transformer.ViT(**TINY, patch_size=3)
    with pytest.raises(ValueError, match="patch_size=3 must divide"):
        vit.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    with pytest.raises(ValueError, match="num_classes"):
        transformer.ViT(num_classes=0)


def test_bits_per_byte_of_uniform_logits_is_eight():
    logits = jnp.zeros((2, 5, 256))
    bpb = transformer.bits_per_byte(logits, jnp.zeros((2, 5), jnp.int32))
    assert float(bpb) == pytest.approx(8)


def test_sample_returns_bytes_and_greedy_is_deterministic():
    model = tiny_lm("coupling")
    variables = model.init(jax.random.key(1), tokens())
    a = transformer.sample(model, variables, "ab", 5, jax.random.key(0), temperature=0.0)
    b = transformer.sample(model, variables, "ab", 5, jax.random.key(9), temperature=0.0)
    assert isinstance(a, bytes) and len(a) == 5 and a == b


@pytest.mark.parametrize("causal", [False, True])
def test_attention_float32_path_matches_the_float64_formula(causal):
    """float32 goes through `jax.nn.dot_product_attention`; float64 through the written-out
    formula; they agree to float32 precision."""
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 5, 2, 4), jnp.float64)
    ref = transformer.attention(q, k, v, causal)
    fast = transformer.attention(*(a.astype(jnp.float32) for a in (q, k, v)), causal)
    assert fast.dtype == jnp.float32
    np.testing.assert_allclose(fast, ref, atol=1e-5)


def test_one_adam_step_on_pydoc_text_lowers_bits_per_byte():
    """The LM path without the trainer: real bytes, `next_token_loss`, one Adam step."""
    import optax

    from revjax.data import text

    arrays = text.load_split("train", context=8)
    batch = {k: jnp.asarray(v[:16]) for k, v in arrays.items()}
    assert bytes(arrays["image"][0].astype(np.uint8))[1:] == bytes(
        arrays["label"][0, :-1].astype(np.uint8)
    )
    model = tiny_lm("leapfrog")
    params = model.init(jax.random.key(0), batch["image"])["params"]
    loss_fn = transformer.next_token_loss(model)
    tx = optax.adam(1e-2)
    before, grads = jax.value_and_grad(loss_fn)(params, batch)
    params = optax.apply_updates(params, tx.update(grads, tx.init(params), params)[0])
    after = loss_fn(params, batch)
    assert 6.0 < float(before) < 10.0 and float(after) < float(before) - 0.05


def test_pydoc_text_split_is_fixed_and_disjoint():
    from revjax import data
    from revjax.data import text

    train, test = text.split_bytes("train"), text.split_bytes("test")
    assert len(train) + len(test) == len(text.corpus()) > 400_000
    assert abs(len(test) / len(text.corpus()) - text.TEST_FRACTION) < 1e-4
    info = data.dataset_info("pydoc_text", context=64)
    assert info.task == "next_token" and info.image_shape == (64,) and info.num_classes == 256
    assert info.num_test == (len(test) - 1) // 64


def test_vit_digits_config_runs_one_step_through_the_trainer(tmp_path):
    """`python -m revjax.train --config=vit_digits:smoke`, one step: rev_vit on the canvas."""
    from revjax import configs
    from revjax.train import trainer

    config = configs.load_config("vit_digits", "smoke")
    config.num_steps, config.memory_report, config.progress_bar = 1, False, False
    config.tensorboard, config.async_checkpointing = False, False
    summary = trainer.train_and_evaluate(config, tmp_path)
    assert summary["steps"] == 1 and np.isfinite(summary["train_loss"])
    assert 0.0 <= summary["test_accuracy"] <= 1.0


@pytest.mark.full_optimization
@pytest.mark.parametrize(
    "block",
    blocks_with_slow(
        "verlet",
    ),
)
def test_exact_arithmetic_with_bfloat16_residuals_reconstructs_bit_exactly_at_depth_100(block):
    """arithmetic="exact", attention and MLP computing in bfloat16: the reconstruction of the
    body's input is exactly 0.0 at depth 100, through the arithmetic seam alone (the same body
    in float arithmetic with bfloat16 residuals drifts by percent already at depth 12)."""
    x = tokens(shape=(2, 16))
    model = transformer.ByteLM(
        block=block, depth=100, width=16, num_heads=2, mlp_ratio=2.0, context=16,
        dtype=jnp.bfloat16, arithmetic="exact",
    )  # fmt: skip
    variables = model.init(jax.random.key(1), x)
    assert float(model.reconstruction_error(variables, x)) == 0.0
    assert float(model.clone(arithmetic="float").reconstruction_error(variables, x)) > 1e-3


@pytest.mark.parametrize("block", blocks_with_slow("verlet", "midpoint"))
def test_exact_arithmetic_reversible_gradients_equal_store(block):
    """In exact arithmetic the reconstructed states are the forward's bits, so the reversible
    gradient equals the stored-activation gradient up to the float32 round-off of the two
    compiled vjp programs (bfloat16 residuals, dropout and stochastic depth replayed)."""
    x = tokens()
    model = tiny_lm(
        block, depth=6, dtype=jnp.bfloat16, param_dtype=jnp.float32, arithmetic="exact",
        dropout=0.1, drop_path=0.1,
    )  # fmt: skip
    variables = model.init(jax.random.key(1), x)
    rng = jax.random.key(3)

    def grads(backprop):
        clone = model.clone(backprop=backprop)

        def loss(params):
            logits = clone.apply({"params": params}, x, train=True, rngs={"dropout": rng})
            return transformer.bits_per_byte(logits, x)

        return jax.grad(loss)(variables["params"])

    rev, store = grads("reversible"), grads("store")
    assert_trees_close(rev, store, rtol=2e-5, atol=1e-7)
    assert float(jnp.abs(store["body"]["mlp"]["params"]["fc1"]["kernel"]).max()) > 0


def test_lm_pydoc_smoke_runs_through_the_trainer(tmp_path):
    """`python -m revjax.train --config=lm_pydoc:smoke`: the byte-level LM trains through the
    trainer's next_token task (held-out bits per byte below the uniform 8 after 10 steps), and
    the trained model loads back from its workdir and samples text."""
    from revjax import configs
    from revjax.train import inference, trainer

    config = configs.load_config("lm_pydoc", "smoke")
    config.memory_report, config.progress_bar, config.tensorboard = False, False, False
    summary = trainer.train_and_evaluate(config, tmp_path)
    assert summary["task"] == "next_token" and summary["steps"] == 10
    assert summary["bits_per_byte"] < 7.5, summary
    model, variables, _ = inference.load(tmp_path)
    text = transformer.sample(model, variables, "def ", 8, jax.random.key(0))
    assert isinstance(text, bytes) and len(text) == 8

"""Reversible transformers: two-stream coupling (Reformer / RevViT) and integrator blocks whose
force is attention + MLP; a ViT classifier and a causal byte-level language model, each with a
standard pre-LN baseline of the same parameter count.

Blocks (`block=`), on token states (N, T, d); A(u) = Attn(LN(u)) and M(u) = MLP(LN(u)) are
pre-LayerNorm multi-head self-attention (`jax.nn.dot_product_attention`, causal or bidirectional)
and a GELU MLP of width `mlp_ratio`·d, each followed by dropout and stochastic depth::

    "standard"  (baseline, not invertible)   x ← x + A(x);  x ← x + M(x)
    "coupling"  (Kitaev, Kaiser, Levskaya 2020, Reformer, arXiv:2001.04451, Sec. 3;
                 Mangalam et al. 2022, Reversible Vision Transformers, arXiv:2302.04869),
                 state (x1, x2):
                y1 = x1 + A(x2),   y2 = x2 + M(y1)
    "verlet"    (Chang, Meng, Haber, Ruthotto, Begert, Holtham 2018, arXiv:1709.03698,
                 Sec. 3, Hamiltonian network, Verlet discretisation), state (Y, Z):
                Y' = Y + h A(Z),   Z' = Z − h M(Y')
    "midpoint"  (Chang et al. 2018, Sec. 3, midpoint network), state (Y_{j−1}, Y_j):
                Y_{j+1} = Y_{j−1} + 2h f(Y_j)
    "leapfrog"  (Chang et al. 2018, Sec. 3, leapfrog network), state (Y_{j−1}, Y_j):
                Y_{j+1} = 2Y_j − Y_{j−1} + h² f(Y_j)

with the force f(u) = a + M(u + a), a = A(u): exactly the residual branch of a standard pre-LN
block, f(u) = block(u) − u. Every kind has one attention and one MLP per block, so a model's
parameter count does not depend on `block` (tests/test_transformer.py checks equality).
The reversible-language-model paper this family was filed for (Gal, Eliasof, Turek, Ascher,
Treister, Haber 2025, arXiv:2512.02056) builds language models from the same midpoint,
leapfrog and Hamiltonian integrators; it could not be consulted while writing this module, so
the equations above are those of Chang et al. 2018 (`revjax.integrators`) with the
transformer's residual branch as the force, not a transcription of that paper, and no equation
numbers are given because they could not be checked against the papers' typeset text.

Start and end of the two-stream body: the embedding x is duplicated, (x, x)
(`integrators.duplicate_state`: Reformer's and RevViT's two streams; for the integrators the
zero-velocity start Y_{−1} = Y_0), and the output is (y1 + y2)/2 for "coupling" and "verlet" (a
parameter-free average, so the head is the baseline's) and Y_L for "midpoint" and "leapfrog".

Engine steps come only from the arithmetic seam (`revjax.arithmetic`: `additive_coupling`,
`verlet_step`, `midpoint_step`, `leapfrog_step`, `duplicate_state`), run by `arith.run` over
one `Scan` (`lax.scan` over depth, parameters stacked on axis 0) with `backprop` in
{"reversible", "store", "remat"}. The family has no exact-arithmetic code of its own:
`arithmetic="exact"` gives int32 fixed-point stream states whose increments A, M (computed in
`dtype`, e.g. bfloat16) are rounded to the 2^−frac_bits grid, so the reconstruction is
bit-exact at any depth (`revjax.fixed_point`). Dropout and stochastic depth draw from
the step's rng (one key per block, split from the "dropout" stream), so the reconstruction
replays the same masks exactly. The standard baseline is a plain `lax.scan` of the same
stacked parameters ("store", or "remat": `jax.checkpoint` per block).

Parameters of the body: params["body"] = {"attn": stacked Attention, "mlp": stacked MLP}
(leading axis `depth`), identical for every block kind.

>>> from revjax import models
>>> model = models.create("rev_vit", depth=2, width=32, num_heads=2, patch_size=4)
>>> models.summary(model, (1, 8, 8, 1))  # doctest: +ELLIPSIS
'ViT: ... parameters, input (1, 8, 8, 1)'
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from revjax import arithmetic, engine, integrators, tasks
from revjax.arithmetic import DEFAULT_FRAC_BITS
from revjax.drift import ReversibleModel, sow_reconstruction_error
from revjax.models.heads import check_num_classes
from revjax.models.registry import CheckedConfig, preset, register
from revjax.nn import init_stacked, residual_fn

__all__ = [
    "BLOCKS",
    "DEFAULT_STEP_SIZES",
    "attention",
    "Attention",
    "MLP",
    "TransformerBody",
    "ViT",
    "ByteLM",
    "VOCAB_SIZE",
    "bits_per_byte",
    "next_token_loss",
    "sample",
]

BLOCKS = ("standard", "coupling", "verlet", "midpoint", "leapfrog")
DEFAULT_STEP_SIZES = {"verlet": 1.0, "midpoint": 0.5, "leapfrog": 1.0}
VOCAB_SIZE = 256


def _drop_path(module: nn.Module, v: jax.Array, rate: float, deterministic: bool) -> jax.Array:
    """Stochastic depth: the whole branch of an example is dropped with probability `rate`."""
    if deterministic or rate == 0.0:
        return v
    keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, (v.shape[0],))
    scale = keep.astype(v.dtype) / jnp.asarray(1.0 - rate, v.dtype)
    return v * scale.reshape((-1,) + (1,) * (v.ndim - 1))


def attention(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool) -> jax.Array:
    """softmax(q kᵀ/√D [+ causal mask]) v per head; q, k, v, output (N, T, heads, D).

    `jax.nn.dot_product_attention` (cuDNN flash attention on GPU where it applies, XLA
    otherwise). Its XLA path computes the softmax in float32 whatever the input dtype (measured
    in jax 0.10.2: 8e-8 from a float64 reference), so float64 inputs, used for the
    gradient and reconstruction identities, take the same formula written out in float64.
    """
    if q.dtype != jnp.float64:
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal)
    logits = jnp.einsum("nqhd,nkhd->nhqk", q, k) / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype))
    if causal:
        t = q.shape[1]
        logits = jnp.where(jnp.tril(jnp.ones((t, t), bool)), logits, -jnp.inf)
    return jnp.einsum("nhqk,nkhd->nqhd", jax.nn.softmax(logits, axis=-1), v)


class Attention(nn.Module):
    """A(u) = DropPath(Dropout(W_o · MHA(LN(u)))), (N, T, d) -> (N, T, d).

    Multi-head self-attention through `jax.nn.dot_product_attention` (`causal`: token t attends
    to tokens <= t). Parameters {"norm", "qkv" (d -> 3d), "out" (d -> d)}.
    """

    num_heads: int
    causal: bool = False
    dropout: float = 0.0
    drop_path: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, u: jax.Array, deterministic: bool = True) -> jax.Array:
        n, t, d = u.shape
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        h = nn.LayerNorm(name="norm", **kw)(u)
        qkv = nn.Dense(3 * d, name="qkv", **kw)(h).reshape(n, t, 3, self.num_heads, -1)
        o = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], self.causal)
        o = nn.Dense(d, name="out", **kw)(o.reshape(n, t, d))
        o = nn.Dropout(self.dropout)(o, deterministic=deterministic)
        return _drop_path(self, o, self.drop_path, deterministic)


class MLP(nn.Module):
    """M(u) = DropPath(Dropout(W_2 GELU(W_1 LN(u)))), (N, T, d) -> (N, T, d), hidden r·d."""

    mlp_ratio: float = 4.0
    dropout: float = 0.0
    drop_path: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, u: jax.Array, deterministic: bool = True) -> jax.Array:
        d = u.shape[-1]
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        h = nn.LayerNorm(name="norm", **kw)(u)
        h = nn.gelu(nn.Dense(int(self.mlp_ratio * d), name="fc1", **kw)(h))
        h = nn.Dense(d, name="fc2", **kw)(h)
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        return _drop_path(self, h, self.drop_path, deterministic)


def _split(rng):
    return (None, None) if rng is None else tuple(jax.random.split(rng))


def _transformer_force(attn_fn, mlp_fn):
    """f(params, u, rng) = a + M(u + a), a = A(u): a pre-LN block's residual branch.

    `attn_fn`, `mlp_fn`: pure (variables, u, rng) -> v; params {"attn": ..., "mlp": ...}.
    """

    def force(params, u, rng=None):
        ra, rm = _split(rng)
        a = attn_fn(params["attn"], u, ra)
        return a + mlp_fn(params["mlp"], u + a, rm)

    return force


def _check_body_config(
    block, width, num_heads, depth, mlp_ratio, dropout, drop_path, h, arith_name="float",
    frac_bits=DEFAULT_FRAC_BITS,
):  # fmt: skip
    """ValueError naming the field for a body that cannot be built (before tracing)."""
    if block not in BLOCKS:
        raise ValueError(f"unknown block {block!r}; use one of {BLOCKS}")
    arithmetic.get(
        arith_name, frac_bits,
        supported=("float",) if block == "standard" else arithmetic.ARITHMETICS,
        why=": the 'standard' block is the stored baseline, not an invertible step",
    )  # fmt: skip
    if int(depth) < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if int(width) < 1 or int(num_heads) < 1 or int(width) % int(num_heads):
        raise ValueError(
            f"num_heads={num_heads} must divide width={width} (head dimension width/num_heads)"
        )
    if not mlp_ratio > 0 or int(mlp_ratio * width) < 1:
        raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio}")
    for name, rate in (("dropout", dropout), ("drop_path", drop_path)):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{name} must lie in [0, 1), got {rate}")
    if h is not None:  # checked even where unused: a bad value is never silently ignored
        integrators.check_step_size(h)


class TransformerBody(nn.Module):
    """`depth` transformer blocks of kind `block` on tokens (N, T, width) -> (N, T, width).

    Attributes:
      block: one of BLOCKS (module docstring).
      depth: number of blocks (one attention + one MLP each).
      num_heads: attention heads (divides the width).
      mlp_ratio: MLP hidden width / width.
      causal: causal attention mask.
      dropout: dropout rate after each attention and MLP output.
      drop_path: stochastic-depth rate of each attention and MLP branch.
      h: integrator step size (None: DEFAULT_STEP_SIZES; unused by "standard"/"coupling").
      backprop: "reversible" | "store" | "remat" ("standard": "store" | "remat").
      dtype: compute dtype of attention and MLP (e.g. bfloat16).
      param_dtype: parameter dtype, also the dtype of the residual streams (the body's
        state): each increment is cast to it before it is added.
      arithmetic: "float" | "exact" (int32 fixed-point streams, bit-exact reconstruction;
        not for "standard"), with `frac_bits` fractional bits.
    """

    block: str = "coupling"
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    causal: bool = False
    dropout: float = 0.0
    drop_path: float = 0.0
    h: float | None = None
    backprop: str = "reversible"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    arithmetic: str = "float"
    frac_bits: int = DEFAULT_FRAC_BITS

    def layers(self, deterministic: bool) -> list[engine.Layer]:
        """The engine layers [duplicate_state, Scan(step)] of a reversible block kind.

        Built by this body's arithmetic (`revjax.arithmetic`). Couplings ("coupling", "verlet") take
        params {"F": attn, "G": mlp} (`_step_params`), the integrators {"attn", "mlp"}.
        """
        arith = arithmetic.get(self.arithmetic, self.frac_bits)
        attn_fn, mlp_fn = self._fns(deterministic)
        h = self.h if self.h is not None else DEFAULT_STEP_SIZES.get(self.block)
        if self.block == "coupling":
            step = arith.additive_coupling(attn_fn, mlp_fn, name="transformer_coupling")
        elif self.block == "verlet":
            h = integrators.check_step_size(h)

            def scaled(fn):
                return lambda p, u, r=None: h * fn(p, u, r)

            step = arith.verlet_step(scaled(attn_fn), scaled(mlp_fn), name="verlet")
        elif self.block == "midpoint":
            step = arith.midpoint_step(_transformer_force(attn_fn, mlp_fn), h, name="midpoint")
        else:
            step = arith.leapfrog_step(_transformer_force(attn_fn, mlp_fn), h, name="leapfrog")
        return [arith.duplicate_state(), engine.Scan(step, name=self.block)]

    def _modules(self):
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype, "parent": None}
        attn = Attention(self.num_heads, self.causal, self.dropout, self.drop_path, **dtypes)
        mlp = MLP(self.mlp_ratio, self.dropout, self.drop_path, **dtypes)
        return attn, mlp

    def _fns(self, deterministic: bool):
        """Pure (params, u, rng) -> v of attention and MLP, v in u's dtype (the stream's)."""

        def in_stream_dtype(module):
            fn = residual_fn(module, deterministic=deterministic)
            return lambda p, u, rng=None: fn(p, u, rng).astype(u.dtype)

        return tuple(in_stream_dtype(module) for module in self._modules())

    def _step_params(self, params):
        if self.block in ("coupling", "verlet"):
            return {"F": params["attn"], "G": params["mlp"]}
        return params

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        _check_body_config(
            self.block, x.shape[-1], self.num_heads, self.depth, self.mlp_ratio, self.dropout,
            self.drop_path, self.h, self.arithmetic, self.frac_bits,
        )  # fmt: skip
        engine.check_backprop(self.backprop)
        if self.block == "standard" and self.backprop == "reversible":
            raise ValueError(
                "backprop='reversible' needs an invertible block; the 'standard' block is the "
                "stored baseline (use backprop='store' or 'remat')"
            )
        x = x.astype(self.param_dtype)
        attn, mlp = self._modules()
        params = {
            "attn": self.param("attn", lambda k: init_stacked(attn, k, self.depth, x)),
            "mlp": self.param("mlp", lambda k: init_stacked(mlp, k, self.depth, x)),
        }
        stochastic = not deterministic and (self.dropout > 0 or self.drop_path > 0)
        rngs = jax.random.split(self.make_rng("dropout"), self.depth) if stochastic else None
        if self.block == "standard":
            return self._standard(params, x, rngs, not stochastic)
        layers = self.layers(not stochastic)
        body_params = [None, self._step_params(params)]
        body_rngs = None if rngs is None else [None, rngs]
        y, _ = arithmetic.get(self.arithmetic, self.frac_bits).run(
            layers, body_params, x, backprop=self.backprop, rngs=body_rngs,
            observe=partial(sow_reconstruction_error, self, rngs=body_rngs),
        )  # fmt: skip
        if self.block in ("coupling", "verlet"):
            return (y[0] + y[1]) / 2
        return y[1]

    def _standard(self, params, x, rngs, deterministic):
        attn_fn, mlp_fn = self._fns(deterministic)

        def block(u, p, r):
            ra, rm = _split(r)
            u = u + attn_fn(p["attn"], u, ra)
            return u + mlp_fn(p["mlp"], u, rm)

        if self.backprop == "remat":
            block = jax.checkpoint(block)
        y, _ = lax.scan(lambda u, xs: (block(u, *xs), None), x, (params, rngs))
        return y


# The body's configuration fields, which the models declare too and pass on unchanged.
_BODY_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(TransformerBody)
    if f.name not in ("causal", "parent", "name")
)


class _TransformerModel(CheckedConfig, ReversibleModel, nn.Module):
    """The fields, checks and body that `ViT` and `ByteLM` share (see `ViT` for their meaning)."""

    block: str = "coupling"
    depth: int = 4
    width: int = 128
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    drop_path: float = 0.0
    h: float | None = None
    backprop: str = "reversible"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    arithmetic: str = "float"
    frac_bits: int = DEFAULT_FRAC_BITS

    def check_config(self) -> None:
        """ValueError for a configuration that cannot be built (before any tracing)."""
        engine.check_backprop(self.backprop)
        _check_body_config(
            self.block, self.width, self.num_heads, self.depth, self.mlp_ratio, self.dropout,
            self.drop_path, self.h, self.arithmetic, self.frac_bits,
        )  # fmt: skip
        if self.block == "standard" and self.backprop == "reversible":
            raise ValueError(
                "block='standard' (the stored baseline) is not invertible: use backprop='store' "
                "or 'remat', or a reversible block"
            )

    def _body(self, x: jax.Array, *, causal: bool, train: bool) -> jax.Array:
        shared = {name: getattr(self, name) for name in _BODY_FIELDS}
        body = TransformerBody(**shared, causal=causal, name="body")
        return body(x, deterministic=not train)


class ViT(_TransformerModel):
    """Vision transformer classifier: patch embedding (stored) -> body -> head (stored).

        x (N, H, W, C) -> patches p x p -> Dense(width) + learned positions   (N, HW/p², d)
          -> TransformerBody(block, depth) (bidirectional)                    (N, HW/p², d)
          -> LayerNorm -> mean over tokens -> Dense(num_classes)              (N, num_classes)

    Attributes:
      block: "coupling" | "verlet" | "midpoint" | "leapfrog" | "standard" (baseline).
      depth, width, num_heads, mlp_ratio: body size (one attention + one MLP per block).
      patch_size: side of the square patches (divides H and W).
      num_classes: logits.
      dropout, drop_path, h, backprop, dtype, param_dtype, arithmetic, frac_bits: as
        `TransformerBody` (dropout and drop-path masks are replayed in the reconstruction).
    """

    depth: int = 6
    width: int = 64
    mlp_ratio: float = 2.0
    patch_size: int = 4
    num_classes: int = 10

    def check_config(self) -> None:
        """ValueError for a configuration that cannot be built (before any tracing)."""
        check_num_classes(self.num_classes)
        super().check_config()
        if int(self.patch_size) < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"ViT expects images (N, H, W, C), got shape {x.shape}")
        n, hgt, wid, _ = x.shape
        p = self.patch_size
        if hgt % p or wid % p:
            raise ValueError(f"patch_size={p} must divide the image size {hgt}x{wid}")
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        x = jnp.asarray(x, self.dtype)
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", name="embed", **kw)(x)
        x = x.reshape(n, -1, self.width)
        pos = self.param("pos", nn.initializers.normal(0.02), (1, *x.shape[1:]), self.param_dtype)
        x = self._body(x + pos, causal=False, train=train)
        x = nn.LayerNorm(name="norm", **kw)(x)
        return nn.Dense(self.num_classes, name="head", **kw)(jnp.mean(x, axis=1))


class ByteLM(_TransformerModel):
    """Causal byte-level language model: embedding (stored) -> causal body -> head (stored).

        tokens (N, T) in [0, 256) -> Embed(256, d) + learned positions (T <= context)
          -> TransformerBody(block, depth, causal)                    (N, T, d)
          -> LayerNorm -> Dense(256)                                  logits (N, T, 256)

    `tokens` may be any numeric dtype (the trainer feeds float32; they are cast to int32), of
    shape (N, T) or (N, T, 1). Logit t depends on tokens 0..t only.

    Attributes:
      block: as `ViT` (and depth, width, num_heads, mlp_ratio, dropout, drop_path, h,
        backprop, dtype, param_dtype, arithmetic, frac_bits).
      context: the longest sequence (the learned position table's length).
    """

    context: int = 128

    def check_config(self) -> None:
        """ValueError for a configuration that cannot be built (before any tracing)."""
        super().check_config()
        if int(self.context) < 1:
            raise ValueError(f"context must be >= 1, got {self.context}")

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
        if tokens.ndim == 3 and tokens.shape[-1] == 1:
            tokens = tokens[..., 0]
        if tokens.ndim != 2:
            raise ValueError(f"ByteLM expects tokens (N, T) or (N, T, 1), got {tokens.shape}")
        t = tokens.shape[1]
        if t > self.context:
            raise ValueError(f"sequence length {t} exceeds context={self.context}")
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        tokens = jnp.asarray(tokens).astype(jnp.int32)
        x = nn.Embed(VOCAB_SIZE, self.width, name="embed", **kw)(tokens)
        table = (self.context, self.width)
        pos = self.param("pos", nn.initializers.normal(0.02), table, self.param_dtype)
        x = self._body(x + pos[:t], causal=True, train=train)
        x = nn.LayerNorm(name="norm", **kw)(x)
        return nn.Dense(VOCAB_SIZE, name="head", **kw)(x)


def bits_per_byte(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-byte cross-entropy in bits: mean(−log₂ softmax(logits)[target]).

    logits (..., 256), targets (...) integers. The loss of the trainer's "next_token" task
    (`revjax.tasks.softmax_xent`, in nats) divided by ln 2.
    """
    return jnp.mean(tasks.softmax_xent(logits, targets.astype(jnp.int32))) / math.log(2.0)


def next_token_loss(model: ByteLM):
    """loss(params, batch, rng=None) -> bits per byte of `model` on {"image", "label"} batches.

    batch["image"]: (N, T) bytes (any numeric dtype), batch["label"]: (N, T) next bytes (the
    `pydoc_text` records). With an rng the model runs in training mode (dropout, drop-path).
    """

    def loss(params, batch, rng=None):
        rngs = None if rng is None else {"dropout": rng}
        logits = model.apply({"params": params}, batch["image"], train=rng is not None, rngs=rngs)
        return bits_per_byte(logits, batch["label"])

    return loss


def sample(
    model: ByteLM,
    variables: Any,
    prompt: bytes | str,
    num_bytes: int,
    rng: jax.Array,
    *,
    temperature: float = 1.0,
) -> bytes:
    """Generate `num_bytes` bytes after `prompt` from a trained `ByteLM`.

    Runs the model on a fixed window of `model.context` bytes (the last ones, left-padded with
    spaces) once per generated byte, under one `jax.jit` and a `lax.scan` (no key/value cache:
    simple, not fast). `temperature` 0 is greedy.
    """
    if isinstance(prompt, str):
        prompt = prompt.encode("utf-8")
    if num_bytes < 0:
        raise ValueError(f"num_bytes must be >= 0, got {num_bytes}")
    ctx = int(model.context)
    window = jnp.asarray(list((b" " * ctx + bytes(prompt))[-ctx:]), jnp.int32)

    @jax.jit
    def run(variables, window, rng):
        def step(win, key):
            logits = model.apply(variables, win[None], train=False)[0, -1]
            if temperature > 0:
                nxt = jax.random.categorical(key, logits / temperature)
            else:
                nxt = jnp.argmax(logits)
            nxt = nxt.astype(jnp.int32)
            return jnp.concatenate([win[1:], nxt[None]]), nxt

        _, out = lax.scan(step, window, jax.random.split(rng, num_bytes))
        return out

    out = run(variables, window, rng) if num_bytes else jnp.zeros((0,), jnp.int32)
    return bytes(int(b) for b in jax.device_get(out))


register("rev_vit")(preset(ViT, block="coupling"))
register("vit")(preset(ViT, block="standard", backprop="store"))
register("rev_byte_lm")(preset(ByteLM, block="coupling"))
register("byte_lm")(preset(ByteLM, block="standard", backprop="store"))

"""Reversible byte-level language model (`rev_byte_lm`) on `pydoc_text` (no download).

Model: byte embedding (256 x 128) + learned positions -> 4 reversible coupling blocks (width
128, 4 heads, MLP ratio 4, causal attention, `backprop="reversible"`) -> LayerNorm / dense
(256 logits per position); `model_kwargs.block` selects "coupling" | "verlet" | "midpoint" |
"leapfrog", and `model = "byte_lm"` is the standard pre-LN baseline with the same parameter
count. Data: `pydoc_text` windows of `context` = 128 bytes (90/10 fixed split of Python's
`pydoc_data.topics`); records {"image": (128,) bytes, "label": (128,) next bytes}, task
"next_token". Report held-out bits per byte = cross-entropy / ln 2.

Run: ``python -m revjax.train --config=lm_pydoc`` (task ``next_token``: the cross-entropy
of every position, test ``bits_per_byte`` in the summary); ``experiments/transformer_lm.py``
runs it for every block kind and seed.

Smoke (``--config=lm_pydoc:smoke``): 1 block of width 32, context 32, 10 steps.
"""

import ml_collections

from revjax.configs import default, is_smoke


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default.get_config()
    config.name = "lm_pydoc"
    config.model = "rev_byte_lm"
    config.model_kwargs = ml_collections.ConfigDict(
        {"block": "coupling", "depth": 4, "width": 128, "num_heads": 4, "mlp_ratio": 4.0,
         "context": 128, "backprop": "reversible"}
    )  # fmt: skip
    config.dataset = "pydoc_text"
    config.dataset_options = ml_collections.ConfigDict({"context": 128})
    config.global_batch_size = 32
    config.eval_batch_size = 52
    config.num_epochs = 0
    config.num_steps = 2000
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 3e-3
    config.optimizer.weight_decay = 0.0
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_steps = 100
    config.optimizer.grad_clip_norm = 1.0
    config.log_every_steps = 100
    config.checkpoint_every_steps = 500
    if is_smoke(arg):
        config.model_kwargs.update({"depth": 1, "width": 32, "num_heads": 2, "context": 32})
        config.dataset_options.context = 32
        config.num_steps = 10
        config.log_every_steps = 5
        config.checkpoint_every_steps = 10
        config.optimizer.warmup_steps = 2
    return config

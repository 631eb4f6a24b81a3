"""Learning shown on real images: one reference model of every family, trained reversibly.

Task (built in, no download): scikit-learn's handwritten digits placed on a CIFAR-shaped
canvas (`revjax.data.digits.on_canvas`: each 8x8 digit upsampled x3 by pixel repetition to
24x24, centred on a 32x32 canvas, repeated over 3 channels; 1437 train / 360 test images,
stratified split). The segmenter gets the per-pixel version (0 = background, 1 + class on
the strokes; `digits.segmentation_labels`), scored by mean IoU over the 11 classes.

Every model is created at its registered defaults (`revjax.models.create(name)`; reversible
models in `backprop="reversible"`) and trained with one plain optax loop: SGD with momentum
0.9 and a cosine-decayed learning rate (RevUp and the LeanResNet step types other than
lean_b_resnet: Adam, RevUp at 2e-3 and LeanResNet at 1e-2, see `ADAM`; RevUp's scalar biases
and multipliers at a tenth of that rate, see `SCALAR_LR_FACTOR`), `--batch`, `--steps`,
float32, batch norm in train mode. Per model the table gives the test
accuracy (or mean IoU), steps, wall time of the training loop (compilation excluded), the
body's float32 reconstruction error after training (`model.reconstruction_error`), and the
compiled temporary memory of one training step (XLA `memory_analysis()`, value_and_grad +
optimizer update) in reversible vs store mode.

Usage::

    python experiments/zoo_learning.py                  # all families (~30 min on 2 CPU cores)
    python experiments/zoo_learning.py --models revnet38 hamiltonian74 --steps 100
    python experiments/zoo_learning.py --merge experiments/results/zoo_learning_part*.log

Writes `--out` (default experiments/results/zoo_learning.json) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from result_files import default_out

from revjax import models
from revjax.data import digits
from revjax.train.optim import scale_non_kernels

CLASSIFIERS = (
    "resnet32",
    "revnet38",
    "hamiltonian74",
    "midpoint62",
    "leapfrog62",
    "revup20",
    "lean_hamiltonian",
    "lean_b_resnet",
    "lean_b_mobilenet",
    "lean_b_linear_mix",
    "lean_b_explicit_rd",
    "lean_b_implicit_rd",
    "lean_b_circular_rd",
)
SEGMENTERS = ("hyperbolic2d",)
LEARNING_RATE = {"hyperbolic2d": 0.05}  # SGD, others: 0.1
# RevUp: Adam 2e-3, with Fixup's parameter groups (`SCALAR_LR_FACTOR`). At 1e-2 revup20 died:
# the soft spectral normalisation divides a raw kernel W by sigma_hat(W)/c, and Adam 1e-2 grew
# the raw kernels to sigma_hat = 6.5-42 (c = 0.9) within 190 steps of batch 32, so the
# branches' effective steps shrank by that factor, while the scalar biases, which are not
# normalised, kept Adam's full step. The scalar b2b of stage 2 and its downsampling block
# drifted to -0.24 each, the whole body output went negative, and the head's ReLU zeroed 63
# of the 64 pooled features (logits' spread over 256 images 2e-5; loss back to ln 10, test
# accuracy 0.100 after 400 steps). Fixup's tenth of the rate for the scalars alone only
# delayed this (0.886 after 400 steps, 0.103 after 600 steps at Adam 1e-2). Adam 1e-3 (with
# the tenth) did not die but reached only 0.797 in 600 x 32 steps (loss still falling).
# LeanResNet step types: Adam 1e-2, the paper's optimiser (Ephrath et al. 2019, arXiv:1805.07821,
# Sec. 4: ADAM with default parameters, learning rate 0.01). SGD 0.1 left the RD nets at 45-75%
# after 100 x 32 steps: their reaction weights enter scaled by h = 0.1, and Adam's per-weight
# step does not see that scale; with Adam 1e-2, 300 x 32, explicit RD reached 0.994.
# (lean_b_resnet's row was trained with SGD 0.1.)
ADAM = {
    "revup20": 2e-3,
    **{
        f"lean_b_{step}": 1e-2
        for step in ("mobilenet", "linear_mix", "explicit_rd", "implicit_rd", "circular_rd")
    },
}
# Fixup's recipe gives the scalar biases and multipliers a tenth of the base learning rate
# (Zhang, Dauphin, Ma 2019, arXiv:1901.09321; reference script github.com/hongyi-zhang/Fixup,
# cifar/cifar_train.py), applied here to the Adam rate (`revjax.train.optim.scale_non_kernels`):
# Adam moves a scalar as far per step as one kernel entry, but one scalar shifts a whole layer.
SCALAR_LR_FACTOR = {"revup20": 0.1}


def make_optimizer(name: str, steps: int) -> optax.GradientTransformation:
    """The model's recipe: Adam (`ADAM`) or SGD momentum 0.9 (`LEARNING_RATE`, default 0.1),
    cosine-decayed over `steps`; biases and scalar multipliers at `SCALAR_LR_FACTOR` x rate."""
    if name in ADAM:
        optimizer = optax.adam(optax.cosine_decay_schedule(ADAM[name], steps))
    else:
        lr = optax.cosine_decay_schedule(LEARNING_RATE.get(name, 0.1), steps)
        optimizer = optax.sgd(lr, momentum=0.9)
    if name in SCALAR_LR_FACTOR:
        optimizer = optax.chain(optimizer, scale_non_kernels(SCALAR_LR_FACTOR[name]))
    return optimizer


def make_train_step(model, optimizer):
    """(params, state, opt_state, x, y) -> (params, state, opt_state, loss), state = BN stats."""

    def loss_fn(params, state, x, y):
        mutable = list(state) or False
        out = model.apply({"params": params, **state}, x, train=True, mutable=mutable)
        logits, new_state = out if mutable else (out, {})
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, dict(new_state)

    def step(params, state, opt_state, x, y):
        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1, 2))


def step_temp_mib(model, optimizer, params, state, opt_state, x, y) -> float:
    """Compiled temporary memory of one training step (no execution)."""
    compiled = make_train_step(model, optimizer).lower(params, state, opt_state, x, y).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2**20


def predict(model, variables, images, batch=120):
    apply = jax.jit(lambda v, x: jnp.argmax(model.apply(v, x, train=False), axis=-1))
    return np.concatenate(
        [np.asarray(apply(variables, images[i : i + batch])) for i in range(0, len(images), batch)]
    )


def mean_iou(pred, labels, num_classes):
    ious = []
    for c in range(num_classes):
        inter = np.sum((pred == c) & (labels == c))
        union = np.sum((pred == c) | (labels == c))
        if union:
            ious.append(inter / union)
    return float(np.mean(ious))


def run(
    name: str, steps: int, batch: int, seed: int, *, overrides=None, measure_memory=True
) -> dict:
    """Train `name` (with model field `overrides`) and return its row of the table."""
    segmentation = name in SEGMENTERS
    task = "segmentation" if segmentation else "classification"
    train = digits.load_canvas_split("train", 32, task)
    test = digits.load_canvas_split("test", 32, task)
    num_classes = digits.NUM_CLASSES + segmentation
    model = models.create(name, num_classes=num_classes, **(overrides or {}))
    x0 = jnp.asarray(train["image"][:batch])
    variables = jax.jit(lambda k: model.init(k, x0, train=False))(jax.random.key(seed))
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    optimizer = make_optimizer(name, steps)
    opt_state = optimizer.init(params)

    y0 = jnp.asarray(train["label"][:batch])
    memory = {}
    if measure_memory and hasattr(model, "reconstruction_error"):
        for mode in ("reversible", "store"):
            memory[mode] = step_temp_mib(
                model.clone(backprop=mode), optimizer, params, state, opt_state, x0, y0
            )
    step = make_train_step(model, optimizer)
    rng = np.random.default_rng(seed)
    order = np.concatenate(
        [
            rng.permutation(len(train["label"]))
            for _ in range(steps * batch // len(train["label"]) + 1)
        ]
    )
    # compile outside the timed loop (on copies: the step donates its inputs)
    copies = jax.tree.map(jnp.copy, (params, state, opt_state))
    jax.block_until_ready(step(*copies, x0, y0))
    losses = []
    start = time.perf_counter()
    for i in range(steps):
        idx = order[i * batch : (i + 1) * batch]
        params, state, opt_state, loss = step(
            params,
            state,
            opt_state,
            jnp.asarray(train["image"][idx]),
            jnp.asarray(train["label"][idx]),
        )
        losses.append(loss)
    losses = [float(v) for v in jax.block_until_ready(losses)]
    wall = time.perf_counter() - start
    variables = {"params": params, **state}
    pred = predict(model, variables, test["image"])
    if segmentation:
        score = mean_iou(pred, test["label"], num_classes)
    else:
        score = float(np.mean(pred == test["label"]))
    drift = None
    if hasattr(model, "reconstruction_error"):
        drift = float(
            model.reconstruction_error(variables, jnp.asarray(train["image"][:batch]), train=True)
        )
    return {
        "model": name,
        "task": task,
        "metric": "mean IoU" if segmentation else "test accuracy",
        "score": score,
        "steps": steps,
        "batch": batch,
        "wall_s": wall,
        "loss_first": losses[0],
        "loss_last": float(np.mean(losses[-10:])),
        "finite": bool(np.all(np.isfinite(losses))),
        "reconstruction_error": drift,
        "params": models.count_params(variables),
        "temp_mib": memory,
    }


def format_table(rows) -> str:
    lines = [
        "| model | metric | score | steps x batch | train s | recon. err. | rev. MiB | store MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mem = r["temp_mib"]
        drift = "—" if r["reconstruction_error"] is None else f"{r['reconstruction_error']:.1e}"
        rev = f"{mem['reversible']:.1f}" if mem else "—"
        store = f"{mem['store']:.1f}" if mem else "—"
        lines.append(
            f"| {r['model']} | {r['metric']} | {r['score']:.3f} | {r['steps']} x {r['batch']} | "
            f"{r['wall_s']:.0f} | {drift} | {rev} | {store} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(CLASSIFIERS + SEGMENTERS))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=default_out("zoo_learning.json"))
    parser.add_argument(
        "--merge",
        nargs="*",
        help="instead of training, tabulate the JSON rows printed by earlier runs (later wins)",
    )
    args = parser.parse_args(argv)
    rows = []
    if args.merge:
        by_model = {}
        for path in args.merge:
            for line in Path(path).read_text().splitlines():
                if line.startswith("{"):
                    row = json.loads(line)
                    by_model[row["model"]] = row
        rows = list(by_model.values())
    for name in [] if args.merge else args.models:
        row = run(name, args.steps, args.batch, args.seed)
        print(json.dumps(row), flush=True)
        rows.append(row)
    table = format_table(rows)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()

"""Whole-clip video segmentation with a fully reversible hyperbolic network: a report.

The run itself is ``python -m revjax.train --config=video_hyperbolic3d`` (Peters, Haber,
Lensink 2019, "Symmetric block-low-rank layers for fully reversible multilevel neural
networks", arXiv:1912.12137): the trainer's segmentation task trains ``hyperbolic3d`` on whole
clips (frames x H x W in one forward/backward pass) with per-voxel cross-entropy and reports
per-class IoU = TP / (TP + FP + FN) over all test voxels and their mean. This script runs that
config through ``revjax.train.train_and_evaluate`` (or reads a finished workdir) and adds

- the all-background baseline's mean IoU on the same test clips;
- the compiled memory of one training step of the same model in three variants (see
  experiments/hyperbolic_memory.py): (a) fully reversible, (b) backprop="store",
  (c) block-reversible (transition="stored").

Data: ``synthetic_video`` (default; generated moving shapes, 4 classes, train and test clips
from disjoint seeds) or ``--dataset davis`` (TFDS DAVIS prepared under ``--data_dir``, masks
binarised: the DAVIS-2016 single-object task).

Run:  python experiments/video_segmentation.py [--quick] [--steps N] [--workdir DIR]
      [--dataset davis --data_dir DIR] [--out PATH]

Expected: IoU above the all-background baseline; the numbers of a run are printed and
written to the JSON, never hard-coded here.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np
import optax
from hyperbolic_variants import COMPARISON_VARIANTS
from result_files import default_out, write_json

from revjax import configs, data, tasks
from revjax.memory import model_step_memory
from revjax.train import trainer

LABELS = {"reversible": "(a) reversible", "store": "(b) store", "block": "(c) block-reversible"}


def get_config(quick: bool = False, dataset: str = "synthetic_video", data_dir=None):
    """The ``video_hyperbolic3d`` config (``quick``: its ``:smoke`` variant)."""
    config = configs.load_config("video_hyperbolic3d", "smoke" if quick else None)
    if dataset != config.dataset:
        config.dataset = dataset
        config.dataset_options = {}
    config.data_dir = data_dir
    return config


def background_baseline(config) -> dict:
    """Mean IoU of predicting background (class 0) everywhere on the test split."""
    options = dict(config.dataset_options or {})
    info = data.dataset_info(config.dataset, **options)
    ds = data.make_dataset(
        config.dataset,
        "test",
        global_batch_size=int(config.eval_batch_size),
        seed=config.seed,
        train=False,
        drop_remainder=False,
        data_dir=config.data_dir,
        **options,
    )
    counts = np.zeros((info.num_classes, info.num_classes))
    for batch in ds:
        labels = np.asarray(batch["label"])[np.asarray(batch["weight"]) > 0].reshape(-1)
        counts[:, 0] += np.bincount(labels, minlength=info.num_classes)
    iou = tasks.iou_from_confusion(counts)
    return {"test_voxels": int(counts.sum()), "all_background_mean_iou": float(np.nanmean(iou))}


def memory_variants(config) -> dict:
    """Compiled train-step memory of the config's model in the three variants."""
    options = dict(config.dataset_options or {})
    info = data.dataset_info(config.dataset, **options)
    shape = (int(config.global_batch_size), *info.image_shape)
    return {
        LABELS[name]: model_step_memory(
            trainer.build_model(config, info, **v), shape, optax.adam(1e-3)
        )
        for name, v in COMPARISON_VARIANTS.items()
    }


def markdown(result: dict) -> str:
    per_class = ", ".join(
        f"{k[4:]}: {v:.3f}" for k, v in sorted(result["summary"].items()) if k.startswith("iou_")
    )
    s = result["summary"]
    lines = [
        f"{result['config']['model']} on {result['config']['dataset']}, "
        f"{s['num_params']:,} parameters, {s['steps']} steps",
        "",
        "| metric | value |",
        "|---|---|",
        f"| held-out mean IoU | {s['mean_iou']:.3f} |",
        f"| per-class IoU | {per_class} |",
        f"| voxel accuracy | {s['test_accuracy']:.3f} |",
        f"| all-background mean IoU | {result['all_background_mean_iou']:.3f} |",
        f"| final train loss | {s['train_loss']:.4f} |",
    ]
    memory = result.get("train_step_memory")
    if memory:
        base = memory["(a) reversible"]["temp"]
        lines += ["", "| variant | temp MiB | total MiB | temp / (a) |", "|---|---|---|---|"]
        for name, m in memory.items():
            lines.append(
                f"| {name} | {m['temp'] / 2**20:.2f} | {m['total'] / 2**20:.2f} | "
                f"{m['temp'] / max(base, 1):.1f}x |"
            )
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the :smoke config (seconds)")
    parser.add_argument(
        "--dataset", default="synthetic_video", choices=["synthetic_video", "davis"]
    )
    parser.add_argument("--data_dir", default=None, help="TFDS data directory (DAVIS)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--workdir", default=None, help="trainer workdir (default: temporary)")
    parser.add_argument("--no_memory", action="store_true", help="skip the memory variants")
    parser.add_argument("--out", default=default_out("video_segmentation.json"))
    args = parser.parse_args(argv)
    config = get_config(args.quick, args.dataset, args.data_dir)
    if args.steps is not None:
        config.num_steps = args.steps
    config.memory_report = False  # the three variants are measured below
    workdir = args.workdir or tempfile.mkdtemp(prefix="revjax_video_")
    summary = trainer.train_and_evaluate(config, workdir)
    result = {"config": json.loads(config.to_json()), "workdir": workdir, "summary": summary}
    result.update(background_baseline(config))
    if not args.no_memory:
        result["train_step_memory"] = memory_variants(config)
    result["num_params"] = summary["num_params"]
    print(markdown(result))
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()

"""Training with float vs exact (fixed-point) arithmetic on the built-in digits task.

Trains the reversible low-cost Hamiltonian network (`lean_hamiltonian`, widths (16, 32),
`--depth` Verlet steps per stage, reversible backprop) on scikit-learn digits (no download)
with the default recipe (SGD momentum 0.9, lr 0.1, piecewise decay, batch 64) for `--epochs`
epochs, once with `arithmetic="float"` and once with `arithmetic="exact"` (int32 fixed-point
states with `frac_bits` = 20, `revjax.fixed_point`), same seed, and prints the final test
accuracy and loss of each.

`--zoo NAME` instead trains a zoo config (`revjax/configs/zoo.py`, e.g. `revnet38`,
`hamiltonian74`: the model at its registered defaults on the digits canvas, its recipe's
optimizer and cosine schedule) for `--steps` steps of `--batch`, float then exact, same seed,
through the same trainer; the row is the run's summary (test accuracy, last training loss,
the body's reconstruction error after training).

    python experiments/exact_training.py --epochs 10 --out experiments/results/exact_training.json
    python experiments/exact_training.py --zoo revnet38 --steps 60 --batch 32 \
        --out experiments/results/exact_training_revnet38.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import ml_collections
from result_files import default_out, write_json

from revjax.configs import default, zoo
from revjax.train import trainer


def config_for(arithmetic: str, epochs: int, depth: int) -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = "lean_hamiltonian"
    config.model_kwargs = ml_collections.ConfigDict(
        {
            "widths": (16, 32),
            "units": (depth, depth),
            "arithmetic": arithmetic,
            "backprop": "reversible",
        }
    )
    config.num_epochs = epochs
    config.optimizer.boundaries_epochs = (epochs // 2, (3 * epochs) // 4)
    config.checkpoint_every_steps = 0
    return config


def zoo_config(name: str, arithmetic: str, steps: int, batch: int) -> ml_collections.ConfigDict:
    """The zoo recipe of model `name` (`revjax.configs.zoo`) in `arithmetic`, `steps` x `batch`."""
    config = zoo.get_config(name)
    config.model_kwargs.arithmetic = arithmetic
    config.num_steps = steps
    config.global_batch_size = batch
    config.memory_report = False
    config.progress_bar = False
    return config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--out", default=default_out("exact_training.json"))
    parser.add_argument("--zoo", default=None, help="a zoo classifier instead (e.g. revnet38)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    results = {}
    for arithmetic in ("float", "exact"):
        if args.zoo:
            config = zoo_config(args.zoo, arithmetic, args.steps, args.batch)
        else:
            config = config_for(arithmetic, args.epochs, args.depth)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as workdir:
            metrics = trainer.train_and_evaluate(config, workdir)
        metrics = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        metrics["wall_seconds"] = time.perf_counter() - start
        results[arithmetic] = metrics
        print(arithmetic, json.dumps(metrics), flush=True)
    write_json(args.out, results)


if __name__ == "__main__":
    main()

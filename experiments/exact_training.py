"""Training with float vs exact (fixed-point) arithmetic on the built-in digits task.

Trains the reversible low-cost Hamiltonian network (`lean_hamiltonian`, widths (16, 32),
`--depth` Verlet steps per stage, reversible backprop) on scikit-learn digits (no download)
with the default recipe (SGD momentum 0.9, lr 0.1, piecewise decay, batch 64) for `--epochs`
epochs, once with `arithmetic="float"` and once with `arithmetic="exact"` (int32 fixed-point
states with `frac_bits` = 20, `revjax.fixed_point`), same seed, and prints the final test
accuracy and loss of each.

`--zoo NAME` instead trains a zoo classifier at its registered defaults (e.g. `revnet38`,
`hamiltonian74`) on the digits canvas with the loop of `experiments/zoo_learning.py`
(`--steps` SGD steps of `--batch`, cosine-decayed learning rate), float then exact, same seed;
the row reports the test accuracy, the last losses and the body's reconstruction error after
training.

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

from revjax.configs import default
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
        start = time.perf_counter()
        if args.zoo:
            from zoo_learning import run as zoo_run  # experiments/ is on sys.path (a script)

            row = zoo_run(
                args.zoo,
                args.steps,
                args.batch,
                0,
                overrides={"arithmetic": arithmetic},
                measure_memory=False,
            )
            row["wall_seconds"] = time.perf_counter() - start
            results[arithmetic] = row
            print(arithmetic, json.dumps(row), flush=True)
            continue
        with tempfile.TemporaryDirectory() as workdir:
            metrics = trainer.train_and_evaluate(
                config_for(arithmetic, args.epochs, args.depth), workdir
            )
        metrics = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        metrics["wall_seconds"] = time.perf_counter() - start
        results[arithmetic] = metrics
        print(arithmetic, json.dumps(metrics), flush=True)
    write_json(args.out, results)


if __name__ == "__main__":
    main()

"""Compiled memory of one training step of hamiltonian218 with the BN block vs the bias block.

Chang et al.'s official code (final version) puts batch norm inside the Hamiltonian block,
F(z) = h·Kᵀ ReLU(BN₂(K·BN₁(z))); the paper's text has the bias-only block
F(z) = h·Kᵀ σ(K z + b) (Chang, Meng, Haber, Ruthotto, Begert, Holtham 2018,
arXiv:1709.03698, Eq. 5). revjax defaults to the BN block; this script shows what that costs
in a training step's compiled temp memory (XLA's memory analysis, nothing run), reversible and
stored, in one process.

Run:  python experiments/chang_block_memory.py [--batch 32] [--out PATH]
      python experiments/chang_block_memory.py --quick   # smoke run: hamiltonian74, batch 4
"""

from __future__ import annotations

import argparse

import optax
from result_files import default_out, write_json

from revjax import memory, models

MIB = 2**20


def measure(model_name: str, batch: int) -> list[dict]:
    """Temp MiB of one SGD-momentum step for each (block, backprop) at CIFAR shape."""
    rows = []
    for block in ("bias", "bn"):
        for backprop in ("reversible", "store"):
            model = models.create(model_name, block=block, backprop=backprop)
            step = memory.model_step_memory(model, (batch, 32, 32, 3), optax.sgd(0.1, momentum=0.9))
            rows.append(
                {
                    "model": model_name,
                    "block": block,
                    "backprop": backprop,
                    "batch": batch,
                    "temp_mib": round(step["temp"] / MIB, 2),
                }
            )
            print(f"{model_name:15s} {block:5s} {backprop:11s} {rows[-1]['temp_mib']:10.1f} MiB")
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hamiltonian218")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", default=default_out("chang_block_memory.json"))
    parser.add_argument("--quick", action="store_true", help="smoke run: hamiltonian74, batch 4")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.batch = "hamiltonian74", 4
    rows = measure(args.model, args.batch)
    write_json(args.out, rows)


if __name__ == "__main__":
    main()

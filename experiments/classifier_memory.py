"""Activation memory of one classifier training step: RevNet vs ResNet
(Gomez et al. 2017, arXiv:1707.04585).

For CIFAR shapes (batch 128, 32x32x3) this compiles one training step as `revjax.memory`
defines it (`model_step_memory`: mean softmax cross-entropy with the batch-norm averages
mutable, value_and_grad, then an SGD-with-momentum update, parameters and optimizer state
donated) and reports XLA's exact scratch allocation `temp` of the compiled step (parameters,
optimizer state, inputs and outputs excluded; nothing is allocated: inputs are
`jax.ShapeDtypeStruct`s). Three tables:

1. registry models (default revnet110, resnet110, and hamiltonian218 when registered) under
   backprop = reversible / store / remat (ResNet: store / remat only; it is not invertible);
2. RevNet-110 with stored vs fully reversible stage transitions (the latter also widens the
   stages to 32/128/512 channels, see `revjax.families.revnet`);
3. RevNet at increasing depth (units per stage 3, 9, 18 = RevNet-38/110/218 widths of
   RevNet-110) under reversible and store: reversible temp memory should stay flat.

Expected: reversible temp bytes well below store for RevNet-110 and nearly independent of depth
except for one parameter-sized gradient buffer (what remains scales with the stored stage
inputs and the widest single block), store growing linearly with depth.

Usage::

    python experiments/classifier_memory.py --quick     # smoke run: RevNet-110, batch 8, 16x16
    python experiments/classifier_memory.py             # all models, depths 3/9/18
    python experiments/classifier_memory.py --sections depth --units 3 18  # one table

Writes `--out` (default experiments/results/classifier_memory.json).
"""

from __future__ import annotations

import argparse
import time

import optax
from result_files import default_out, write_json

from revjax import memory, models

BACKPROPS = ("reversible", "store", "remat")
OPTIMIZER = optax.sgd(0.1, momentum=0.9)  # as in revjax/configs/cifar10_revnet110.py

_CACHE: dict = {}


def measure(label: str, name: str, batch: int, size: int, **overrides) -> dict:
    """One configuration's compiled training-step bytes (identical configurations compile once).

    `overrides` are `revjax.models.create` keyword arguments (the model's config names).
    """
    start = time.perf_counter()
    model = models.create(name, **overrides)
    key = (repr(model), batch, size)
    if key not in _CACHE:
        _CACHE[key] = memory.model_step_memory(model, (batch, size, size, 3), OPTIMIZER)
    stats = _CACHE[key]
    record = {
        "label": label,
        "model": name,
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in overrides.items()},
        "temp_bytes": stats["temp"],
        "argument_bytes": stats["arguments"],
        "output_bytes": stats["outputs"],
        "temp_mib": stats["temp"] / 2**20,
        "compile_s": time.perf_counter() - start,
    }
    print(f"  {label:<34} {record['temp_mib']:9.1f} MiB  ({record['compile_s']:.1f} s)", flush=True)
    return record


def supported_backprops(name: str) -> tuple[str, ...]:
    """ResNets only support store/remat; everything else gets all three."""
    return ("store", "remat") if name.startswith("resnet") else BACKPROPS


def run(args) -> dict:
    """All three tables; the JSON at `args.out` is rewritten after every record."""
    results = {"batch": args.batch, "size": args.size, "models": [], "transitions": [], "depth": []}

    def add(section, record):
        results[section].append(record)
        write_json(args.out, results, quiet=True)

    print("1. registry models")
    for name in args.models if "models" in args.sections else ():
        if name not in models.names():
            print(f"  (skipping {name}: not registered)")
            continue
        for backprop in args.backprops:
            if backprop not in supported_backprops(name):
                continue
            add("models", measure(f"{name} {backprop}", name, args.batch, args.size,
                                  backprop=backprop))  # fmt: skip
    print("2. revnet110 stage transitions (backprop=reversible)")
    for transition in ("stored", "reversible") if "transitions" in args.sections else ():
        label = f"revnet110 transition={transition}"
        add("transitions", measure(label, "revnet110", args.batch, args.size,
                                   backprop="reversible", transition=transition))  # fmt: skip
    print("3. revnet depth sweep")
    for units in args.units if "depth" in args.sections else ():
        for backprop in args.depth_backprops:
            add("depth", measure(f"revnet units={units} {backprop}", "revnet110", args.batch,
                                 args.size, backprop=backprop, units=(units,) * 3))  # fmt: skip
    return results


def ratio(records, label_a, label_b):
    by_label = {r["label"]: r["temp_bytes"] for r in records}
    if label_a in by_label and label_b in by_label and by_label[label_b]:
        return by_label[label_a] / by_label[label_b]
    return None


def format_table(results) -> str:
    lines = ["| section | configuration | temp MiB |", "|---|---|---:|"]
    for section in ("models", "transitions", "depth"):
        for r in results[section]:
            lines.append(f"| {section} | {r['label']} | {r['temp_mib']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="sub-minute subset")
    parser.add_argument("--out", default=default_out("classifier_memory.json"))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--models", nargs="*", default=["revnet110", "resnet110", "hamiltonian218"])
    parser.add_argument("--backprops", nargs="*", default=list(BACKPROPS))
    parser.add_argument("--units", type=int, nargs="*", default=[3, 9, 18])
    parser.add_argument("--depth-backprops", nargs="*", default=["reversible", "store"])
    parser.add_argument("--sections", nargs="*", default=["models", "transitions", "depth"],
                        help="which of the three tables to compile")  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:  # a smoke run of every section: 4 compilations at batch 8, 16x16
        args.models = ["revnet110"]
        args.backprops = ["reversible", "store"]
        args.units = [3, 9]
        args.depth_backprops = ["reversible"]
        args.batch, args.size = 8, 16
    results = run(args)
    results["ratios"] = {
        "revnet110 reversible / store": ratio(
            results["models"], "revnet110 reversible", "revnet110 store"
        ),
        "revnet110 reversible / resnet110 store": ratio(
            results["models"], "revnet110 reversible", "resnet110 store"
        ),
        "revnet110 reversible transitions / stored transitions": ratio(
            results["transitions"],
            "revnet110 transition=reversible",
            "revnet110 transition=stored",
        ),
    }
    depths = [r for r in results["depth"] if r["backprop"] == "reversible"]
    if len(depths) > 1:
        results["ratios"]["reversible deepest / shallowest"] = (
            depths[-1]["temp_bytes"] / depths[0]["temp_bytes"]
        )
    print()
    print(format_table(results))
    for key, value in results["ratios"].items():
        if value is not None:
            print(f"{key}: {value:.3f}")
    write_json(args.out, results)


if __name__ == "__main__":
    main()

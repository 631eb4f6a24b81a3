"""The README learning table, regenerated from the zoo runs' ``summary.json`` files.

Every row is one zoo config (``revjax/configs/zoo.py``) trained by the one trainer,
``python -m revjax.train``; several workdirs of one config (different ``--config.seed``) give
the mean and the sample standard deviation over seeds. Runs, then the table::

    for m in resnet32 revnet38 hamiltonian74 midpoint62 leapfrog62 revup20 lean_hamiltonian \
             lean_hamiltonian_circulant \
             lean_b_resnet lean_b_mobilenet lean_b_linear_mix lean_b_explicit_rd \
             lean_b_implicit_rd lean_b_circular_rd hyperbolic2d; do
      for s in 0 1 2; do
        python -m revjax.train --config=zoo:$m --config.seed=$s --workdir=runs/zoo/$m/seed$s
      done
    done
    python experiments/learning_table.py runs/zoo
    python experiments/learning_table.py --quick   # one smoke run of zoo:revnet38 (seconds)

Columns: the task's score (test accuracy, or mean IoU for segmentation), steps x batch, the
training loop's seconds (steps / steps_per_sec: compilation, evaluation and saves excluded),
the body's reconstruction error after training (float32, on the last training batch, train
mode; "—" without a reversible body) and the compiled temp memory of one training step in
reversible vs store mode (XLA ``memory_analysis()``, optimizer update included, state donated;
a model without a backprop mode is plain autodiff and has the store column only).

Writes ``--out`` (default experiments/results/learning_table.json: one record per config
with the per-seed values and the held-out score at every periodic evaluation, mean over seeds)
and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

from result_files import default_out, write_json

MIB = 2**20


def find_summaries(roots: list[str]) -> list[dict]:
    """Every finished run's summary.json under ``roots`` (searched recursively)."""
    out = []
    for root in roots:
        root = Path(root)
        paths = [root] if root.name == "summary.json" else sorted(root.rglob("summary.json"))
        for path in paths:
            summary = json.loads(path.read_text())
            if not summary.get("preempted") and summary.get("steps") == summary.get("total_steps"):
                out.append({**summary, "workdir": str(path.parent)})
    return out


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """(mean, sample standard deviation; None for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def score(summary: dict) -> tuple[str, float]:
    """(metric name, value): mean IoU for segmentation, test accuracy otherwise."""
    if summary.get("task") == "segmentation" or "mean_iou" in summary:
        return "mean IoU", float(summary["mean_iou"])
    return "test accuracy", float(summary["test_accuracy"])


def score_curve(workdir: str, metric: str) -> dict[int, float]:
    """{step: held-out score} of one run's periodic evaluations (``metrics.jsonl``)."""
    key = "mean_iou" if metric == "mean IoU" else "accuracy"
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return {}
    records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {r["step"]: float(r[key]) for r in records if r.get("split") == "test" and key in r}


def mean_curve(curves: list[dict[int, float]]) -> dict[int, float]:
    """Mean over runs at the steps every run evaluated."""
    steps = set.intersection(*(set(c) for c in curves)) if curves else set()
    return {step: sum(c[step] for c in curves) / len(curves) for step in sorted(steps)}


def rows(summaries: list[dict]) -> list[dict]:
    """One record per config name (in first-seen order), aggregated over its seeds."""
    groups: dict[str, list[dict]] = {}
    for summary in summaries:
        groups.setdefault(summary["config"], []).append(summary)
    out = []
    for name, runs in groups.items():
        runs = sorted(runs, key=lambda s: s.get("seed", 0))
        metric = score(runs[0])[0]
        scores = [score(s)[1] for s in runs]
        seconds = [s["steps"] / s["steps_per_sec"] for s in runs if s.get("steps_per_sec")]
        errors = [s["reconstruction_error"] for s in runs if s.get("reconstruction_error")]
        memory = runs[0].get("memory_temp_bytes", {})
        # A model without a backprop mode (LeanResNet) is plain autodiff: it stores.
        stored = memory.get("store", memory.get("model"))
        curve = mean_curve([score_curve(s["workdir"], metric) for s in runs])
        out.append(
            {
                "config": name,
                "model": runs[0]["model"],
                "metric": metric,
                "seeds": [s.get("seed") for s in runs],
                "scores": scores,
                "score_mean": _mean_std(scores)[0],
                "score_std": _mean_std(scores)[1],
                "steps": runs[0]["steps"],
                "batch": runs[0].get("global_batch_size"),
                "train_seconds": _mean_std(seconds)[0] if seconds else None,
                "reconstruction_error": max(errors) if errors else None,
                "reversible_mib": memory["reversible"] / MIB if "reversible" in memory else None,
                "store_mib": stored / MIB if stored is not None else None,
                "score_by_step": {str(step): v for step, v in curve.items()},
                "workdirs": [s["workdir"] for s in runs],
            }
        )
    return out


def zoo_order(records: list[dict]) -> list[dict]:
    """Records in the zoo's recipe order (``revjax/configs/zoo.py``), other configs after."""
    from revjax.configs import zoo

    order = {name: i for i, name in enumerate(zoo.RECIPES)}
    return sorted(records, key=lambda r: (order.get(r["model"], len(order)), r["config"]))


def format_table(records: list[dict]) -> str:
    """The README's markdown table; a score over several seeds reads "mean ± std (n)"."""
    lines = [
        "| model | metric | score | steps x batch | train s | recon. err. | rev. MiB | store MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]

    def num(value, fmt):
        return "—" if value is None else format(value, fmt)

    for r in records:
        score_text = f"{r['score_mean']:.3f}"
        if r["score_std"] is not None:
            score_text += f" ± {r['score_std']:.3f} ({len(r['scores'])})"
        lines.append(
            f"| {r['model']} | {r['metric']} | {score_text} | {r['steps']} x {r['batch']} | "
            f"{num(r['train_seconds'], '.0f')} | {num(r['reconstruction_error'], '.1e')} | "
            f"{num(r['reversible_mib'], '.1f')} | {num(r['store_mib'], '.1f')} |"
        )
    return "\n".join(lines)


def smoke_run(root: Path) -> None:
    """``python -m revjax.train --config=zoo:revnet38,smoke --workdir=<root>/revnet38/seed0``."""
    from revjax import configs
    from revjax.train import trainer

    config = configs.load_config("zoo", "revnet38,smoke")
    config.progress_bar, config.tensorboard = False, False
    trainer.train_and_evaluate(config, root / "revnet38" / "seed0")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", default=["runs/zoo"], help="workdirs or their roots")
    parser.add_argument("--quick", action="store_true", help="tabulate one smoke run")
    parser.add_argument("--out", default=default_out("learning_table.json"))
    args = parser.parse_args(argv)
    if args.quick:
        with tempfile.TemporaryDirectory() as root:
            smoke_run(Path(root))
            args.runs = [root]
            records = rows(find_summaries(args.runs))
    else:
        records = zoo_order(rows(find_summaries(args.runs)))
    if not records:
        raise SystemExit(f"no finished run's summary.json under {args.runs}")
    print(format_table(records))
    for r in records:
        if len(r["score_by_step"]) > 1:
            growth = ", ".join(f"{v:.3f} @ {k}" for k, v in r["score_by_step"].items())
            print(f"{r['model']}: held-out {r['metric']} (mean over seeds) {growth}")
    write_json(args.out, {"runs": args.runs, "rows": records})
    return records


if __name__ == "__main__":
    main()

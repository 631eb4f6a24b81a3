"""Training curves (loss, accuracy vs step) from one or more workdirs' metrics.jsonl -> PNG.

    python experiments/plot_curves.py WORKDIR [WORKDIR ...] [--out results/curves.png]
    python experiments/plot_curves.py --quick      # trains a 60-step digits run first

Reads the JSON lines written by ``revjax.train`` (``{"step", "split": "train"|"test",
"loss", "accuracy", ...}``), prints a table of the final values per run, writes the figure
to ``--out`` and the table to the same path with ``.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(workdir: str | Path) -> dict[str, list[dict]]:
    """{"train": [...], "test": [...]} records of ``workdir/metrics.jsonl``, sorted by step.

    A resumed run may repeat steps; the last record per (split, step) wins.
    """
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (is {workdir} a revjax.train workdir?)")
    latest: dict[tuple[str, int], dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            latest[(record["split"], record["step"])] = record
    out: dict[str, list[dict]] = {"train": [], "test": []}
    for (split, _), record in sorted(latest.items(), key=lambda kv: kv[0][1]):
        out.setdefault(split, []).append(record)
    return out


def plot(runs: dict[str, dict[str, list[dict]]], out: Path) -> None:
    """Two panels (loss, accuracy), train solid and test dashed, one colour per run."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (label, metrics) in enumerate(runs.items()):
        colour = f"C{i}"
        for split, style in (("train", "-"), ("test", "--")):
            records = metrics.get(split, [])
            if not records:
                continue
            steps = [r["step"] for r in records]
            for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
                marker = "o" if split == "test" else None
                ax.plot(
                    steps,
                    [r[key] for r in records],
                    style,
                    color=colour,
                    marker=marker,
                    label=f"{label} ({split})",
                )
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def final_table(runs: dict[str, dict[str, list[dict]]]) -> list[dict]:
    rows = []
    for label, metrics in runs.items():
        train, test = metrics.get("train", []), metrics.get("test", [])
        rows.append(
            {
                "run": label,
                "steps": train[-1]["step"] if train else 0,
                "train_loss": train[-1]["loss"] if train else None,
                "test_accuracy": test[-1]["accuracy"] if test else None,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="*")
    parser.add_argument("--out", default="results/curves.png")
    parser.add_argument("--quick", action="store_true", help="train a 60-step digits run first")
    args = parser.parse_args()
    workdirs = list(args.workdirs)
    if args.quick or not workdirs:
        from revjax import configs
        from revjax.train import train_and_evaluate

        config = configs.load_config("default")
        config.num_steps, config.eval_every_steps, config.memory_report = 60, 20, False
        config.log_every_steps = 5
        workdir = tempfile.mkdtemp(prefix="revjax_quick_")
        train_and_evaluate(config, workdir)
        workdirs.append(workdir)
    runs = {Path(w).name or str(w): read_metrics(w) for w in workdirs}
    out = Path(args.out)
    plot(runs, out)
    rows = final_table(runs)
    print(f"{'run':<32} {'steps':>6} {'train loss':>11} {'test acc':>9}")
    for r in rows:
        loss = f"{r['train_loss']:.4f}" if r["train_loss"] is not None else "-"
        acc = f"{r['test_accuracy']:.4f}" if r["test_accuracy"] is not None else "-"
        print(f"{r['run']:<32} {r['steps']:>6} {loss:>11} {acc:>9}")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()

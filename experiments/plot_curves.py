"""Training curves (loss, accuracy vs step) from one or more workdirs' metrics.jsonl -> PNG.

    python experiments/plot_curves.py WORKDIR                  # -> WORKDIR/curves.png
    python experiments/plot_curves.py WORKDIR [WORKDIR ...] --out compare.png
    python experiments/plot_curves.py --quick      # trains a 60-step digits run first

Reads the JSON lines written by ``revjax.train`` (``{"step", "split": "train"|"test",
"loss", "accuracy", ...}``), prints a table of the final values per run, writes the figure
into the workdir (one workdir) or to ``--out`` (several), and the table next to it with
``.json``. A workdir without metrics yet is a one-line message (exit status 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(workdir: str | Path) -> dict[str, list[dict]]:
    """{"train": [...], "test": [...]} records of ``workdir/metrics.jsonl``, sorted by step.

    Only records with a ``loss`` count (others, e.g. ``reconstruction_error``, are checks);
    should a step repeat, the last record per (split, step) wins.
    """
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (is {workdir} a revjax.train workdir?)")
    latest: dict[tuple[str, int], dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            if "loss" in record:
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
    parser.add_argument("--out", default=None, help="default WORKDIR/curves.png (one workdir)")
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
    if args.out is None and len(workdirs) > 1:
        sys.exit("error: several workdirs: pass --out PATH for the comparison figure")
    runs = {}
    for w in workdirs:
        try:
            runs[Path(w).name or str(w)] = read_metrics(w)
        except FileNotFoundError:
            sys.exit(f"{w}: no metrics.jsonl yet (no training step logged); nothing to plot")
        if not runs[Path(w).name or str(w)]["train"]:
            sys.exit(f"{w}: metrics.jsonl has no training records yet; nothing to plot")
    out = Path(args.out) if args.out else Path(workdirs[0]) / "curves.png"
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

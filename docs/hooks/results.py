"""MkDocs hook: the results pages' tables and plots, generated from `experiments/results/`.

A results page holds prose and markers; each marker line `<!-- results: NAME -->` is replaced
by the markdown table `TABLES[NAME]` renders from the committed JSON, and the figures
`PLOTS[NAME]` draws are added to the site as `results/NAME.png` (matplotlib, Agg). So the
numbers in the docs are those of the committed result files: re-running an experiment and
committing its JSON updates its page; an unknown marker or a missing file fails the build.
"""

from __future__ import annotations

import io
import json
import math
import re
import statistics
from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path(__file__).resolve().parents[2] / "experiments" / "results"
MIB = 2**20
MARKER = re.compile(r"^<!-- results: ([a-z0-9_]+) -->$", re.MULTILINE)


def load(name: str):
    """The JSON (or JSON-lines, `.jsonl`) result file `experiments/results/<name>`."""
    path = RESULTS / name
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())


def table(header: list[str], rows: list[list], align: str | None = None) -> str:
    """A markdown table; `align` is one character per column, "l" or "r" (default: first l)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def mib(nbytes: float, digits: int = 2) -> str:
    return f"{nbytes / MIB:.{digits}f}"


def sci(value) -> str:
    """1.2e-05 -> 1.2e-5; None (a non-finite value in the JSON) -> "non-finite"."""
    if value is None:
        return "non-finite"
    if value == 0:
        return "0.0"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


# --------------------------------------------------------------------------------------------
# Tables.


def memory_vs_depth() -> str:
    records = load("memory_vs_depth.json")
    by = {(r["depth"], r["backprop"]): r for r in records}
    rows = []
    for depth in sorted({r["depth"] for r in records}):
        rev, store, remat = (by[(depth, m)] for m in ("reversible", "store", "remat"))
        rows.append(
            [
                depth,
                mib(rev["temp_bytes"]),
                mib(store["temp_bytes"]),
                mib(remat["temp_bytes"]),
                f"{rev['memory_ratio_store_over_this']:.1f}x",
                f"{rev['time_ratio_this_over_store']:.2f}",
                f"{remat['time_ratio_this_over_store']:.2f}",
            ]
        )
    header = ["depth", "reversible MiB", "store MiB", "remat MiB", "store / reversible",
              "reversible time / store", "remat time / store"]  # fmt: skip
    return table(header, rows)


def memory_vs_depth_exact() -> str:
    by = {r["backprop"]: r for r in load("memory_vs_depth_exact.json")}
    rows = []
    for mode in ("reversible", "store"):
        float_, exact = by[mode], by[f"exact_{mode}"]
        rows.append(
            [
                float_["depth"],
                mode,
                mib(float_["temp_bytes"]),
                mib(exact["temp_bytes"]),
                f"{exact['time_ratio_this_over_float']:.2f}",
            ]
        )
    header = ["depth", "backprop", "temp MiB float", "temp MiB exact", "exact/float step time"]
    return table(header, rows, "rlrrr")


def classifier_memory() -> str:
    data = load("classifier_memory.json")
    by = {r["label"]: r for r in data["models"]}
    depth = {r["label"]: r for r in data["depth"]}

    def get(label, table=by):
        return mib(table[label]["temp_bytes"], 1) if label in table else "—"

    rows = []
    for model, title in (("revnet110", "RevNet-110"), ("resnet110", "ResNet-110 (store)"),
                         ("hamiltonian218", "Hamiltonian-218")):  # fmt: skip
        rev = by.get(f"{model} reversible")
        store = by[f"{model} store"]
        ratio = f"{store['temp_bytes'] / rev['temp_bytes']:.1f}x" if rev else "—"
        rows.append([title, get(f"{model} reversible"), get(f"{model} store"),
                     get(f"{model} remat"), ratio])  # fmt: skip
    deep_rev, deep_store = (
        depth.get("revnet units=18 reversible"),
        depth.get("revnet units=18 store"),
    )
    if deep_rev and deep_store:
        rows.append(["RevNet, 18 units per stage (218 layers)", mib(deep_rev["temp_bytes"], 1),
                     mib(deep_store["temp_bytes"], 1), "—",
                     f"{deep_store['temp_bytes'] / deep_rev['temp_bytes']:.1f}x"])  # fmt: skip
    header = ["model", "reversible MiB", "store MiB", "remat MiB", "store / reversible"]
    return table(header, rows)


def classifier_depth() -> str:
    data = load("classifier_memory.json")
    by = {r["label"]: r for r in data["depth"]}
    units = sorted({r["units"][0] for r in data["depth"]})
    rows = [[u, mib(by[f"revnet units={u} reversible"]["temp_bytes"], 1),
             mib(by[f"revnet units={u} store"]["temp_bytes"], 1)] for u in units]  # fmt: skip
    transitions = {r["transition"]: r for r in data["transitions"]}
    out = table(["units per stage (RevNet-110 widths)", "reversible MiB", "store MiB"], rows)
    if "reversible" in transitions:
        out += (
            "\n\nWith fully reversible (space-to-depth) transitions RevNet-110's reversible step "
            f"needs {mib(transitions['reversible']['temp_bytes'], 1)} MiB."
        )
    return out


def chang_block_memory() -> str:
    records = load("chang_block_memory.json")
    by = {(r["block"], r["backprop"]): r for r in records}
    rows = [[f"`{b}`", f"{by[(b, 'reversible')]['temp_mib']:.1f}",
             f"{by[(b, 'store')]['temp_mib']:.1f}"] for b in ("bias", "bn")]  # fmt: skip
    first = records[0]
    return f"{first['model']}, batch {first['batch']}:\n\n" + table(
        ["block", "reversible MiB", "store MiB"], rows
    )


def exact_cost() -> str:
    rows = [
        [
            r["model"],
            r["backprop"],
            r["arithmetic"],
            mib(r["temp_bytes"]),
            f"{1e3 * r['step_seconds']:.0f}",
            f"{r['time_ratio_over_float']:.2f}",
            f"{r['memory_ratio_over_float']:.2f}",
        ]  # fmt: skip
        for r in load("exact_cost.json")
    ]
    header = ["model", "backprop", "arithmetic", "temp MiB", "step ms", "time / float",
              "memory / float"]  # fmt: skip
    return table(header, rows, "lllrrrr")


def hyperbolic_memory() -> str:
    data = load("hyperbolic_memory.json")
    rows = [
        [
            r["layers_per_unit"],
            mib(r["reversible"]),
            mib(r["store"]),
            mib(r["block"]),
            f"{r['store'] / r['reversible']:.1f}x",
        ]  # fmt: skip
        for r in data["depth_sweep_temp_bytes"]
    ]
    header = ["layers/unit", "(a) fully reversible", "(b) store", "(c) block-reversible",
              "(b)/(a)"]  # fmt: skip
    return table(header, rows)


def hyperbolic_largest_clip() -> str:
    data = load("hyperbolic_memory.json")
    names = {"reversible": "(a) fully reversible", "store": "(b) store",
             "block": "(c) block-reversible"}  # fmt: skip
    budgets = data["config"]["budgets_gib"]
    rows = [
        [
            names[r["variant"]],
            f"{r['bytes_per_voxel']:.0f}",
            r["side_16gib"],
            f"{r['verified_total_at_first_budget'] / 2**30:.2f} GiB",
            r["side_80gib"],
        ]  # fmt: skip
        for r in data["largest_clip"]
    ]
    header = ["variant", "bytes/voxel", f"S within {budgets[0]} GiB", "compiled total at that S",
              f"S within {budgets[1]} GiB"]  # fmt: skip
    return table(header, rows, "lrrrr")


def revup_memory() -> str:
    rows = [
        [
            r["model"],
            f"{r['temp_MiB_reversible_b8']:.2f}",
            f"{r['temp_MiB_reversible_b64']:.2f}",
            f"{r['temp_MiB_reversible']:.2f}",
            f"{r['temp_MiB_store']:.2f}",
            f"{r['temp_MiB_remat']:.2f}",
        ]  # fmt: skip
        for r in load("revup_memory.json")["rows"]
    ]
    header = ["model", "reversible b=8", "reversible b=64", "reversible b=128", "store b=128",
              "remat b=128"]  # fmt: skip
    return table(header, rows)


def sharding_spatial(name: str = "sharding_scaling.json") -> str:
    data = load(name)
    rows = [[r["space_devices"], f"{r['temp_bytes_per_device'] / MIB:.1f}",
             f"{r['fraction_of_one_device']:.2f}"] for r in data["spatial"]]  # fmt: skip
    clip = "x".join(str(s) for s in data["spatial"][0]["clip"])
    return f"Clip {clip}:\n\n" + table(
        ['devices on "space"', "temp MiB per device", "fraction of one device"], rows
    )


def sharding_weak_scaling() -> str:
    data = load("sharding_scaling.json")
    titles = {"revnet110": "RevNet-110", "hamiltonian218": "Hamiltonian-218"}
    gpus = [e["gpus"] for e in data["weak_scaling"][0]["estimates"] if e["gpus"] > 1]
    rows = []
    for r in data["weak_scaling"]:
        eff = {e["gpus"]: e["efficiency_no_overlap"] for e in r["estimates"]}
        rows.append([titles.get(r["model"], r["model"]), f"{r['flops_per_device_step'] / 1e9:.1f}",
                     f"{r['allreduce_bytes_per_device_step'] / MIB:.2f}",
                     *(f"{eff[g]:.2f}" for g in gpus)])  # fmt: skip
    header = ["model", "GFLOP per GPU step", "all-reduce MiB",
              *(f"efficiency {g} GPUs" for g in gpus)]  # fmt: skip
    return table(header, rows)


def sharding_spatial_quick() -> str:
    return sharding_spatial("sharding_scaling_quick.json")


def torch_parity() -> str:
    one, two = load("torch_parity_1thread.json"), load("torch_parity.json")
    names = {"torch_store": "PyTorch stored (`torch_store`)", "store": "revjax `store`",
             "reversible": "revjax `reversible`",
             "reversible_unroll2": "revjax `reversible`, `Scan(unroll=2)`"}  # fmt: skip
    rows = []
    for key, title in names.items():
        a, b = one["variants"][key], two["variants"][key]
        rows.append([title, f"{a['median_ms']:.1f}", f"{a['ratio_to_baseline']:.2f}",
                     f"{b['median_ms']:.1f}", f"{b['ratio_to_baseline']:.2f}"])  # fmt: skip
    header = ["variant", f"{one['threads']} thread (pinned core), ms", "/ torch",
              f"{two['threads']} threads, ms", "/ torch"]  # fmt: skip
    versions = ", ".join(f"{k} {v}" for k, v in one["versions"].items())
    return table(header, rows) + f"\n\n({versions}; medians of {one['rounds']} rounds.)"


def torch_parity_ops() -> str:
    ops = load("torch_parity_1thread.json")["conv_ops"]
    rows = [[op, f"{1e3 * ops[f'xla_{op}']['median_seconds']:.2f}",
             f"{1e3 * ops[f'torch_{op}']['median_seconds']:.2f}"]
            for op in ("fwd", "input_grad", "kernel_grad")]  # fmt: skip
    return table(["convolution (one layer, one thread)", "XLA ms", "PyTorch ms"], rows)


def video_segmentation() -> str:
    data = load("video_segmentation_300.json")
    s = data["summary"]
    ious = [s[k] for k in sorted(k for k in s if re.fullmatch(r"iou_\d+", k))]
    rows = [[s["steps"], f"{s['mean_iou']:.3f}", " / ".join(f"{v:.3f}" for v in ious),
             f"{s['test_accuracy']:.3f}", f"{data['all_background_mean_iou']:.3f}",
             f"{data['num_params']:,}"]]  # fmt: skip
    header = ["steps", "held-out mean IoU", "per class", "voxel accuracy", "all-background",
              "parameters"]  # fmt: skip
    return table(header, rows)


def learning_table() -> str:
    """`experiments/learning_table.py`'s rows: mean ± std over the seeds of each config."""
    rows = []
    for r in load("learning_table.json")["rows"]:
        score = f"{r['score_mean']:.3f}"
        if r["score_std"] is not None:
            score += f" ± {r['score_std']:.3f}"
        num = lambda v, fmt: "—" if v is None else format(v, fmt)  # noqa: E731
        rows.append([r["model"], r["metric"], score, len(r["scores"]),
                     f"{min(r['scores']):.3f}", f"{r['steps']} x {r['batch']}",
                     num(r["train_seconds"], ".0f"),
                     "—" if r["reconstruction_error"] is None else sci(r["reconstruction_error"]),
                     num(r["reversible_mib"], ".1f"), num(r["store_mib"], ".1f")])  # fmt: skip
    header = ["model", "metric", "mean ± std", "seeds", "worst seed", "steps x batch",
              "train s", "recon. err. (worst)", "rev. MiB", "store MiB"]  # fmt: skip
    return table(header, rows, "llrrrrrrrr")


def learning_curves() -> str:
    """Held-out score at every periodic evaluation (mean over seeds), where a config has them."""
    rows = []
    for r in load("learning_table.json")["rows"]:
        curve = r.get("score_by_step", {})
        if len(curve) > 1:
            rows.append(
                [r["model"], r["metric"], " · ".join(f"{v:.3f} @ {k}" for k, v in curve.items())]
            )
    return table(["model", "metric", "held-out score @ step (mean over seeds)"], rows, "lll")


def _drift_family(r) -> str:
    names = {"revnet": "RevNet coupling", "hamiltonian": "Hamiltonian", "midpoint": "midpoint",
             "leapfrog": "leapfrog"}  # fmt: skip
    h = "" if r["h"] is None else f" (h = {r['h']:g})"
    return names[r["family"]] + h


def _drift_rows(key, extra=None):
    data = load("reconstruction_drift.json")["rows"]
    depths = sorted({r["depth"] for r in data})
    groups = {}
    for r in data:
        groups.setdefault((r["regime"], r["family"]), {})[r["depth"]] = r
    rows = []
    for (regime, _), by_depth in groups.items():
        first = next(iter(by_depth.values()))
        cells = [key(by_depth[d]) for d in depths]
        rows.append([regime.split(",")[0], _drift_family(first), *cells,
                     *(extra(by_depth[depths[-1]]) if extra else [])])  # fmt: skip
    return depths, rows


def reconstruction_drift() -> str:
    depths, rows = _drift_rows(
        lambda r: sci(r["input_error"]),
        lambda r: ["non-finite" if r["growth"] is None else f"{r['growth']:.3g}"],
    )
    header = ["regime", "family", *(f"error @ {d}" for d in depths), f"growth @ {depths[-1]}"]
    return table(header, rows, "ll" + "r" * (len(depths) + 1))


def reconstruction_drift_exact() -> str:
    def cell(r):
        value = sci(r["exact_input_error"])
        return value + (" (overflow)" if r["exact_overflow"] else "")

    depths, rows = _drift_rows(cell)
    header = ["regime", "family", *(f"exact error @ {d}" for d in depths)]
    return table(header, rows, "ll" + "r" * len(depths))


def hamiltonian1202_curve() -> str:
    records = load("hamiltonian1202_drift_guard_metrics.jsonl")
    rows = [[r["step"], f"{r['loss']:.3g}" if "loss" in r else "",
             sci(r["reconstruction_error"]) if "reconstruction_error" in r else ""]
            for r in records if r.get("split") == "train"]  # fmt: skip
    return table(["step", "train loss (one batch)", "reconstruction error"], rows)


def transformer_lm() -> str:
    by_block: dict[str, list[dict]] = {}
    for r in load("transformer_lm.json")["rows"]:
        by_block.setdefault(r["block"], []).append(r)
    base = statistics.mean(r["test_bpb"] for r in by_block["standard"])
    rows = []
    for block, runs in by_block.items():
        bpb = [r["test_bpb"] for r in sorted(runs, key=lambda r: r["seed"])]
        spread = f" ± {statistics.stdev(bpb):.3f}" if len(bpb) > 1 else ""
        rows.append([f"`{block}`" + (" (stored baseline)" if block == "standard" else ""),
                     f"{runs[0]['params']:,}", len(bpb), f"{statistics.mean(bpb):.3f}{spread}",
                     f"{(statistics.mean(bpb) / base - 1) * 100:+.1f}%"])  # fmt: skip
    header = ["block", "parameters", "seeds", "held-out bits per byte (mean ± std)",
              "vs baseline"]  # fmt: skip
    return table(header, rows)


def gradient_precision() -> str:
    data = load("gradient_precision.json")
    rows = [[f"`{r['model']}`", sci(r["reconstruction_error"]), sci(r["reversible_median"]),
             sci(r["reversible_max"]), sci(r["store_median"]), sci(r["store_max"]),
             f"{r['ratio']:.2f}"] for r in data["rows"]]  # fmt: skip
    header = ["model", "reconstruction error", "reversible (median)", "reversible (max)",
              "store (median)", "store (max)", "reversible / store (median)"]  # fmt: skip
    return table(header, rows)


def gradient_precision_store_every() -> str:
    data = load("gradient_precision_store_every.json")
    rows = [[f"`{r['model']}`", str(r.get("store_every", "None")), sci(r["reconstruction_error"]),
             sci(r["reversible_median"]), sci(r["reversible_max"]), sci(r["store_median"]),
             sci(r["store_max"]), mib(r["reversible_temp_bytes"], 1),
             mib(r["store_temp_bytes"], 1)] for r in data["rows"]]  # fmt: skip
    header = ["model", "store_every", "reconstruction error", "reversible (median)",
              "reversible (max)", "store (median)", "store (max)", "reversible temp",
              "store temp"]  # fmt: skip
    return table(header, rows)


TABLES = {f.__name__: f for f in (
    memory_vs_depth, memory_vs_depth_exact, classifier_memory, classifier_depth,
    chang_block_memory, exact_cost, hyperbolic_memory, hyperbolic_largest_clip, revup_memory,
    sharding_spatial, sharding_spatial_quick, sharding_weak_scaling, torch_parity,
    torch_parity_ops, video_segmentation, learning_table, learning_curves,
    reconstruction_drift, reconstruction_drift_exact, hamiltonian1202_curve, gradient_precision,
    gradient_precision_store_every, transformer_lm,
)}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Plots.


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    _figure().close(fig)
    return buffer.getvalue()


def plot_memory_vs_depth() -> bytes:
    plt = _figure()
    records = load("memory_vs_depth.json")
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, style in (("reversible", "o-"), ("store", "s-"), ("remat", "^-")):
        sel = sorted((r["depth"], r["temp_bytes"] / MIB) for r in records if r["backprop"] == mode)
        ax.plot(*zip(*sel), style, label=mode)
    ax.set(xlabel="depth (couplings)", ylabel="temp MiB of one training step",
           title="Memory against depth (engine)", xscale="log", yscale="log")  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _png(fig)


def plot_hyperbolic_memory() -> bytes:
    plt = _figure()
    sweep = load("hyperbolic_memory.json")["depth_sweep_temp_bytes"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("reversible", "(a) fully reversible"), ("store", "(b) store"),
                       ("block", "(c) block-reversible")):  # fmt: skip
        ax.plot([r["layers_per_unit"] for r in sweep], [r[key] / MIB for r in sweep], "o-",
                label=label)  # fmt: skip
    ax.set(xlabel="layers per unit", ylabel="temp MiB of one training step",
           title="hyperbolic3d, clip 8x32x32")  # fmt: skip
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _png(fig)


def plot_classifier_depth() -> bytes:
    plt = _figure()
    depth = load("classifier_memory.json")["depth"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in ("reversible", "store"):
        sel = sorted((r["units"][0], r["temp_bytes"] / MIB) for r in depth if r["backprop"] == mode)
        ax.plot(*zip(*sel), "o-", label=mode)
    ax.set(xlabel="units per stage", ylabel="temp MiB (batch 128, 32x32)",
           title="RevNet at RevNet-110's widths")  # fmt: skip
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _png(fig)


def plot_reconstruction_drift() -> bytes:
    plt = _figure()
    rows = load("reconstruction_drift.json")["rows"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    families = sorted({r["family"] for r in rows})
    for regime, style in (("default init, i.i.d.", "o:"), ("stable", "s-")):
        for colour, family in zip(colours, families):
            sel = [(r["depth"], r["input_error"]) for r in rows
                   if r["family"] == family and r["regime"] == regime
                   and r["input_error"] is not None and math.isfinite(r["input_error"])
                   and r["input_error"] > 0]  # fmt: skip
            if sel:
                ax.loglog(*zip(*sel), style, color=colour, label=f"{family} ({regime})")
    ax.set(xlabel="depth (blocks)", ylabel="float32 relative error at the input",
           title="Reconstruction drift")  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def plot_hamiltonian1202_curve() -> bytes:
    plt = _figure()
    records = [r for r in load("hamiltonian1202_drift_guard_metrics.jsonl")
               if r.get("split") == "train"]  # fmt: skip
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss = [(r["step"], r["loss"]) for r in records if "loss" in r]
    drift = [(r["step"], r["reconstruction_error"]) for r in records if "reconstruction_error" in r]
    ax.plot(*zip(*loss), "o-")
    ax.set(xlabel="step", ylabel="train loss (one batch of 16)", title="hamiltonian1202 learning")
    bx.semilogy(*zip(*drift), "s-")
    bx.axhline(1e-3, color="r", ls="--", label="drift_rtol 1e-3")
    bx.set(xlabel="step", ylabel="relative reconstruction error", title="drift guard")
    bx.legend()
    for a in (ax, bx):
        a.grid(True, alpha=0.3)
    fig.tight_layout()
    return _png(fig)


PLOTS = {
    "memory_vs_depth": plot_memory_vs_depth,
    "hyperbolic_memory": plot_hyperbolic_memory,
    "classifier_depth": plot_classifier_depth,
    "reconstruction_drift": plot_reconstruction_drift,
    "hamiltonian1202_curve": plot_hamiltonian1202_curve,
}


# --------------------------------------------------------------------------------------------
# MkDocs events.


def on_files(files, config):
    """Add every plot as a generated file, results/<name>.png."""
    for name, draw in PLOTS.items():
        files.append(File.generated(config, f"results/{name}.png", content=draw()))
    return files


def on_page_markdown(markdown, page, config, files):
    """Replace each `<!-- results: NAME -->` line by the table NAME renders."""

    def render(match):
        name = match.group(1)
        if name not in TABLES:
            raise KeyError(f"{page.file.src_uri}: unknown results table {name!r}; use one of "
                           f"{sorted(TABLES)}")  # fmt: skip
        return TABLES[name]()

    return MARKER.sub(render, markdown)

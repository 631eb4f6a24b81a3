"""Every experiment script runs in the default suite: its `--quick` mode (or, for a script
without one, the small arguments of `QUICK_ARGS`) in a subprocess, at XLA -O0 like the rest of
the suite; plus checks of what some of them report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# How each script runs in the suite: ["--quick"] unless listed. Scripts without a main() are
# helpers; scripts run another way name the test that runs them.
QUICK_ARGS = {
    "lean_parameter_table": [],  # already quick: parameter shapes by jax.eval_shape
    "exact_training": ["--epochs", "1", "--depth", "1"],
}
COVERED_ELSEWHERE = {
    "torch_parity": "test_torch_parity_runs_without_torch_and_every_variant_does_the_same_step",
}
QUICK_TIMEOUT = 300  # seconds per script (each takes ~10-50 s at -O0 on 2 loaded cores)


def _scripts() -> list[str]:
    """experiments/*.py that define main() (the others are helpers they import)."""
    return sorted(
        p.stem for p in (ROOT / "experiments").glob("*.py") if "\ndef main(" in p.read_text()
    )


def test_every_experiment_has_a_quick_run():
    """A new script gets --quick (or an entry in QUICK_ARGS / COVERED_ELSEWHERE): no
    experiment can rot unnoticed."""
    for name in _scripts():
        if name in COVERED_ELSEWHERE:
            assert f"def {COVERED_ELSEWHERE[name]}(" in Path(__file__).read_text()
            continue
        source = (ROOT / "experiments" / f"{name}.py").read_text()
        assert name in QUICK_ARGS or '"--quick"' in source, (
            f"experiments/{name}.py has no --quick mode: add one (a run of seconds) or an "
            "entry in tests/test_experiments.py QUICK_ARGS"
        )


def _run_quick(name: str, tmp_path: Path) -> Path:
    """Run experiments/<name>.py in its quick mode, output under tmp_path; returns --out."""
    args = QUICK_ARGS.get(name, ["--quick"])
    out = tmp_path / f"{name}.json"
    if name != "plot_curves":  # plot_curves writes beside the workdir it trains
        args = [*args, "--out", str(out)]
    else:
        args = [*args, "--out", str(tmp_path / "curves.png")]
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / f"{name}.py"), *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"},
        capture_output=True,
        text=True,
        timeout=QUICK_TIMEOUT,
    )
    assert result.returncode == 0, (
        f"experiments/{name}.py {' '.join(args)} failed:\n{result.stdout[-2000:]}\n"
        f"{result.stderr[-4000:]}"
    )
    return out


@pytest.mark.parametrize(
    "name", [n for n in _scripts() if n not in COVERED_ELSEWHERE and n != "memory_vs_depth"]
)
def test_quick_mode_runs(name, tmp_path):
    """The script's quick mode exits 0 and writes its result file."""
    out = _run_quick(name, tmp_path)
    if name == "plot_curves":
        assert (tmp_path / "curves.png").stat().st_size > 0
    else:
        written = list(tmp_path.glob(f"{name}*"))
        assert written, f"{name} wrote nothing under {tmp_path}"
    if name == "reconstruction_drift":
        _check_drift_rows(json.loads(out.read_text())["rows"])


def _check_drift_rows(rows):
    """Every family and regime at the quick depth; the h of each row is the registry's default
    (the step size the models use); exact arithmetic reconstructs bit-exactly; float32 drift
    at depth 8 is small in the stable regime."""
    from revjax.models.chang import default_step_size

    assert {(r["family"], r["regime"]) for r in rows} == {
        (f, g)
        for f in ("revnet", "hamiltonian", "midpoint", "leapfrog")
        for g in ("default init, i.i.d.", "stable")
    }
    for r in rows:
        h = None if r["family"] == "revnet" else default_step_size(r["family"], "bias")
        assert r["h"] == h
        assert r["exact_input_error"] == 0.0
        if r["regime"] == "stable":
            assert r["input_error"] is not None and r["input_error"] < 1e-5


def test_memory_vs_depth_quick(tmp_path):
    """--quick writes one record per (depth, mode); reversible temp bytes grow with depth only by
    the gradient buffer (one parameter-sized array: half the growth of the arguments, which are
    params + SGD momentum + the fixed input) and are far below store at the deepest depth."""
    out = _run_quick("memory_vs_depth", tmp_path)
    records = json.loads(out.read_text())
    assert {"depth", "backprop", "temp_bytes", "step_seconds"} <= set(records[0])
    rev = {r["depth"]: r for r in records if r["backprop"] == "reversible"}
    store = {r["depth"]: r["temp_bytes"] for r in records if r["backprop"] == "store"}
    assert len(rev) >= 2
    shallow, deepest = min(rev), max(rev)
    param_growth = (rev[deepest]["argument_bytes"] - rev[shallow]["argument_bytes"]) / 2
    assert rev[deepest]["temp_bytes"] - rev[shallow]["temp_bytes"] <= param_growth
    assert store[deepest] > 5 * rev[deepest]["temp_bytes"]
    assert rev[deepest]["time_ratio_this_over_store"] > 0


def _load_script(name: str, monkeypatch: pytest.MonkeyPatch):
    """An experiments/ script as a module (its main() is not run), with experiments/ on
    sys.path as when the script runs (its sibling imports, e.g. `result_files`, resolve)."""
    import importlib.util

    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lean_parameter_table_formats_one_line_per_row(monkeypatch):
    """The Table-2 report: a header, a rule, then name, classes, counts with thousands
    separators, paper figure, yes/no and the note, one row per line."""
    script = _load_script("lean_parameter_table", monkeypatch)
    rows = [
        dict(
            name="lean_a_mobilenet",
            num_classes=10,
            params=102_538,
            weights=101_066,
            paper=101_000,
            matches=True,
            note="",
        ),
        dict(
            name="lean_b_resnet",
            num_classes=100,
            params=3_531_000,
            weights=3_528_772,
            paper=3_400_000,
            matches=False,
            note="differs",
        ),
    ]
    lines = script.format_parameter_table(rows).split("\n")
    assert len(lines) == 4 and set(lines[1]) == {"-"}
    assert lines[0].split() == ["model", "classes", "params", "weights", "paper", "match", "note"]
    assert lines[2].split() == ["lean_a_mobilenet", "10", "102,538", "101,066", "101,000", "yes"]
    assert lines[3].split() == [
        "lean_b_resnet",
        "100",
        "3,531,000",
        "3,528,772",
        "3,400,000",
        "no",
        "differs",
    ]


def test_hyperbolic_variants_are_valid_model_overrides(monkeypatch):
    """Each comparison variant builds hyperbolic3d with exactly its overrides."""
    from revjax import models

    variants = _load_script("hyperbolic_variants", monkeypatch)
    assert set(variants.COMPARISON_VARIANTS) == {"reversible", "store", "block"}
    for overrides in variants.COMPARISON_VARIANTS.values():
        model = models.create("hyperbolic3d", **overrides)
        assert all(getattr(model, k) == v for k, v in overrides.items())


def test_torch_parity_runs_without_torch_and_every_variant_does_the_same_step(
    tmp_path, monkeypatch, capsys
):
    """experiments/torch_parity.py: with torch unavailable it says so in one line; --jax-only
    still times store / reversible / an unrolled reversible variant round-robin, and all of them
    start from the same loss (same parameters, same block), with ratios from the same rounds."""
    script = _load_script("torch_parity", monkeypatch)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    small = ["--depth", "2", "--batch", "1", "--size", "8", "--channels", "2"]
    with pytest.raises(SystemExit) as exit_info:
        script.main(small)
    assert exit_info.value.code == 1
    assert "PyTorch is not installed" in capsys.readouterr().err
    out = tmp_path / "parity.json"
    args = [*small, "--rounds", "2", "--warmup", "1", "--jax-only", "--out", str(out)]
    script.main([*args, "--extra", "reversible_unroll2:reversible:2"])
    result = json.loads(out.read_text())
    variants = result["variants"]
    assert list(variants) == ["store", "reversible", "reversible_unroll2"]
    assert result["baseline"] == "store" and variants["store"]["ratio_to_baseline"] == 1.0
    losses = [v["first_loss"] for v in variants.values()]
    assert max(losses) - min(losses) <= 1e-5 * abs(losses[0]) and losses[0] > 0
    assert all(len(v["round_ms"]) == 2 and v["ratio_to_baseline"] > 0 for v in variants.values())
    assert variants["reversible_unroll2"]["unroll"] == 2


def test_torch_parity_extra_variant_spec(monkeypatch):
    """name:backprop:unroll[:flag=value,...] -> compiler options with booleans parsed."""
    script = _load_script("torch_parity", monkeypatch)
    name, (backprop, unroll, options) = script.parse_extra(
        "x:store:4:xla_cpu_use_onednn=true,xla_cpu_enable_fast_math=False"
    )
    assert (name, backprop, unroll) == ("x", "store", 4)
    assert options == {"xla_cpu_use_onednn": True, "xla_cpu_enable_fast_math": False}
    with pytest.raises(ValueError, match="unknown backprop mode"):
        script.parse_extra("x:stored:1")
    with pytest.raises(ValueError, match="expected name:backprop:unroll"):
        script.parse_extra("x:store")


def test_every_experiment_writes_under_experiments_results_by_default(monkeypatch, tmp_path):
    """The command printed beside a README figure writes the file committed beside it: every
    script's default `--out` is under experiments/results/, whatever the working directory."""
    import argparse

    monkeypatch.chdir(tmp_path)
    for var in ("XLA_FLAGS", "JAX_DISABLE_MOST_OPTIMIZATIONS"):  # some scripts set these on import
        monkeypatch.setenv(var, os.environ.get(var, ""))  # restored after the test
    results = (ROOT / "experiments" / "results").resolve()
    seen = {}
    original = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        parsed = original(self, args, namespace)
        raise _Parsed(parsed)

    class _Parsed(Exception):
        def __init__(self, parsed):
            self.parsed = parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    for path in sorted((ROOT / "experiments").glob("*.py")):
        module = _load_script(path.stem, monkeypatch)
        if not hasattr(module, "main") or path.stem == "plot_curves":
            continue  # helpers; plot_curves writes into the workdir it plots
        monkeypatch.setattr(sys, "argv", [str(path)])
        try:
            module.main([]) if "argv" in module.main.__code__.co_varnames else module.main()
        except _Parsed as parsed:
            seen[path.stem] = parsed.parsed.out
    assert len(seen) >= 12, sorted(seen)
    for name, out in seen.items():
        assert Path(out).resolve().parent == results, (name, out)


def test_zoo_revup_config_trains_with_fixup_parameter_groups():
    """The zoo's revup20 recipe (``--config=zoo:revup20``): Adam on kernels, a tenth of it on
    every scalar bias and multiplier (Fixup's parameter groups); other recipes keep one rate
    for all parameters."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from revjax import configs
    from revjax.train import optim

    params = {
        "stem_w": jnp.ones(3),
        "stem_b": jnp.ones(()),
        "stage0": {"w1": jnp.ones(2), "b1b": jnp.ones(()), "scale_raw": jnp.ones(())},
        "head": {"kernel": jnp.ones(2), "bias": jnp.ones(2)},
    }
    grads = jax.tree.map(jnp.ones_like, params)
    for name, scalar_factor in (("revup20", 0.1), ("revnet38", 1.0)):
        tx, _ = optim.make_optimizer(configs.load_config("zoo", name), 10, 10)
        updates, _ = tx.update(grads, tx.init(params), params)
        kernel = float(updates["stem_w"][0])
        assert kernel < 0
        for leaf in (updates["stem_w"], updates["stage0"]["w1"], updates["head"]["kernel"]):
            np.testing.assert_allclose(leaf, kernel, rtol=1e-6)
        scalars = (
            updates["stem_b"],
            updates["stage0"]["b1b"],
            updates["stage0"]["scale_raw"],
            updates["head"]["bias"],
        )
        for leaf in scalars:
            np.testing.assert_allclose(leaf, scalar_factor * kernel, rtol=1e-6)

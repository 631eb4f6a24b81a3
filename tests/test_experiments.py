"""The engine benchmark runs in --quick mode and its JSON shows the memory property it reports."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_memory_vs_depth_quick(tmp_path):
    """--quick writes one record per (depth, mode); reversible temp bytes grow with depth only by
    the gradient buffer (one parameter-sized array: half the growth of the arguments, which are
    params + SGD momentum + the fixed input) and are far below store at the deepest depth."""
    out = tmp_path / "mvd.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "experiments" / "memory_vs_depth.py"),
            "--quick",
            "--json",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
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

"""The engine benchmark runs in --quick mode and its JSON shows the memory property it reports."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_memory_vs_depth_quick(tmp_path):
    """--quick writes one record per (depth, mode); reversible temp bytes are equal across depths
    and below store at the deepest depth."""
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
    rev = {r["depth"]: r["temp_bytes"] for r in records if r["backprop"] == "reversible"}
    store = {r["depth"]: r["temp_bytes"] for r in records if r["backprop"] == "store"}
    assert len(rev) >= 2 and len(set(rev.values())) == 1
    deepest = max(rev)
    assert store[deepest] > 5 * rev[deepest]

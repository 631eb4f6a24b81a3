"""Where the experiments write their results: `experiments/results/`, from any directory.

Every script takes `--out` (a path; default `experiments/results/<script>.json`, resolved from
this file, not from the working directory), so the command printed beside a README figure
writes the file committed beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def default_out(filename: str) -> str:
    """`experiments/results/<filename>` as an absolute path string (an argparse default)."""
    return str(RESULTS_DIR / filename)


def write_json(path: str | Path, data, *, quiet: bool = False) -> Path:
    """Write `data` as indented JSON to `path` (parent folders created) and, unless `quiet`,
    say so."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    if not quiet:
        print(f"wrote {path}")
    return path

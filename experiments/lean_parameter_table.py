"""Table 2 parameter counts of LeanResNet (Ephrath, Eliasof, Ruthotto, Haber, Treister 2019,
"LeanResNet: Low-cost parameterizations of deep convolutional neural networks",
arXiv:1805.07821, Table 2), as a fixed-width text table (and JSON to `--out`).

The counts come from `revjax.models.lean.parameter_table()` (parameter shapes by
`jax.eval_shape`, nothing is computed); the module docstring of `revjax.models.lean` explains
the documented differences from the paper.

Run:  python experiments/lean_parameter_table.py [--out PATH]
"""

from __future__ import annotations

import argparse

from result_files import default_out, write_json

from revjax.models.lean import parameter_table


def format_parameter_table(rows: list[dict] | None = None) -> str:
    """The rows of `revjax.models.lean.parameter_table` as a fixed-width text table."""
    rows = parameter_table() if rows is None else rows
    header = f"{'model':<24}{'classes':>8}{'params':>12}{'weights':>12}{'paper':>12}  match  note"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['name']:<24}{r['num_classes']:>8}{r['params']:>12,}{r['weights']:>12,}"
            f"{r['paper']:>12,}  {'yes' if r['matches'] else 'no':<5}  {r['note']}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=default_out("lean_parameter_table.json"))
    args = parser.parse_args()
    rows = parameter_table()
    print(format_parameter_table(rows))
    write_json(args.out, rows)


if __name__ == "__main__":
    main()

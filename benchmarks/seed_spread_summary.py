"""Mean and spread over seeds of the seed_spread grid's rows (rows "X", "X seed 1", ... are one group).

Run after `python -m attnhash experiment benchmarks/grids/seed_spread.yaml`; writes
benchmarks/results/seed_spread/summary.md and prints it.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "seed_spread"


def main() -> None:
    records = json.loads((RESULTS / "results.json").read_text())
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["row"].split(" seed ")[0], []).append(r)
    lines = [
        "# Run-to-run spread over training seeds (fmnist protocol, 32 bits, the grids' setting)",
        "",
        "Command: `python -m attnhash experiment benchmarks/grids/seed_spread.yaml && "
        "python benchmarks/seed_spread_summary.py`",
        "",
        "| method | seeds | mAP@ALL mean | sd | min | max | each seed (0, 1, ...) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, rs in groups.items():
        maps = [r["mAP"] for r in sorted(rs, key=lambda r: r["config"]["train"]["seed"])]
        sd = statistics.stdev(maps) if len(maps) > 1 else float("nan")
        lines.append(f"| {name} | {len(maps)} | {statistics.mean(maps):.4f} | {sd:.4f} | {min(maps):.4f} | "
                     f"{max(maps):.4f} | {', '.join(f'{m:.4f}' for m in maps)} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

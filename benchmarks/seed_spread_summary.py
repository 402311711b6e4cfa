"""Mean and spread over seeds of a seed grid's rows (rows "X", "X seed 1", ... are one group), per code length.

Run after `python -m attnhash experiment benchmarks/grids/<grid>.yaml` for seed_spread.yaml (32 bits) or
uhga_seeds.yaml (16 and 48 bits); writes benchmarks/results/<grid>/summary.md and prints it:

    python benchmarks/seed_spread_summary.py [seed_spread|uhga_seeds]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def summary(grid: str) -> str:
    records = json.loads((RESULTS / grid / "results.json").read_text())
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in records:
        groups.setdefault((r["row"].split(" seed ")[0], r["bits"]), []).append(r)
    lines = [
        "# Run-to-run spread over training seeds (fmnist protocol, the grids' setting)",
        "",
        f"Command: `python -m attnhash experiment benchmarks/grids/{grid}.yaml && "
        f"python benchmarks/seed_spread_summary.py {grid}`",
        "",
        "| method | bits | seeds | mAP@ALL mean | sd | min | max | each seed (0, 1, ...) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (name, bits), rs in sorted(groups.items(), key=lambda kv: kv[0][1]):
        maps = [r["mAP"] for r in sorted(rs, key=lambda r: r["config"]["train"]["seed"])]
        sd = statistics.stdev(maps) if len(maps) > 1 else float("nan")
        lines.append(f"| {name} | {bits} | {len(maps)} | {statistics.mean(maps):.4f} | {sd:.4f} | "
                     f"{min(maps):.4f} | {max(maps):.4f} | {', '.join(f'{m:.4f}' for m in maps)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", nargs="?", default="seed_spread", help="the grid's results folder name")
    grid = parser.parse_args().grid
    if not (RESULTS / grid / "results.json").exists():
        raise SystemExit(f"{RESULTS / grid / 'results.json'}: not found; run the grid first")
    text = summary(grid)
    (RESULTS / grid / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

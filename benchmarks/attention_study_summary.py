"""The verdict of the attention study: each method against its ablation per input size and code length, mean
+- sd over seeds and a two-sided paired t-test over the seeds (scipy.stats.ttest_rel), with what it says.

Run after `python -m attnhash experiment benchmarks/grids/attention_study.yaml` (or any part of it); prints and
writes <the grid's out>/summary.md; `attnhash report benchmarks/grids/attention_study.yaml --out
docs/results/attention_study.html` draws the same table with every figure:

    python benchmarks/attention_study_summary.py [GRID] [--out FOLDER] [--set KEY=VALUE ...]

--out and --set must be those the grid was run with (e.g. a slice run with --out /tmp/slice --set
train.epochs=1).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from attnhash.atomic import atomic_write_text
from attnhash.evaluation.records import group
from attnhash.evaluation.tables import comparisons_markdown, paired_tests
from attnhash.experiment import finished_results, load_grid

GRID = Path(__file__).parent / "grids" / "attention_study.yaml"


def summary(grid_path: Path, out: str | None = None, overrides: list[str] | None = None) -> tuple[str, Path]:
    grid = load_grid(grid_path, out)
    results = group(finished_results(grid, overrides))
    comparisons = paired_tests(results, grid.compare or [])
    # the grid as typed from the repository (not this machine's absolute path), with the options it was run with
    args = os.path.relpath(grid_path) + (f" --out {out}" if out else "") + "".join(f" --set {o}" for o in overrides or [])
    lines = [f"# {grid.name}", "", f"Commands: `python -m attnhash experiment {args}`, then "
             f"`python benchmarks/attention_study_summary.py {args}`", "",
             f"{len(results.records())} of the grid's {len(grid.runs)} runs are finished.", ""]
    if not comparisons:
        lines.append("No pair of compared rows has a finished cell yet.")
    else:
        lines += [comparisons_markdown(comparisons), "", "**Verdicts** (p < 0.05 of the paired t-test; with 3 seeds "
                  "the test has 2 degrees of freedom, so only large and consistent differences show):", ""]
        for c in comparisons:
            lines.append(f"- {c.row} against {c.against}, {c.bits} bits: **{c.verdict}** "
                         f"({c.diff:+.4f} mAP over {len(c.seeds)} seeds"
                         + ("" if c.p is None else f", p = {c.p:.3f}") + ")")
    text = "\n".join(lines) + "\n"
    path = grid.out / "summary.md"
    atomic_write_text(path, text)
    return text, path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", nargs="?", default=str(GRID))
    parser.add_argument("--out", help="the grid's output folder, if it was run with --out")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    text, path = summary(Path(args.grid), args.out, args.overrides)
    print(text)
    print(f"written: {path}")


if __name__ == "__main__":
    main()

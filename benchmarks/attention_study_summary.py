"""The verdict of the attention study: each method against its ablation per input size and code length, mean
+- sd over seeds and a two-sided paired t-test over the seeds (scipy.stats.ttest_rel), with what it says;
then the papers' sweeps (rows that change one method parameter), each beside the default row's value.

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
import statistics
from pathlib import Path

from attnhash.atomic import atomic_write_text
from attnhash.evaluation.records import Results, group, seed_of, setting_key
from attnhash.evaluation.tables import comparisons_markdown, paired_tests
from attnhash.experiment import Grid, finished_results, load_grid

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
                         f"({c.diff:+.4f} mAP over {len(c.seeds)} seed{'' if len(c.seeds) == 1 else 's'}"
                         + ("" if c.p is None else f", p = {c.p:.3f}") + ")")
    lines += sweep_sections(grid, results)
    text = "\n".join(lines) + "\n"
    path = grid.out / "summary.md"
    atomic_write_text(path, text)
    return text, path


def _bold_if_best(value: float | None, column: list[float]) -> str:
    if value is None:
        return "-"
    return f"**{value:.4f}**" if value == max(column) else f"{value:.4f}"


def sweep_sections(grid: Grid, results: Results) -> list[str]:
    """A table per swept parameter: rows whose only change is one `method.params.P=V`, with the default row
    (same method, no change, the same setting otherwise) at seed 0 beside them, mAP per code length, the best
    in bold, and the sweep's range against the default row's sd over its seeds."""
    families: dict[tuple[str, str], set[str]] = {}  # (method, parameter) -> its sweep rows
    plain: dict[str, str] = {}  # method -> its default row (no override, no ablation)
    for run in grid.runs:
        changes = [o for o in run.overrides if not o.startswith("train.seed=")]
        if not changes and not run.ablate:
            plain.setdefault(run.method, run.row)
        elif len(changes) == 1 and changes[0].startswith("method.params.") and not run.ablate:
            param = changes[0].split("=", 1)[0].removeprefix("method.params.")
            families.setdefault((run.method, param), set()).add(run.row)

    def records_of(row: str) -> list[dict]:
        return [r for d in results.datasets for b in results.bits if (c := results.get(row, d, b))
                for r in c.records.values()]

    lines: list[str] = []
    for (method, param), rows in families.items():
        if len(rows) < 2:  # one changed value is a variant (uhga per-item), not a sweep
            continue
        drop = (f"method.params.{param}", "train.seed", "model.bits")
        swept = [r for row in sorted(rows) for r in records_of(row)]
        setting = {setting_key(r, drop) for r in swept}
        default = [r for r in records_of(plain.get(method, "")) if setting_key(r, drop) in setting]
        points: dict[float, dict[int, float]] = {}  # parameter value -> mAP by bits
        for r in swept + [r for r in default if seed_of(r) == 0]:
            points.setdefault(r["config"]["method"]["params"][param], {})[int(r["bits"])] = float(r["mAP"])
        if len(points) < 2:
            continue
        default_value = default[0]["config"]["method"]["params"][param] if default else None
        bits = sorted({b for v in points.values() for b in v})
        column = {b: [v[b] for v in points.values() if b in v] for b in bits}
        lines += ["", f"## {method}: the sweep of `{param}` (seed 0)", "",
                  f"| {param} | " + " | ".join(f"mAP {b} bits" for b in bits) + " |", "|---:|" + "---:|" * len(bits)]
        for value in sorted(points):
            cells = [_bold_if_best(points[value].get(b), column[b]) for b in bits]
            lines.append(f"| {value}{' (default)' if value == default_value else ''} | " + " | ".join(cells) + " |")
        spread = []
        for b in (b for b in bits if len(column[b]) > 1):
            seeds = [float(r["mAP"]) for r in default if int(r["bits"]) == b]
            sd = f", the default's sd over {len(seeds)} seeds {statistics.stdev(seeds):.4f}" if len(seeds) > 1 else ""
            spread.append(f"{b} bits {max(column[b]) - min(column[b]):.4f}{sd}")
        if spread:
            lines += ["", f"Range of mAP over the sweep: {'; '.join(spread)} (the default is seed 0 of "
                      f"`{plain.get(method)}`)."]
    return lines


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

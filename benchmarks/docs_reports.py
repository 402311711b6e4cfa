"""The HTML reports of the committed benchmark results, for docs/results/ (linked from the README).

For each grid under benchmarks/grids/ whose results.json is committed under benchmarks/results/<grid>/, write
docs/results/<grid>.html (+ .csv and .tex) from the records alone (as they were measured, whatever the code
now), titled with the grid's name, with its compare pairs, and an index docs/results/README.md of every page there
(the named grids are made again, the others kept); a grid's verdict summary.md (attention_study_summary.py) is
copied beside its page:

    python benchmarks/docs_reports.py [GRID ...]
"""

from __future__ import annotations

import argparse
from functools import cache
from pathlib import Path

from attnhash.atomic import atomic_write_text
from attnhash.evaluation.html_report import write_html_report
from attnhash.evaluation.records import records_from_path
from attnhash.experiment import load_grid

ROOT = Path(__file__).resolve().parents[1]
GRIDS, RESULTS, DOCS = ROOT / "benchmarks" / "grids", ROOT / "benchmarks" / "results", ROOT / "docs" / "results"


@cache
def grid_of(name: str):
    return load_grid(GRIDS / f"{name}.yaml")  # read once for its page and its line in the index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grids", nargs="*", help="grid names (default: every grid with committed results)")
    names = parser.parse_args().grids or sorted(p.stem for p in GRIDS.glob("*.yaml")
                                                  if (RESULTS / p.stem / "results.json").exists())
    index = ["# Benchmark reports", "",
             "Made by `python benchmarks/docs_reports.py` from the committed records in `benchmarks/results/` "
             "(each record names the code that measured it). Each page is one self-contained HTML file; the "
             "tables are also given as CSV and LaTeX.", "",
             "| grid | report | tables |", "|---|---|---|"]
    for name in names:
        grid = grid_of(name)
        records = records_from_path(RESULTS / name)
        out = DOCS / f"{name}.html"
        write_html_report(records, out, grid.name, pairs=grid.compare or None, run_figures=False,
                          notes=grid.description)
        summary = RESULTS / name / "summary.md"
        if summary.exists():
            atomic_write_text(DOCS / f"{name}-verdict.md", summary.read_text())
        print(out)
    for name in sorted(p.stem for p in DOCS.glob("*.html") if (GRIDS / f"{p.stem}.yaml").exists()):
        verdict = f", [verdict]({name}-verdict.md)" if (DOCS / f"{name}-verdict.md").exists() else ""
        index.append(f"| {grid_of(name).name} | [{name}.html]({name}.html) | "
                     f"[CSV]({name}.csv), [LaTeX]({name}.tex){verdict} |")
    atomic_write_text(DOCS / "README.md", "\n".join(index) + "\n")


if __name__ == "__main__":
    main()

"""attnhash report: one self-contained HTML page (plus CSV and LaTeX tables) of grids, results and runs."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "report", help="an HTML report like the papers' (tables, PR/P@N/P@H<=2/mAP figures, t-SNE, top-10 grids)",
        description="Write one self-contained HTML page of evaluated runs, and its tables as CSV and LaTeX beside "
                    "it (OUT.csv, OUT.tex). Each input is a grid (.yaml: its finished runs), a results folder or "
                    "results.json (the records alone suffice for the tables and the retrieval figures), an "
                    "evaluated run folder, or a folder of run folders. Figures that need run folders (training "
                    "curves, t-SNE of codes, top-10 grids, attention maps) are drawn when they are on disk.")
    p.add_argument("inputs", nargs="+", metavar="GRID_OR_RUNS")
    p.add_argument("--out", default="report.html", help="the HTML file to write (default: report.html)")
    p.add_argument("--title", help="page title (default: the first grid's name or input's name)")
    p.add_argument("--records-only", action="store_true",
                   help="draw only what the records carry, even when run folders exist (fast)")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=run)


def gather(inputs: list[str]) -> tuple[list[dict], list[tuple[str, str]] | None, str]:
    """Records of every input, the grids' compare pairs (None when no grid names any), and a default title."""
    from attnhash.evaluation.records import records_from_path
    from attnhash.experiment import finished_results, load_grid

    records, pairs, titles = [], None, []
    for item in inputs:
        path = Path(item)
        if path.suffix in (".yaml", ".yml"):
            grid = load_grid(path)
            found = finished_results(grid)
            if not found:
                from attnhash.errors import ConfigError

                raise ConfigError(f"{path}: no finished run of this grid (under {grid.runs_dir} or in "
                                  f"{grid.out / 'results.json'})")
            records += found
            if grid.compare:
                pairs = (pairs or []) + grid.compare
            titles.append(grid.name)
        else:
            records += records_from_path(path)
            titles.append(path.name or str(path))
    return records, pairs, titles[0] if len(titles) == 1 else " + ".join(titles)


def run(args) -> int:
    from attnhash.evaluation.html_report import write_html_report

    records, pairs, title = gather(args.inputs)
    log = (lambda m: None) if args.quiet else print
    written = write_html_report(records, args.out, args.title or title, pairs=pairs, log=log,
                                run_figures=not args.records_only)
    for path in written:
        print(path)
    return 0

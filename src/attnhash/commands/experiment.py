"""attnhash experiment: run a grid of methods x code lengths and write the papers' tables."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("experiment", help="train + evaluate a grid (YAML) and write a report like the papers' tables")
    p.add_argument("grid", help="grid YAML (the grids behind the benchmarks are in benchmarks/grids/)")
    p.add_argument("--out", help="output folder (default: the grid's `out`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value in every run, e.g. --set train.epochs=2")
    p.add_argument("--only", action="append", metavar="TEXT",
                   help="run only the runs whose name contains this text (repeat: any of them)")
    p.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                   help="run only the runs of these training seeds (of those the grid lists)")
    p.add_argument("--retrain", action="store_true",
                   help="train the selected runs again even if finished (with --only: just those)")
    p.add_argument("--keep-going", "-k", action="store_true",
                   help="a run that fails does not stop the grid: the others run, the report covers the "
                        "finished ones, and the failed runs are named at the end (exit status 1)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rebuild the report from the runs already finished")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from attnhash.errors import ConfigError
    from attnhash.evaluation.report import markdown_report, write_report
    from attnhash.experiment import GridRunsFailed, finished_results, load_grid, run_grid

    grid = load_grid(args.grid, args.out)
    if args.report_only and args.retrain:
        raise ConfigError("--report-only trains nothing, so it cannot be combined with --retrain")
    failed = None
    if args.report_only:
        results = finished_results(grid, args.overrides)
        if not results:
            raise ConfigError(f"{args.grid}: no finished run of this grid under {grid.runs_dir}")
    else:
        try:
            results = run_grid(grid, args.overrides, progress=not args.quiet, only=args.only,
                               retrain=args.retrain, seeds=args.seeds, keep_going=args.keep_going)
        except GridRunsFailed as err:
            failed, results = err, err.results
    if results or failed is None:  # a grid whose every run failed has nothing to report
        path = write_report(results, grid.out, title=grid.name, pairs=grid.compare or None)
        print(markdown_report(results, grid.name, pairs=grid.compare or None))
        print(f"report: {path}")
    if failed is not None:  # 1, not the 2 of bad input: the grid ran, some of its runs did not finish
        print(f"attnhash experiment: error: {failed}", file=sys.stderr)
        return 1
    return 0

"""attnhash experiment: run a grid of methods x code lengths and write the papers' tables."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


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
    p.add_argument("--jobs", "-j", type=int, default=1, metavar="N",
                   help="train N runs at once, each in a process of its own with 1/N of the CPU cores as threads "
                        "(its output goes to experiment.log in its run folder)")
    p.add_argument("--run", action="append", dest="names", metavar="NAME", help=argparse.SUPPRESS)  # --jobs' children
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rebuild the report from the runs already finished")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from attnhash.errors import ConfigError
    from attnhash.evaluation.report import markdown_report, write_report
    from attnhash.experiment import GridRunsFailed, finished_results, load_grid, pending_runs, run_grid, write_results

    grid = load_grid(args.grid, args.out)
    if args.report_only and args.retrain:
        raise ConfigError("--report-only trains nothing, so it cannot be combined with --retrain")
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    if args.names:  # one process of --jobs: train its run, leave the report to the parent
        run_grid(grid, args.overrides, progress=not args.quiet, retrain=args.retrain, names=args.names)
        return 0
    failed = None
    if args.report_only:
        results = finished_results(grid, args.overrides)
        if not results:
            raise ConfigError(f"{args.grid}: no finished run of this grid under {grid.runs_dir}")
        write_results(grid, results)
    elif args.jobs > 1:
        todo = pending_runs(grid, args.overrides, args.only, args.seeds, args.retrain)
        failures = _train_in_processes(args, grid, [r.name for r in todo])
        results = finished_results(grid, args.overrides)
        write_results(grid, results)
        if failures:
            failed = GridRunsFailed(failures, results)
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


def _train_in_processes(args, grid, names: list[str]) -> list[tuple[str, str]]:
    """Train the runs `names`, args.jobs at a time, each by a child `attnhash experiment --run NAME` with its
    share of the cores as threads (on 2 cores two one-thread runs at a time beat one two-thread run after another
    by 1.05-1.07x at 32 px: benchmarks/bench_grid_jobs.py). Without --keep-going a failure stops the launching of
    further runs; those running finish. Returns the failed runs with the last line each wrote."""
    from attnhash.runs import RunFolder

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = str(max(1, cores // args.jobs))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    common = [sys.executable, "-m", "attnhash", "experiment", args.grid, "-q",
              *(["--out", args.out] if args.out else []), *(["--retrain"] if args.retrain else []),
              *[item for o in args.overrides for item in ("--set", o)]]
    waiting, running, failures = list(enumerate(names, 1)), {}, []
    try:
        while running or (waiting and (args.keep_going or not failures)):
            while waiting and len(running) < args.jobs and (args.keep_going or not failures):
                k, name = waiting.pop(0)
                log_path = RunFolder(grid.runs_dir / name).create().file("experiment.log")
                with open(log_path, "a") as log:
                    proc = subprocess.Popen([*common, "--run", name], stdout=log, stderr=subprocess.STDOUT, env=env)
                running[proc] = (k, name, log_path, time.time())
                print(f"[{k}/{len(names)}] {name}: training ({threads} thread(s); output: {log_path})", flush=True)
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                k, name, log_path, t0 = running.pop(proc)
                seconds = time.time() - t0
                if proc.returncode == 0:
                    metrics = RunFolder(grid.runs_dir / name).load_metrics() or {}
                    print(f"[{k}/{len(names)}] {name}: mAP {metrics.get('mAP', float('nan')):.4f} in {seconds:.0f}s",
                          flush=True)
                    continue
                lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
                why = lines[-1].strip() if lines else f"exit status {proc.returncode}"
                failures.append((name, why))
                print(f"[{k}/{len(names)}] {name}: FAILED after {seconds:.0f}s: {why}", flush=True)
    finally:
        for proc in running:  # interrupted: the children stop too (a run resumes from its last epoch)
            proc.terminate()
        for proc in running:
            proc.wait()
    if waiting:
        print(f"not started after the failure: {', '.join(name for _, name in waiting)} (--keep-going runs them)",
              file=sys.stderr)
    return failures

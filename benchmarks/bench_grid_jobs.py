"""`attnhash experiment --jobs 2` (two runs at once, each a process with half the cores as threads) against
`--jobs 1` (one run after another with every core), side by side in one invocation.

The grid: four rows of the supervised grid's base (fmnist, 32 px, EfficientNet-Lite0 frozen through block5 with
the disk stage cache, batch 64), DPSH, DSH, HashNet and DPFAH at 32 bits, with fewer epochs, training images,
queries (500) and database items (10,000), so the whole comparison takes minutes. Each mode trains the grid into folders of its own with a stage cache of
its own, so both pay the cache's fill (under --jobs 2 the first two runs fill it together, one waiting on the
other's lock), as a new grid does. Wall time of the whole command; mAP of each run both ways (thread counts change
float order, and training carries the difference on: mAP differs by up to ~0.015 at 2 epochs).

    python benchmarks/bench_grid_jobs.py [--epochs 2] [--train-limit 1000]   -> benchmarks/results/grid_jobs.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = ["dpsh", "dsh", "hashnet", "dpfah"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-limit", type=int, default=1000)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    base = {"data": {"dataset": "fmnist", "protocol": "fmnist", "image_size": 32, "train_limit": args.train_limit,
                     "query_limit": 500, "database_limit": 10000},
            "model": {"backbone": "efficientnet_lite0", "weights": "auto", "freeze": "block5", "output_stride": 16},
            "optim": {"name": "adam", "lr": 0.001, "backbone_lr_scale": 1.0, "weight_decay": 0.00001},
            "train": {"epochs": args.epochs, "batch_size": 64, "frozen_cache": "disk", "seed": 0}}
    seconds, maps = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for jobs in (1, 2):
            grid = Path(tmp) / f"jobs{jobs}.yaml"
            grid.write_text(yaml.safe_dump({"name": f"jobs {jobs}", "out": f"{tmp}/out{jobs}", "runs": f"{tmp}/runs{jobs}",
                                            "base": base, "bits": [32], "rows": [{"method": m} for m in ROWS]}))
            env = {**os.environ, "ATTNHASH_CACHE_DIR": f"{tmp}/cache{jobs}"}
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "attnhash", "experiment", str(grid), "--jobs", str(jobs), "-q"],
                                  capture_output=True, text=True, env=env)
            seconds[jobs] = time.perf_counter() - t0
            if done.returncode != 0:
                raise SystemExit(f"--jobs {jobs} failed:\n{done.stderr[-2000:]}")
            maps[jobs] = {r["row"]: r["mAP"] for r in json.loads(Path(f"{tmp}/out{jobs}/results.json").read_text())}
            print(f"--jobs {jobs}: {seconds[jobs]:.1f} s, mAP {maps[jobs]}", flush=True)
    command = " ".join(["python benchmarks/bench_grid_jobs.py", *sys.argv[1:]])
    lines = ["# A grid's runs two at a time (`--jobs 2`) against one after another (`--jobs 1`)", "",
             f"`{command}` ({cores} cores; {len(ROWS)} runs: {', '.join(ROWS)} at 32 bits, fmnist 32 px, "
             f"{args.train_limit:,} training images, {args.epochs} epochs, 500 queries, 10,000 database items, EfficientNet-Lite0 frozen through block5, "
             "disk stage cache filled by each mode)", "",
             "| mode | threads per run | wall time (s) | speed-up |", "|---|---:|---:|---:|",
             f"| --jobs 1 | {cores} | {seconds[1]:.1f} | 1.00x |",
             f"| --jobs 2 | {max(1, cores // 2)} | {seconds[2]:.1f} | {seconds[1] / seconds[2]:.2f}x |", "",
             "| run | mAP --jobs 1 | mAP --jobs 2 |", "|---|---:|---:|",
             *[f"| {row}-32b | {maps[1][row]:.4f} | {maps[2][row]:.4f} |" for row in ROWS], ""]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "grid_jobs.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

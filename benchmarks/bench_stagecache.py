"""The frozen prefix on a CPU, as the stage caches fill it: batches of 256 run in chunks of about 256k pixels
(device.cpu_chunk, as the encoder's network: benchmarks/bench_encode.py) against whole.

A grid's first run at an image size fills the frozen-stage cache (attnhash.inference.stagecache.run_prefix; the
in-memory cache of the trainer runs the same function) with the frozen prefix's outputs: EfficientNet-Lite0
pretrained, output stride 16, frozen through block5, as the attention study. Each path runs in its own process
(its peak memory is its own) over the same fmnist training images, decoded before the clock starts: what is
timed is the network, which is what the chunks change (a whole fill, which also decodes the images and writes
the rows to disk, ran 54 and 320 images/s two fills in a row at 224 px on this shared machine: too noisy to
see a 10% change). Two processes per path, alternating (whole, chunked, whole, chunked); the faster is kept.
The outputs of the two paths are compared.

    python benchmarks/bench_stagecache.py [--images N] [--sizes 64 96 224]   -> benchmarks/results/stagecache.md
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def worker(path: str, size: int, images: int, out: str) -> dict:
    import numpy as np
    import torch

    from attnhash.config import build_config
    from attnhash.data import ImageDataset, prepare_data
    from attnhash.inference import device
    from attnhash.inference.stagecache import run_prefix
    from attnhash.models.network import build_network

    cfg = build_config("dpsh", overrides=["data.dataset=fmnist", f"data.image_size={size}",
                                          "model.output_stride=16", "model.freeze=block5", "model.bits=64"])
    data = prepare_data(cfg.data)
    network = build_network(cfg.model).eval().to(memory_format=torch.channels_last)
    dataset = ImageDataset(data.source, data.train[:images], size)
    batch = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    if path == "whole":
        device.CPU_CHUNK_PIXELS = 1 << 40
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    outs = [run_prefix(network, part, network.backbone.frozen_stages, torch.device("cpu")) for part in batch.split(256)]
    seconds = time.perf_counter() - t0
    np.save(out, torch.cat(outs).numpy())
    return {"images_per_s": images / seconds, "rss_before_mb": before,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024, help="training images per process")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 224])
    parser.add_argument("--worker", nargs=3, metavar=("PATH", "SIZE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.images, args.worker[2])))
        return

    import numpy as np
    import torch

    from attnhash.inference.device import cpu_chunk

    command = " ".join(["python benchmarks/bench_stagecache.py", *sys.argv[1:]])
    lines = ["# The frozen prefix on the CPU, as the stage caches fill it: batches of 256 in chunks against whole", "",
             f"`{command}` (threads: {torch.get_num_threads()}; {args.images:,} fmnist training images per "
             "process, EfficientNet-Lite0, output stride 16, frozen through block5; images/s: the faster of two "
             "processes; peak memory: the larger, and its growth over the process before the network ran)", "",
             "| size | chunk (images) | whole (images/s) | chunked (images/s) | chunked / whole | "
             "peak RSS whole (MB) | peak RSS chunked (MB) | max abs difference |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            runs: dict[str, list[dict]] = {"whole": [], "chunked": []}
            for _ in range(2):
                for path in runs:
                    done = subprocess.run([sys.executable, __file__, "--images", str(args.images), "--worker",
                                           path, str(size), f"{tmp}/{path}.npy"], capture_output=True, text=True)
                    if done.returncode != 0:
                        raise SystemExit(f"{path} at {size} px failed:\n{done.stderr[-2000:]}")
                    runs[path].append(json.loads(done.stdout.strip().splitlines()[-1]))
                    print(f"{size} px {path}: {runs[path][-1]}", flush=True)
            diff = float(np.abs(np.load(f"{tmp}/chunked.npy") - np.load(f"{tmp}/whole.npy")).max())
            speed = {p: max(r["images_per_s"] for r in rs) for p, rs in runs.items()}
            peak = {p: max(runs[p], key=lambda r: r["peak_rss_mb"]) for p in runs}
            mem = {p: f"{r['peak_rss_mb']:,.0f} (+{r['peak_rss_mb'] - r['rss_before_mb']:,.0f})" for p, r in peak.items()}
            lines.append(f"| {size} px | {cpu_chunk(size)} | {speed['whole']:,.0f} | {speed['chunked']:,.0f} | "
                         f"{speed['chunked'] / speed['whole']:.2f}x | {mem['whole']} | {mem['chunked']} | {diff:.1e} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stagecache.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

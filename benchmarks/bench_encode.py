"""Encoding the fmnist database (64,000 real Fashion-MNIST images) at 64 bits, side by side in one run:

- eager: plain eager PyTorch, the reference: the network in eval mode under torch.no_grad, contiguous NCHW
  batches of 256 from attnhash's ImageDataset through a DataLoader without workers, signs taken at the end;
- lean: attnhash's Encoder (BatchNorm folded into the convolutions, channels-last, inference mode, batches of
  256 run through the network in chunks of about 256k pixels (device.cpu_chunk: 256 images at 32 px, 28 at
  96 px), codes packed batch by batch, decoding workers for image files: none are needed for these in-memory
  images);
- lean-unchunked: the same with the whole batch of 256 through the network at once (what lean did before the
  chunking; the ratio lean / lean-unchunked is the chunking's own gain);
- onnx: the run exported with `attnhash export --onnx` and run by onnxruntime (OnnxEncoder), whole batches
  of 256 (in chunks as lean's it ran 0.73-0.75x as fast at 32-96 px: onnxruntime wants the big batch);

at 32, 64 and 96 px (EfficientNet-Lite0, output stride 16, as the demo), each in its own process so peak memory
(the process's maximum RSS) is its own. The codes of each path are compared with eager's bit by bit. Then the whole
database encoded by `attnhash encode` in 1 process against 2 torchrun processes (1 thread each), wall time
of the whole command.

    python benchmarks/bench_encode.py [--limit N]      -> benchmarks/results/encode.{md,json}
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def make_run(folder: Path, size: int) -> Path:
    """A 64-bit DPSH run on the pretrained EfficientNet-Lite0 (untrained hash layer: speed does not depend on
    the weights' values)."""
    from attnhash.config import build_config
    from attnhash.methods import create_method
    from attnhash.runs import RunFolder

    cfg = build_config("dpsh", overrides=["model.bits=64", f"data.image_size={size}", "model.output_stride=16",
                                          "data.dataset=fmnist"])
    method = create_method("dpsh", cfg.method.params, 64, num_classes=10, num_train=0)
    spec = method.network_spec(cfg.model)
    RunFolder(folder).save_model(spec.build().state_dict(), cfg, spec.to_dict(), {"num_classes": 10})
    return folder


def worker(path: str, run: str, limit: int | None) -> dict:
    """One encoder over the database; prints {"images_per_s", "peak_rss_mb", "codes_sha256", "n"}."""
    import torch

    from attnhash.data import prepare_data
    from attnhash.runs import RunFolder

    data = prepare_data(RunFolder(run).load_config().data)
    indices = data.database[:limit] if limit else data.database
    if path == "eager":
        from torch.utils.data import DataLoader

        from attnhash.data import ImageDataset
        from attnhash.inference import Encoder

        network = Encoder(run, device="cpu").model.to(memory_format=torch.contiguous_format).eval()
        loader = DataLoader(ImageDataset(data.source, indices, data_size(run)), batch_size=256, num_workers=0)
        t0 = time.perf_counter()
        with torch.no_grad():
            z = torch.cat([network(b["image"])["z"] for b in loader])
        codes = np.packbits((z >= 0).numpy(), axis=1)
    else:
        if path.startswith("lean"):
            from attnhash.inference import Encoder, device

            if path == "lean-unchunked":
                device.CPU_CHUNK_PIXELS = 1 << 40
            encoder = Encoder(run, device="cpu")
        else:
            from attnhash.inference.onnx_engine import OnnxEncoder

            encoder = OnnxEncoder(Path(run) / "model.onnx")
        t0 = time.perf_counter()
        codes = encoder.encode_source(data.source, indices, progress=False)
    seconds = time.perf_counter() - t0
    np.save(Path(run) / f"codes-{path}.npy", np.ascontiguousarray(codes))  # for the bit-by-bit comparison
    return {"images_per_s": round(len(indices) / seconds, 1), "seconds": round(seconds, 2), "n": int(len(indices)),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "codes_sha256": hashlib.sha256(np.ascontiguousarray(codes).tobytes()).hexdigest()}


def data_size(run: str) -> int:
    from attnhash.runs import RunFolder

    return RunFolder(run).load_config().data.image_size


def in_process(*args: str, env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    done = subprocess.run(list(args), capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:6])} ...: failed\n{done.stderr[-2000:]}")
    return time.perf_counter() - t0, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="encode only the first N database images (quick checks)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 96])
    parser.add_argument("--worker", nargs=2, metavar=("PATH", "RUN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.limit)))
        return
    from attnhash.inference.onnx_engine import export_onnx

    rows, scaling = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            run = make_run(Path(tmp) / f"run{size}", size)
            export_onnx(run, run / "model.onnx")
            results = {}
            for path in ("eager", "lean-unchunked", "lean", "onnx"):
                limit = ["--limit", str(args.limit)] if args.limit else []
                _, done = in_process(sys.executable, __file__, "--worker", path, str(run), *limit)
                results[path] = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"{size} px {path}: {results[path]}", flush=True)
            same = len({r["codes_sha256"] for r in results.values()}) == 1
            eager = np.unpackbits(np.load(run / "codes-eager.npy"), axis=1)
            for path, r in results.items():
                # float order differs between the paths (channels-last kernels, onnxruntime's fused ones): a
                # hash output within rounding of 0 can take the other sign; count how often that happens
                diff = np.unpackbits(np.load(run / f"codes-{path}.npy"), axis=1) != eager
                rows.append({"image_size": size, "path": path, **r,
                             "vs_eager": round(r["images_per_s"] / results["eager"]["images_per_s"], 2),
                             "codes_equal_to_eager": r["codes_sha256"] == results["eager"]["codes_sha256"],
                             "bits_differing_from_eager": int(diff.sum()),
                             "images_differing_from_eager": int(diff.any(axis=1).sum())})
            print(f"{size} px: codes identical across paths: {same}", flush=True)
        # the whole database by `attnhash encode`: 1 process vs 2 torchrun processes
        run = str(Path(tmp) / f"run{args.sizes[0]}")
        command = ["-m", "attnhash", "encode", run, "--images", "fmnist", "--subset", "database"]
        one, _ = in_process(sys.executable, *command, "--out", str(Path(tmp) / "one.npz"))
        two, _ = in_process(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            *command, "--out", str(Path(tmp) / "two.npz"), env={"OMP_NUM_THREADS": "1"})
        parts = [np.load(Path(tmp) / f"two.part{r}-of-2.npz")["codes"] for r in range(2)]
        equal = bool(np.array_equal(np.load(Path(tmp) / "one.npz")["codes"], np.concatenate(parts)))
        scaling = {"image_size": args.sizes[0], "images": 64000, "one_process_s": round(one, 1),
                   "two_processes_s": round(two, 1), "speedup": round(one / two, 2), "codes_equal": equal}
        print(f"database by attnhash encode: {scaling}", flush=True)
    write(rows, scaling, " ".join(["python benchmarks/bench_encode.py", *sys.argv[1:]]))


def write(rows: list[dict], scaling: dict, command: str) -> None:
    from attnhash.inference.device import cpu_chunk

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "encode.json").write_text(json.dumps({"paths": rows, "processes": scaling}, indent=1))
    lines = [
        "# Encoding the fmnist database, 64-bit codes (EfficientNet-Lite0, output stride 16)",
        "",
        f"`{command}` (each path in its own process; peak memory = its maximum RSS)",
        "",
        "| size | path | images | images/s | vs eager | peak RSS (MB) | codes = eager's | bits (images) differing |",
        "|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['image_size']} px | {r['path']} | {r['n']:,} | {r['images_per_s']:,.0f} | "
                     f"{r['vs_eager']:.2f}x | {r['peak_rss_mb']:,.0f} | {'yes' if r['codes_equal_to_eager'] else 'NO'} | "
                     f"{r['bits_differing_from_eager']:,} of {r['n'] * 64:,} ({r['images_differing_from_eager']:,}) |")
    by = {(r["image_size"], r["path"]): r for r in rows}
    for size in sorted({r["image_size"] for r in rows}):
        chunked, whole = by.get((size, "lean")), by.get((size, "lean-unchunked"))
        if chunked and whole:
            same = "identical" if chunked["codes_sha256"] == whole["codes_sha256"] else "NOT identical"
            lines.append(f"\nlean at {size} px, chunks of {cpu_chunk(size)} images against the whole batch of 256: "
                         f"{chunked['images_per_s'] / whole['images_per_s']:.2f}x; the codes are {same}.")
    s = scaling
    lines += ["", f"The whole database ({s['images']:,} images, {s['image_size']} px) by `attnhash encode`: one process "
              f"{s['one_process_s']} s, two torchrun processes (one thread each) {s['two_processes_s']} s: "
              f"{s['speedup']}x; the merged shares equal the single-process codes: {s['codes_equal']}.", ""]
    (RESULTS / "encode.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Load test of the search service on loopback: concurrent clients searching by uploaded image.

    python benchmarks/load_test.py                         # trains a quick run, indexes Fashion-MNIST, 16 x 2000
    python benchmarks/load_test.py --run runs/my-run --items 70000

Steps: (1) a run folder: --run, or a quick DPSH ResNet18 run trained here for one epoch on 1,000 real
Fashion-MNIST images at 32x32 pixels (about a minute); (2) `attnhash index build` on the first --items
Fashion-MNIST images; (3) `attnhash serve` in its own process on 127.0.0.1 and a free port; (4) --clients
threads, each with its own HTTP connection, send --requests searches in all (real Fashion-MNIST test images
as PNG uploads, top --k), each bounded by a timeout; (5) latency percentiles, throughput and errors (any
status other than 200 or a reply without k results) go to benchmarks/results/load_test.md and .json.
Only loopback is used; the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

RESULTS = Path(__file__).with_name("results")
FMNIST = os.environ.get("ATTNHASH_FMNIST_DIR", "/usr/share/datasets/fashion-mnist")


def sh(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run([sys.executable, "-m", "attnhash", *cmd], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query_pngs(n: int) -> list[bytes]:
    """The first n Fashion-MNIST *test* images as PNG bytes (the index holds the training images)."""
    with gzip.open(os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    out = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def run_load(url: str, pngs: list[bytes], clients: int, requests: int, k: int, timeout: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client(c: int) -> None:
        with httpx.Client(base_url=url, timeout=timeout) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t = time.perf_counter()
                try:
                    r = http.post("/api/search", files={"image": (f"q{i}.png", pngs[i % len(pngs)], "image/png")},
                                  data={"k": str(k)})
                    ok = r.status_code == 200 and len(r.json()["results"]) == k
                    why = None if ok else f"status {r.status_code}: {r.text[:120]}"
                except httpx.HTTPError as err:
                    why = f"{type(err).__name__}: {err}"
                dt = time.perf_counter() - t
                with lock:
                    latencies.append(dt)
                    if why:
                        errors.append(why)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {
        "clients": clients, "requests": len(latencies), "k": k, "errors": len(errors), "error_samples": errors[:5],
        "wall_s": wall, "throughput_rps": len(latencies) / wall,
        "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
        "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max()), "mean_ms": float(lat.mean()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="run folder to serve (default: train a quick one)")
    ap.add_argument("--items", type=int, default=10000, help="Fashion-MNIST images in the index")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    ap.add_argument("--workdir", help="where the run and the index go (default: a temporary folder)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="attnhash-load-"))
    work.mkdir(parents=True, exist_ok=True)
    run = args.run
    t_prep = time.perf_counter()
    if run is None:
        run = str(work / "runs" / "load-test")
        if not (Path(run) / "model.safetensors").exists():
            sh("train", "--method", "dpsh", "--dataset", "fmnist", "--bits", "64", "--epochs", "1",
               "--train-limit", "1000", "--image-size", "32", "--backbone", "resnet18", "--weights", "none",
               "--out", str(work / "runs"), "--name", "load-test", "--quiet")
    index = str(work / "fmnist.idx")
    sh("index", "build", run, "--images", "fmnist", "--limit", str(args.items), "--out", index, "--force")
    prep_s = time.perf_counter() - t_prep

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(work / "server.log", "w")  # a file, not a pipe: an undrained pipe would stall the server
    server = subprocess.Popen([sys.executable, "-m", "attnhash", "serve", index, "--host", "127.0.0.1",
                               "--port", str(port), "--no-persist", "--log-level", "warning"],
                              stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(url + "/api/health", timeout=2).json()["model_loaded"]:
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit(f"the server did not start:\n{(work / 'server.log').read_text()}")
            time.sleep(0.2)
        pngs = query_pngs(500)
        run_load(url, pngs, 4, 40, args.k, args.timeout)  # warm-up (first forward passes, page cache)
        res = run_load(url, pngs, args.clients, args.requests, args.k, args.timeout)
        stats = httpx.get(url + "/api/stats", timeout=10).json()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()

    res.update({
        "index_items": stats["count"], "bits": stats["bits"], "run": run,
        "forward_passes": stats["model"]["forward_passes"], "prep_s": prep_s,
        "when": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),
        "command": "python benchmarks/" + " ".join([os.path.basename(__file__)] + (argv if argv is not None else sys.argv[1:])),
    })
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "load_test.json").write_text(json.dumps(res, indent=2))
    md = "\n".join([
        "# Service load test",
        "",
        f"{res['when']}, {res['cpus']} CPU cores (load average {res['load_average']} at the end), loopback only. "
        f"Command: `{res['command']}`",
        "",
        f"Index: {res['index_items']} Fashion-MNIST images, {res['bits']}-bit codes, run `{run}`. Queries: real "
        f"Fashion-MNIST test images uploaded as PNG, top-{res['k']}; {res['forward_passes']} forward passes in all "
        "(concurrent uploads are encoded together).",
        "",
        "| clients | searches | errors | p50 | p90 | p99 | max | throughput |",
        "|---|---|---|---|---|---|---|---|",
        f"| {res['clients']} | {res['requests']} | {res['errors']} | {res['p50_ms']:.0f} ms | {res['p90_ms']:.0f} ms | "
        f"{res['p99_ms']:.0f} ms | {res['max_ms']:.0f} ms | {res['throughput_rps']:.1f} searches/s |",
        "",
    ])
    (out / "load_test.md").write_text(md)
    print(md)
    if res["errors"]:
        print("errors:", *res["error_samples"], sep="\n  ")
    return 0 if res["errors"] == 0 and res["requests"] == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())

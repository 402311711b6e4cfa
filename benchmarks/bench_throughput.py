"""Training and encoding throughput (images/s) of the hashing network on this machine.

Measures, for each backbone at the benchmark input size, side by side in one run:
- encode: uint8 images -> packed codes through the whole network (what `attnhash encode` / the index do);
- train step: forward + backward + Adam step on a batch of 64, with the benchmark's frozen prefix
  (the first stages frozen and cached, as `train.frozen_cache` does) and without freezing.
The reference it names is the backbone's bare forward pass (torch, channels_last, no hashing), so the
ratio says what the hashing network costs on top of the feature extractor.

    python benchmarks/bench_throughput.py [--image-size 32] [--out benchmarks/results/throughput.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from attnhash.config import ModelConfig
from attnhash.models.network import build_network


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN primitive creation)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench(backbone: str, image_size: int, freeze: str | None, output_stride: int, batch: int = 256,
          train_batch: int = 64, repeats: int = 3) -> dict:
    torch.manual_seed(0)
    weights = "auto" if backbone.startswith("efficientnet") else "none"
    net = build_network(ModelConfig(backbone=backbone, weights=weights, bits=64, output_stride=output_stride))
    net.to(memory_format=torch.channels_last).eval()
    images = torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8)
    images = images.contiguous(memory_format=torch.channels_last)

    with torch.no_grad():
        x = net.normalize(images).contiguous(memory_format=torch.channels_last)
        bare = timed(lambda: net.backbone.forward_features(x), repeats)
        encode = timed(lambda: torch.where(net(images)["z"] >= 0, 1, -1), repeats)

    def train_rate(freeze_stage):
        net.backbone.freeze(freeze_stage)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=1e-4)
        start = net.backbone.frozen_stages
        with torch.no_grad():
            inp = net.normalize(images[:train_batch]).contiguous(memory_format=torch.channels_last)
            for stage in net.backbone.stages()[:start]:
                inp = stage(inp)
        net.train()

        def step():
            out = net(inp if start else images[:train_batch], start_stage=start)
            loss = out["z"].pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        rate = train_batch / timed(step, repeats)
        net.backbone.freeze(None)
        net.eval()
        return rate

    return {
        "backbone": backbone,
        "image_size": image_size,
        "output_stride": output_stride,
        "bare_forward_images_per_s": batch / bare,
        "encode_images_per_s": batch / encode,
        "encode_vs_bare": bare / encode,
        "train_images_per_s_frozen": train_rate(freeze) if freeze else None,
        "frozen": freeze,
        "train_images_per_s_full": train_rate(None),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--out", default="benchmarks/results/throughput.md")
    args = ap.parse_args()
    cases = [("efficientnet_lite0", "block5", 16), ("efficientnet_lite0", "block3", 32), ("resnet18", None, 32)]
    rows = [bench(b, args.image_size, f, s) for b, f, s in cases]
    load = os.getloadavg()[0]
    lines = [
        "# Throughput of the hashing network (64 bits)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, fp32, channels_last, load average {load:.2f}. "
        f"Command: `python benchmarks/bench_throughput.py --image-size {args.image_size}`",
        "",
        "| backbone | input | output stride | bare backbone forward (img/s) | encode, whole network (img/s) | ratio | train, frozen prefix cached (img/s) | train, nothing frozen (img/s) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        frozen = f"{r['train_images_per_s_frozen']:.0f} (up to {r['frozen']})" if r["frozen"] else "-"
        lines.append(f"| {r['backbone']} | {r['image_size']} px | {r['output_stride']} | {r['bare_forward_images_per_s']:.0f} | "
                     f"{r['encode_images_per_s']:.0f} | {r['encode_vs_bare']:.2f} | {frozen} | {r['train_images_per_s_full']:.0f} |")
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(text)


if __name__ == "__main__":
    main()

"""DHIDA's channel attention when encoding: one image at a time (DualAttention.channel_output) against the batch.

At 96 px a DHIDA run encodes the 64,000-image database at ~97 images/s on one thread against ~700 for its
ablation: the IDA channel branch makes a C x C map per image (C = 1280 on EfficientNet-Lite0, 6.5 MB). In
training it runs one image at a time (checkpointed under autograd; measured 1.4x faster there). This times
the same choice without autograd, as `attnhash encode` runs it: the module's forward on (B, C, h, w) features
in eval mode, the per-image path against the batched map, one thread, nothing else running. Both paths' outputs
are compared. Each path repeats; the fastest repetition is kept.

    python benchmarks/bench_channel_attention.py [--batch 64] [--maps 4 6] [--repeats 5]
        -> benchmarks/results/channel_attention.md
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

import torch

from attnhash.atomic import atomic_write_text
from attnhash.models.attention.dual import DualAttention

RESULTS = Path(__file__).resolve().parent / "results"


def best_seconds(repeats: int, fn, *args) -> float:
    fn(*args)  # warm-up: allocator, MKL
    return min(timeit.repeat(lambda: fn(*args), number=1, repeat=repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--channels", type=int, default=1280)
    parser.add_argument("--maps", type=int, nargs="+", default=[4, 6], help="side of the last feature map")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    module = DualAttention(args.channels).eval()
    command = " ".join(["python benchmarks/bench_channel_attention.py", *sys.argv[1:]])
    lines = ["# DHIDA's channel attention without autograd: one image at a time against the whole batch", "",
             f"`{command}` (1 thread; IDA, C = {args.channels}, batch {args.batch}; the channel branch alone and "
             "the whole module's forward; seconds per batch, the fastest of "
             f"{args.repeats} after a warm-up)", "",
             "| map | input | branch per image (s) | branch batched (s) | speed-up of per image (batched s / per-image s) | "
             "module forward (s) | max abs difference |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    # the per-image step given the whole batch is the batched map (what channel_output did before)
    batched_channel_output = module._channel_output_one
    with torch.no_grad():
        for side in args.maps:
            # post-ReLU-like features: non-negative, as the backbone's head gives them
            a = torch.relu(torch.randn(args.batch, args.channels, side, side))
            flat = a.reshape(args.batch, args.channels, side * side)
            per_image = best_seconds(args.repeats, module.channel_output, flat)
            batched = best_seconds(args.repeats, batched_channel_output, flat)
            forward = best_seconds(args.repeats, module, a)
            diff = float((module.channel_output(flat) - batched_channel_output(flat)).abs().max())
            lines.append(f"| {side}x{side} | {side * 16} px | {per_image:.3f} | {batched:.3f} | "
                         f"{batched / per_image:.2f}x | {forward:.3f} | {diff:.1e} |")
            print(lines[-1], flush=True)
    atomic_write_text(RESULTS / "channel_attention.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

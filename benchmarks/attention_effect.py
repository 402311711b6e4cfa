"""How much room DPFAH's parameter-free attention has, by feature-map size (why it can be a no-op at 2x2).

SimAM's energy is E = d / (4 (v + lambda)) + 0.5 with d the squared deviation of a neuron from its
channel's spatial mean and v = sum(d) / (h*w - 1). Since no d exceeds sum(d), E lies in
[0.5, 0.5 + (h*w - 1)/4]: on a 2x2 map the weights sigmoid(E) can only span [0.62, 0.78], so DPFAH's
X + X * sigmoid(E) multiplies every position by 1.62..1.78, nearly a constant the hash layer absorbs.

This measures it on real data: the pretrained EfficientNet-Lite0 (output stride 16) on real Fashion-MNIST
training images at several input sizes, and for each feature-map size
- the spread of the SimAM weights within a channel (max - min over positions, mean over channels/images),
  against the bound above;
- the cosine between the globally pooled features with and without the attention (1.0 = the attention only
  rescales what the hash layer sees), reported as 1 - cosine.

    python benchmarks/attention_effect.py [--sizes 32 64 128 224] [--images 512]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from attnhash.data import ImageDataset, load_fashion_mnist
from attnhash.models.attention.simam import simam_weights
from attnhash.models.backbones import create_backbone


def measure(backbone, source, idx, size: int) -> dict:
    dataset = ImageDataset(source, idx, size)  # the training pipeline's own resizing
    x = torch.stack([dataset[i]["image"] for i in range(len(idx))]).float()
    mean = torch.tensor(backbone.mean).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(backbone.std).view(1, 3, 1, 1) * 255.0
    with torch.no_grad():
        fmap = backbone.forward_features((x - mean) / std)
        w = simam_weights(fmap)
        attended = fmap + fmap * w  # DPFAH's residual PFA
        pooled, pooled_att = fmap.mean(dim=(2, 3)), attended.mean(dim=(2, 3))
    h, wd = fmap.shape[-2:]
    spread = (w.amax(dim=(2, 3)) - w.amin(dim=(2, 3))).mean().item()
    bound = torch.sigmoid(torch.tensor(0.5 + (h * wd - 1) / 4)).item() - torch.sigmoid(torch.tensor(0.5)).item()
    cos = torch.nn.functional.cosine_similarity(pooled, pooled_att, dim=1)
    return {"input_px": size, "map": f"{h}x{wd}", "weight_spread": spread, "weight_spread_bound": bound,
            "one_minus_cosine": (1 - cos).mean().item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 224])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--out", default="benchmarks/results/attention_effect.md")
    args = ap.parse_args()
    torch.manual_seed(0)
    source = load_fashion_mnist(os.environ.get("ATTNHASH_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))
    idx = np.sort(np.random.default_rng(0).choice(60000, size=args.images, replace=False))
    backbone = create_backbone("efficientnet_lite0", weights="imagenet", output_stride=16).eval()
    rows = [measure(backbone, source, idx, s) for s in args.sizes]
    lines = [
        "# Room for DPFAH's parameter-free attention, by feature-map size",
        "",
        f"EfficientNet-Lite0 (ImageNet weights, output stride 16), {args.images} real Fashion-MNIST training "
        "images. Command: `python benchmarks/attention_effect.py`",
        "",
        "| input | map | SimAM weight spread (max-min per channel) | bound sigmoid(0.5+(hw-1)/4)-sigmoid(0.5) "
        "| 1 - cos(pooled, pooled with PFA) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['input_px']} px | {r['map']} | {r['weight_spread']:.4f} | {r['weight_spread_bound']:.4f} "
                     f"| {r['one_minus_cosine']:.2e} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

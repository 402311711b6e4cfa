"""What DHIDA's fresh input convolution does to the features the hash layer reads, per code length.

Reads the run folders of benchmarks/grids/dhida_input.yaml (train them first:
`python -m attnhash experiment benchmarks/grids/dhida_input.yaml`) and, for each run and for the untrained
networks, measures on the 5,000 training images:

- feature effective rank: exp of the entropy of the eigenvalue distribution of the covariance of the pooled
  features (the hash layer's input); 10 classes need about 9 directions to be told apart equally;
- feature mAP: retrieval by cosine of those real-valued features, the first 1,000 training images against
  the other 4,000 (how much class structure the features carry, before any binarisation);
- mean |z|: how far the hash layer's outputs are from 0, where sign() decides the bit (DHIDA's hard tanh
  clips at 1; an output near 0 is a bit that a small change flips);
- the code mAP@ALL of the run (its metrics.json, protocol queries against the database).

Writes benchmarks/results/dhida_input/probe.md and prints it:

    python benchmarks/dhida_conv_probe.py

Another grid's trained runs can be probed the same way, for example DHIDA's 96 px rows of the attention study
(written to that grid's results folder as probe-<name>.md):

    python benchmarks/dhida_conv_probe.py benchmarks/grids/attention_study.yaml \
        --only dhida_96px --only dhida-no-attention_96px --name dhida_96px
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from attnhash.atomic import atomic_write_text
from attnhash.data import prepare_data
from attnhash.errors import AttnHashError
from attnhash.experiment import load_grid, selected
from attnhash.inference import Encoder
from attnhash.inference.stagecache import stage_outputs
from attnhash.methods import create_method
from attnhash.runs import RunFolder
from attnhash.training import seed_everything

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / "benchmarks" / "grids" / "dhida_input.yaml"
QUERIES = 1000


def features(network, data, image_size: int, frozen: int) -> tuple[np.ndarray, np.ndarray]:
    """(pooled features, hash layer outputs) of the training images, through the shared stage cache."""
    x = stage_outputs(network, data.source, data.train, image_size, frozen, torch.device("cpu"))
    network.eval()
    feats, zs = [], []
    with torch.no_grad():
        for s in range(0, len(x), 500):
            out = network(x[s:s + 500].contiguous(memory_format=torch.channels_last), start_stage=frozen)
            feats.append(out["features"].float())
            zs.append(out["z"].float())
    return torch.cat(feats).numpy(), torch.cat(zs).numpy()


def effective_rank(f: np.ndarray) -> float:
    ev = np.clip(np.linalg.eigvalsh(np.cov(f.T.astype(np.float64))), 0, None)
    p = ev[ev > 0] / ev.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def cosine_map(f: np.ndarray, labels: np.ndarray) -> float:
    unit = f / np.linalg.norm(f, axis=1, keepdims=True).clip(1e-12)
    q, d = unit[:QUERIES], unit[QUERIES:]
    aps = []
    for i, sims in enumerate(q @ d.T):
        rel = (labels[QUERIES:][np.argsort(-sims, kind="stable")] @ labels[i]) > 0
        if rel.any():
            aps.append(float((np.cumsum(rel)[rel] / (np.flatnonzero(rel) + 1)).mean()))
        else:
            aps.append(0.0)
    return float(np.mean(aps))


def untrained(encoder: Encoder, data, frozen: int):
    """The run's network as its training started (same seed, same construction), with the BatchNorm of a fresh
    input convolution given the batch statistics of the training set (what it normalises with in training)."""
    cfg = encoder.config
    seed_everything(cfg.train.seed)
    method = create_method(cfg.method.name, cfg.method.params, cfg.model.bits, num_classes=data.num_classes,
                           num_train=len(data.train), ablate=cfg.method.ablate)
    network = method.network_spec(cfg.model).build()
    network.backbone.freeze(cfg.model.freeze)
    network.eval()
    block = getattr(network.attention, "input", None)
    if block is not None:
        bn = block[1]
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the pass
        bn.train()
        x = stage_outputs(network, data.source, data.train, cfg.data.image_size, frozen, torch.device("cpu"))
        with torch.no_grad():
            for s in range(0, len(x), 500):
                network(x[s:s + 500].contiguous(memory_format=torch.channels_last), start_stage=frozen)
        bn.eval()
    return network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", nargs="?", default=str(GRID), help="the grid whose trained runs are probed")
    parser.add_argument("--only", action="append", metavar="TEXT",
                        help="only the runs whose name contains this text (repeat: any of them), as in "
                             "`attnhash experiment --only`")
    parser.add_argument("--name", help="write probe-NAME.md instead of probe.md")
    args = parser.parse_args()
    try:
        grid = load_grid(Path(args.grid))
    except AttnHashError as err:
        raise SystemExit(str(err)) from None
    runs = selected(grid, args.only)
    if not runs:
        raise SystemExit(f"{args.grid}: no run's name contains any of {args.only}")
    grid_path = Path(args.grid).resolve()
    grid_path = grid_path.relative_to(ROOT) if grid_path.is_relative_to(ROOT) else grid_path
    command = shlex.join(["python", "benchmarks/dhida_conv_probe.py", *sys.argv[1:]])
    lines = ["# What DHIDA's input convolution and attention do to the features, per code length", "",
             f"Command: `python -m attnhash experiment {grid_path} && {command}` "
             "(5,000 fmnist training images; see the script's docstring)", "",
             "| run | bits | code mAP@ALL | feature eff. rank | feature mAP (cosine) | mean abs z |",
             "|---|---:|---:|---:|---:|---:|"]
    seen_init = set()
    data = None
    for run in runs:
        folder = RunFolder(grid.runs_dir / run.name)
        metrics = folder.load_metrics()
        if metrics is None or not folder.has_model():
            print(f"{folder.path}: not trained yet, skipped")
            continue
        encoder = Encoder(folder, device="cpu")
        data = data or prepare_data(encoder.config.data)
        labels = data.labels[data.train]
        frozen = int(encoder.meta.get("frozen_stages", 0))
        if run.row not in seen_init:  # the untrained network of this row (the same at every code length)
            seen_init.add(run.row)
            f0, _ = features(untrained(encoder, data, frozen), data, encoder.image_size, frozen)
            lines.append(f"| {run.row}, untrained | | | {effective_rank(f0):.1f} | {cosine_map(f0, labels):.4f} | |")
        f, z = features(encoder.model, data, encoder.image_size, frozen)
        seed = f", seed {run.seed}" if run.seed is not None else ""
        lines.append(f"| {run.row}{seed} | {run.bits} | {metrics['mAP']:.4f} | {effective_rank(f):.1f} | "
                     f"{cosine_map(f, labels):.4f} | {np.abs(z).mean():.3f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    out = grid.out / (f"probe-{args.name}.md" if args.name else "probe.md")
    atomic_write_text(out, text)
    print(text)
    print(json.dumps({"written": str(out)}))


if __name__ == "__main__":
    main()

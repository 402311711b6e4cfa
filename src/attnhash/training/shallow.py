"""Fitting a shallow method (LSH, SH, ITQ, SpH, ...): pretrained backbone features -> hasher.fit -> a run folder
saved like a deep one (see attnhash.models.shallow_model)."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from attnhash.config import RunConfig
from attnhash.data import ImageDataset, RunData
from attnhash.inference.stagecache import stage_outputs
from attnhash.models import ShallowCodeModel
from attnhash.models.backbones import create_backbone
from attnhash.runs import RunFolder
from attnhash.shallow import create_shallow
from attnhash.training.common import TrainResult, run_meta


@torch.no_grad()
def extract_features(model: ShallowCodeModel, source, indices, image_size: int, device, batch_size: int = 256,
                     progress: bool = False, disk_cache: bool = False) -> np.ndarray:
    """Pooled backbone features (n, D) of source items, in order. With disk_cache, the backbone's output maps
    come from (and go to) the shared stage cache, so every shallow method on this backbone reuses them."""
    model = model.to(device).eval()
    n_stages = len(model.backbone.stages())
    if disk_cache:
        maps = stage_outputs(model, source, indices, image_size, n_stages, device, batch_size, progress)
        batches = (maps[s : s + batch_size] for s in range(0, len(maps), batch_size))
        start = n_stages
    else:
        loader = DataLoader(ImageDataset(source, indices, image_size), batch_size=batch_size, shuffle=False)
        batches = (b["image"] for b in tqdm(loader, disable=None if progress else True, desc="features", leave=False))
        start = 0
    out = []
    for x in batches:
        x = x.to(device)
        if device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(model.features(x, start).float().cpu())
    return torch.cat(out).numpy()


def fit_shallow(cfg: RunConfig, run: RunFolder, data: RunData, device: torch.device, progress: bool = True,
                log: Callable[[str], None] = print) -> TrainResult:
    """Fit the shallow method of `cfg` on the training images' pooled features and save its run folder."""
    t0 = time.time()
    backbone = create_backbone(cfg.model.backbone, weights=cfg.model.weights).eval()
    backbone.freeze("all")  # the features are fixed: shallow methods learn only on top of them
    if device.type == "cpu":
        backbone.to(memory_format=torch.channels_last)
    disk = cfg.train.frozen_cache == "disk"
    feats = extract_features(ShallowCodeModel(backbone, cfg.method.name, {}), data.source, data.train,
                             cfg.data.image_size, device, cfg.eval.batch_size, progress, disk_cache=disk)
    t1 = time.time()
    hasher = create_shallow(cfg.method.name, cfg.model.bits, seed=cfg.train.seed, **cfg.method.params)
    hasher.fit(feats)
    fit_seconds = time.time() - t1
    state = {k: np.asarray(v) for k, v in hasher.state_dict().items()}
    model = ShallowCodeModel(backbone.cpu(), cfg.method.name, state)
    meta = run_meta(
        cfg, data, len(data.train), device,
        frozen_stages=len(backbone.stages()),
        feature_seconds=round(t1 - t0, 2),
        train_seconds=round(fit_seconds, 2),
        total_seconds=round(time.time() - t0, 2),
        images_per_second=round(len(data.train) / max(t1 - t0, 1e-9), 1),
    )
    log(f"{cfg.method.name}: features of {len(data.train)} images in {t1 - t0:.1f}s, fit in {fit_seconds:.2f}s")
    ckpt = run.save_model(model.state_dict(), cfg, model.spec(cfg.model.backbone).to_dict(), meta)
    return TrainResult(run.path, ckpt, time.time() - t0, meta["images_per_second"], [])

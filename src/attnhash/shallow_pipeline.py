"""Shallow hashing methods (LSH, SH, ITQ, SpH, ...) as runs: pretrained backbone features -> fit -> codes.

A shallow run is saved like a deep one (one safetensors checkpoint): the backbone weights plus the
hasher's arrays under `hasher.*`, so `encode`, `evaluate`, the index and the service treat it the same way.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from attnhash.atomic import atomic_write_text
from attnhash.checkpoint import save_checkpoint
from attnhash.config import RunConfig
from attnhash.models.backbones import create_backbone
from attnhash.provenance import code_version


def is_shallow(name: str) -> bool:
    from attnhash.shallow import SHALLOW_METHODS

    return name in SHALLOW_METHODS


class ShallowCodeModel(nn.Module):
    """Backbone pooled features -> a fitted shallow hasher. forward() returns {"z": codes as float +-1}."""

    def __init__(self, backbone: nn.Module, method: str, hasher_state: dict[str, np.ndarray]):
        super().__init__()
        self.backbone = backbone
        self.method = method
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1) * 255.0, persistent=False)
        self._keys = sorted(hasher_state)
        for k in self._keys:
            self.register_buffer(f"hasher_{k}", torch.from_numpy(np.ascontiguousarray(hasher_state[k])))
        self._hasher = None

    @classmethod
    def from_config(cls, cfg: RunConfig, meta: dict) -> "ShallowCodeModel":
        backbone = create_backbone(cfg.model.backbone, weights="none")
        shapes = meta["hasher_arrays"]
        state = {k: np.zeros(v["shape"], dtype=np.dtype(v["dtype"])) for k, v in shapes.items()}
        return cls(backbone, cfg.method.name, state)

    def hasher(self):
        if self._hasher is None:  # rebuilt from the buffers after a checkpoint was loaded into them
            from attnhash.shallow import SHALLOW_METHODS

            state = {k: getattr(self, f"hasher_{k}").cpu().numpy() for k in self._keys}
            self._hasher = SHALLOW_METHODS[self.method].from_state_dict(state)
        return self._hasher

    def _load_from_state_dict(self, *args, **kwargs):
        self._hasher = None
        super()._load_from_state_dict(*args, **kwargs)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std

    def features(self, x: torch.Tensor, start_stage: int = 0) -> torch.Tensor:
        """Pooled backbone features of uint8 images, or of stage outputs when start_stage > 0."""
        if start_stage == 0:
            x = self.normalize(x)
        return self.backbone.pool(self.backbone.forward_features(x, start=start_stage))

    def forward(self, x: torch.Tensor, start_stage: int = 0) -> dict[str, torch.Tensor]:
        feats = self.features(x, start_stage).float().cpu().numpy()
        codes = self.hasher().encode(feats)
        return {"z": torch.from_numpy(codes.astype(np.float32))}


@torch.no_grad()
def extract_features(model: ShallowCodeModel, source, indices, image_size: int, device, batch_size: int = 256,
                     progress: bool = False, disk_cache: bool = False) -> np.ndarray:
    """Pooled backbone features (n, D) of source items, in order. With disk_cache, the backbone's output maps
    come from (and go to) the shared stage cache, so every shallow method on this backbone reuses them."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from attnhash.data import ImageDataset
    from attnhash.stagecache import stage_outputs

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


def fit_shallow(cfg: RunConfig, data, run_dir: Path, device, log=print, progress: bool = True):
    from attnhash.shallow import create_shallow
    from attnhash.train import TrainResult

    t0 = time.time()
    backbone = create_backbone(cfg.model.backbone, weights=cfg.model.weights).eval()
    backbone.freeze("all")  # the features are fixed: shallow methods learn only on top of them
    if device.type == "cpu":
        backbone.to(memory_format=torch.channels_last)
    disk = cfg.train.frozen_cache == "disk"
    feats = extract_features(ShallowCodeModel(backbone, "", {}), data.source, data.train, cfg.data.image_size,
                             device, cfg.eval.batch_size, progress, disk_cache=disk)
    t1 = time.time()
    hasher = create_shallow(cfg.method.name, cfg.model.bits, seed=cfg.train.seed, **cfg.method.params)
    hasher.fit(feats)
    fit_seconds = time.time() - t1
    state = {k: np.asarray(v) for k, v in hasher.state_dict().items()}
    model = ShallowCodeModel(backbone.cpu(), cfg.method.name, state)
    meta = {
        "kind": "shallow",
        "num_classes": data.num_classes,
        "class_names": data.class_names,
        "num_train": len(data.train),
        "protocol": cfg.data.protocol,
        "split_file": data.split_path,
        "hasher_arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in state.items()},
        "frozen_stages": len(backbone.stages()),
        "feature_seconds": round(t1 - t0, 2),
        "train_seconds": round(fit_seconds, 2),
        "total_seconds": round(time.time() - t0, 2),
        "images_per_second": round(len(data.train) / max(t1 - t0, 1e-9), 1),
        "device": str(device),
        "code": code_version(),
    }
    log(f"{cfg.method.name}: features of {len(data.train)} images in {t1 - t0:.1f}s, fit in {fit_seconds:.2f}s")
    ckpt = save_checkpoint(run_dir, model.state_dict(), cfg, meta)
    atomic_write_text(run_dir / "meta.json", json.dumps(meta, indent=2))
    return TrainResult(run_dir, ckpt, time.time() - t0, meta["images_per_second"], [])

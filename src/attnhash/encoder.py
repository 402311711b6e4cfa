"""Encoder: a trained run folder -> packed binary codes for images.

Everything downstream (evaluation, the index, the search service) gets codes from here, so the
preprocessing of a query image is exactly the preprocessing of the database images.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from attnhash.checkpoint import check_bits, checkpoint_path, load_state_into, read_checkpoint
from attnhash.codes import pack_codes
from attnhash.config import RunConfig
from attnhash.data import ImageDataset, resize_image
from attnhash.errors import DataError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_code_model(cfg: RunConfig, meta: dict) -> torch.nn.Module:
    """The network (or shallow pipeline) of a saved run, with random weights, ready for its state dict."""
    from attnhash.methods.base import method_class
    from attnhash.shallow_pipeline import ShallowCodeModel, is_shallow

    if is_shallow(cfg.method.name):
        return ShallowCodeModel.from_config(cfg, meta)
    cls = method_class(cfg.method.name)
    model_cfg = dataclasses.replace(cfg.model, weights="none")  # the weights come from the checkpoint
    method = cls(None, bits=cfg.model.bits, num_classes=meta.get("num_classes", 0), num_train=0,
                 ablate=tuple(cfg.method.ablate))
    return method.build_network(model_cfg)


@torch.no_grad()
def codes_from_batches(model: torch.nn.Module, batches, device: torch.device, amp: bool = False, total=None,
                       progress: bool = False, desc: str = "encode", start_stage: int = 0) -> np.ndarray:
    """Run the model over batches (uint8 images, or stage outputs when start_stage > 0) and return
    {-1,+1} int8 codes, sign(0) = +1."""
    model.eval()
    out = []
    for x in tqdm(batches, total=total, disable=None if progress else True, desc=desc, unit="batch", leave=False):
        x = x.to(device, non_blocking=True)
        if device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            z = model(x, start_stage=start_stage)["z"].float()
        out.append(torch.where(z >= 0, 1, -1).to(torch.int8).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.int8)


class Encoder:
    """Loads a run once; encodes images, sources or lists of image files to packed codes."""

    def __init__(self, run_dir: str | Path, device: str = "auto", bits: int | None = None):
        path = checkpoint_path(run_dir)
        state, cfg, meta, fingerprint = read_checkpoint(run_dir)
        if bits is not None:
            check_bits(path, state, bits)
        self.run_dir = str(run_dir)
        self.config = cfg
        self.meta = meta
        self.fingerprint = fingerprint
        self.bits = cfg.model.bits
        self.image_size = cfg.data.image_size
        self.class_names = meta.get("class_names")
        self.device = pick_device(device)
        self.model = build_code_model(cfg, meta)
        load_state_into(self.model, state, path)
        self.model.to(self.device).eval()
        if self.device.type == "cpu":
            self.model.to(memory_format=torch.channels_last)

    @classmethod
    def from_run(cls, run_dir: str | Path, **kwargs) -> "Encoder":
        return cls(run_dir, **kwargs)

    def _batch(self, images: Sequence) -> torch.Tensor:
        arrays = []
        for i, img in enumerate(images):
            if isinstance(img, Image.Image):
                img = np.asarray(img.convert("RGB"))
            img = np.asarray(img)
            if img.ndim == 2:
                img = np.repeat(img[..., None], 3, axis=2)
            if img.ndim != 3 or img.shape[2] not in (1, 3, 4) or img.dtype != np.uint8:
                raise DataError(f"image {i}: expected an RGB/grey uint8 image, got shape {img.shape} {img.dtype}")
            if img.shape[2] == 1:
                img = np.repeat(img, 3, axis=2)
            arrays.append(resize_image(img[..., :3], self.image_size))
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)

    def encode_images(self, images: Sequence, batch_size: int = 128) -> np.ndarray:
        """PIL images or HxWx3 uint8 arrays -> packed uint8 codes (n, bits/8)."""
        batches = (self._batch(images[s : s + batch_size]) for s in range(0, len(images), batch_size))
        return pack_codes(codes_from_batches(self.model, batches, self.device))

    def encode_paths(self, paths: Sequence[str | Path], batch_size: int = 128) -> np.ndarray:
        def load(p):
            try:
                with Image.open(p) as im:
                    return np.asarray(im.convert("RGB"))
            except FileNotFoundError:
                raise DataError(f"{p}: no such image file") from None
            except OSError as err:
                raise DataError(f"{p}: cannot read image ({err})") from None

        batches = (
            self._batch([load(p) for p in paths[s : s + batch_size]]) for s in range(0, len(paths), batch_size)
        )
        return pack_codes(codes_from_batches(self.model, batches, self.device))

    def encode_source(self, source, indices=None, batch_size: int = 256, progress: bool = True,
                      use_stage_cache: bool = False) -> np.ndarray:
        """Items of an ImageSource (all, or the given indices) -> packed codes, in that order.

        use_stage_cache: when the run was trained with train.frozen_cache=disk, read its frozen stages'
        output from the shared disk cache (computing what is missing) instead of running them again.
        """
        indices = np.arange(len(source)) if indices is None else np.asarray(indices)
        cached = 0
        if use_stage_cache and self.config.train.frozen_cache == "disk":
            cached = int(self.meta.get("frozen_stages", 0))
        return pack_codes(encode_indices(self.model, source, indices, self.image_size, self.device, batch_size,
                                         progress, cached_stages=cached))


def encode_indices(model, source, indices, image_size: int, device: torch.device, batch_size: int = 256,
                   progress: bool = False, amp: bool = False, desc: str = "encode",
                   cached_stages: int = 0) -> np.ndarray:
    """{-1,+1} codes of source items `indices` through `model` (used by the trainer and the encoder).

    cached_stages > 0: take the output of the model's first frozen stages from the disk stage cache
    (attnhash.stagecache) and run only the rest of the network.
    """
    if cached_stages > 0:
        from attnhash.stagecache import stage_outputs

        feats = stage_outputs(model, source, indices, image_size, cached_stages, device, progress=progress)
        batches = (feats[s : s + batch_size] for s in range(0, len(feats), batch_size))
        total = -(-len(feats) // batch_size)
        return codes_from_batches(model, batches, device, amp=amp, total=total, progress=progress, desc=desc,
                                  start_stage=cached_stages)
    dataset = ImageDataset(source, indices, image_size)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    batches = (b["image"] for b in loader)
    return codes_from_batches(model, batches, device, amp=amp, total=len(loader), progress=progress, desc=desc)

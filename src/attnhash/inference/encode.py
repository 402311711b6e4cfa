"""Batched encoding: a network and images (or cached stage outputs) -> {-1,+1} codes.

Used by the trainer (validation, selection) and by the Encoder, so a run is scored with exactly the codes
it will later store.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from attnhash.codes import sign
from attnhash.data import ImageDataset
from attnhash.inference.stagecache import stage_outputs


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
        out.append(sign(z).to(torch.int8).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.int8)


@torch.no_grad()
def outputs_from_batches(model: torch.nn.Module, batches, device: torch.device, amp: bool = False, total=None,
                         progress: bool = False, desc: str = "encode", start_stage: int = 0) -> np.ndarray:
    """As codes_from_batches, but the real-valued hash-layer outputs z (float32); the codes are sign(z)."""
    model.eval()
    out = []
    for x in tqdm(batches, total=total, disable=None if progress else True, desc=desc, unit="batch", leave=False):
        x = x.to(device, non_blocking=True)
        if device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            z = model(x, start_stage=start_stage)["z"].float()
        out.append(z.cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def encode_indices(model, source, indices, image_size: int, device: torch.device, batch_size: int = 256,
                   progress: bool = False, amp: bool = False, desc: str = "encode",
                   cached_stages: int = 0, outputs: bool = False) -> np.ndarray:
    """{-1,+1} codes of source items `indices` through `model` (outputs=True: the real-valued z instead).

    cached_stages > 0: take the output of the model's first frozen stages from the disk stage cache
    (attnhash.inference.stagecache) and run only the rest of the network.
    """
    run = outputs_from_batches if outputs else codes_from_batches
    if cached_stages > 0:
        feats = stage_outputs(model, source, indices, image_size, cached_stages, device, progress=progress)
        batches = (feats[s : s + batch_size] for s in range(0, len(feats), batch_size))
        total = -(-len(feats) // batch_size)
        return run(model, batches, device, amp=amp, total=total, progress=progress, desc=desc,
                   start_stage=cached_stages)
    dataset = ImageDataset(source, indices, image_size)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    batches = (b["image"] for b in loader)
    return run(model, batches, device, amp=amp, total=len(loader), progress=progress, desc=desc)

"""Batched encoding: a network and images (or cached stage outputs) -> codes.

Used by the trainer (validation, selection) and by the Encoder, so a run is scored with exactly the codes
it will later store. Lean by default: torch.inference_mode, channels-last inputs on the CPU, image files
decoded and resized in worker processes while the network runs, codes packed to bits batch by batch (K/8
bytes per image held, not K), and a progress line with images/s (attnhash.inference.progress).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader

from attnhash.codefile import CodeSet
from attnhash.codes import sign
from attnhash.data import FileSource, ImageDataset, Skipped
from attnhash.errors import DataError
from attnhash.inference.device import device_chunks
from attnhash.inference.progress import Progress
from attnhash.inference.stagecache import stage_outputs


def default_workers(source) -> int:
    """Worker processes that decode a source's images: image files need them (decoding a photo costs more than
    the network on a small input); in-memory arrays do not (their batched resize is one call)."""
    if not isinstance(source, FileSource):
        return 0
    return min(4, max(1, (os.cpu_count() or 2) - 1))


def _run_batches(model: torch.nn.Module, batches, device: torch.device, amp: bool, progress: Progress | None,
                 start_stage: int, convert, image_size: int | None) -> list[np.ndarray]:
    """The network over batches, each batch's z (float32, on the device) turned into an array by `convert`."""
    model.eval()
    out = []
    for x in batches:
        x = x.to(device, non_blocking=True)
        zs = []
        for part in device_chunks(x, image_size):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                zs.append(model(part, start_stage=start_stage)["z"].float())
        z = zs[0] if len(zs) == 1 else torch.cat(zs)
        out.append(convert(z))
        if progress is not None:
            progress.update(len(x))
    if progress is not None:
        progress.close()
    return out


@torch.inference_mode()
def codes_from_batches(model: torch.nn.Module, batches, device: torch.device, amp: bool = False,
                       progress: Progress | None = None, start_stage: int = 0, packed: bool = False,
                       image_size: int | None = None) -> np.ndarray:
    """Run the model over batches (uint8 images, or stage outputs when start_stage > 0) and return the codes:
    {-1,+1} int8 (n, K), sign(0) = +1, or with `packed` the packed bits (n, ceil(K/8)), packed as they come.
    image_size: the input images' size, which sets the CPU's chunks (cpu_chunk); None: the batches' own
    width, right for images (stage outputs should pass it)."""
    if packed:
        out = _run_batches(model, batches, device, amp, progress, start_stage,
                           lambda z: np.packbits((z >= 0).cpu().numpy(), axis=1), image_size)
    else:
        out = _run_batches(model, batches, device, amp, progress, start_stage,
                           lambda z: sign(z).to(torch.int8).cpu().numpy(), image_size)
    return np.concatenate(out) if out else np.zeros((0, 0), np.uint8 if packed else np.int8)


@torch.inference_mode()
def outputs_from_batches(model: torch.nn.Module, batches, device: torch.device, amp: bool = False,
                         progress: Progress | None = None, start_stage: int = 0,
                         image_size: int | None = None) -> np.ndarray:
    """As codes_from_batches, but the real-valued hash-layer outputs z (n, K) float32; the codes are sign(z)."""
    out = _run_batches(model, batches, device, amp, progress, start_stage, lambda z: z.cpu().numpy(), image_size)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def image_batches(source, indices: np.ndarray, image_size: int, batch_size: int,
                  workers: int | None = None) -> DataLoader:
    """Batches of resized images with an "error" per item ("" when readable), decoded in `workers` processes
    (None: default_workers). Errors come back as values, so the caller decides to skip or stop, in its own
    process."""
    dataset = ImageDataset(source, indices, image_size, skip_unreadable=True)
    workers = default_workers(source) if workers is None else workers
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      prefetch_factor=4 if workers else None)


def encode_indices(model, source, indices, image_size: int, device: torch.device, batch_size: int = 256,
                   progress: bool = False, amp: bool = False, desc: str = "encode",
                   cached_stages: int = 0, skipped: Skipped | None = None, packed: bool = False,
                   workers: int | None = None, outputs: bool = False,
                   stage_model: torch.nn.Module | None = None) -> np.ndarray:
    """Codes of source items `indices` through `model` ({-1,+1} int8, or packed bits with `packed`; with
    `outputs` the real-valued z (n, K) float32 instead, whose signs are the codes).

    cached_stages > 0: take the output of the model's first frozen stages from the disk stage cache
    (attnhash.inference.stagecache) and run only the rest of the network.
    skipped: None = the first unreadable image raises its one-line DataError; a Skipped = unreadable images
    are left out of the codes (which then follow the readable items in order) and listed in it.
    workers: decoding processes (None: default_workers).
    stage_model: the network whose first stages fill the stage cache when `model` is a folded copy of it (the
    cache must hold the numbers training computes and reads; its key is the unfolded prefix's weights).
    """
    indices = np.asarray(indices)
    report = Progress(len(indices), desc, enabled=progress)

    def run(batches, start_stage: int = 0) -> np.ndarray:
        if outputs:
            return outputs_from_batches(model, batches, device, amp=amp, progress=report, start_stage=start_stage,
                                        image_size=image_size)
        return codes_from_batches(model, batches, device, amp=amp, progress=report, start_stage=start_stage,
                                  packed=packed, image_size=image_size)

    if cached_stages > 0:
        feats = stage_outputs(stage_model or model, source, indices, image_size, cached_stages, device,
                              progress=progress, skipped=skipped)
        batches = (feats[s : s + batch_size] for s in range(0, len(feats), batch_size))
        return run(batches, cached_stages)
    loader = image_batches(source, indices, image_size, batch_size, workers)

    def readable(batch: dict) -> torch.Tensor:
        ok = torch.tensor([not e for e in batch["error"]], dtype=torch.bool)
        for pos, error in zip(batch["index"].tolist(), batch["error"]):
            if error:
                if skipped is None:
                    raise DataError(error)  # raised here, not in a worker: one line, no worker traceback
                item = int(indices[pos])
                skipped.add(item, source.describe(item), error)
                report.update(1)
        return batch["image"][ok]

    batches = (x for x in map(readable, loader) if len(x))
    codes = run(batches)
    return codes if len(codes) else np.zeros((0, getattr(model, "bits", 0)), np.float32 if outputs else np.int8)


def encode_code_set(encoder, source, indices=None, skipped: Skipped | None = None, progress: bool = True,
                    batch_size: int = 256) -> CodeSet:
    """The codes of source items (all, or `indices`) with their references, labels, positions and class names:
    what `attnhash encode` writes and `index build --codes` reads. `encoder`: an Encoder or OnnxEncoder.
    Unreadable images are left out (listed in `skipped`) unless `skipped` is None (then the first one raises)."""
    indices = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
    before = set() if skipped is None else skipped.indices()
    packed = encoder.encode_source(source, indices, batch_size=batch_size, progress=progress, skipped=skipped)
    if skipped is not None:
        bad = np.fromiter(skipped.indices() - before, dtype=np.int64)
        indices = indices[~np.isin(indices, bad)]
    labels = np.asarray(source.labels)[indices] if source.labelled else None
    return CodeSet(packed, encoder.bits, encoder.fingerprint, paths=[source.item_ref(int(i)) for i in indices],
                   labels=labels, index=indices, class_names=getattr(source, "class_names", None))


def parse_shard(text: str) -> tuple[int, int]:
    """"I/N" -> (I, N): this process's share of the inputs, 0 <= I < N."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise DataError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise DataError(f"--shard {text!r}: I must be in 0..N-1")
    return i, n


def shard_of(indices: np.ndarray, i: int, n: int) -> np.ndarray:
    """The i-th of n contiguous shares of `indices`: the shares, in order, are the indices in order."""
    bounds = [len(indices) * r // n for r in range(n + 1)]
    return indices[bounds[i] : bounds[i + 1]]

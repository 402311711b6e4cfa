"""Outputs of frozen backbone stages, computed once and kept on disk for every run that shares them.

When the first stages of a backbone are frozen, their output for an image depends only on the image, the
input size and those stages' weights. Benchmark grids train dozens of runs on the same frozen prefix, so
attnhash computes the prefix once per dataset and stores it as a memory-mapped array; each run then
trains and encodes through the remaining stages only. The key hashes everything the output depends on
(the source's fingerprint, the input size, the backbone's structure and the frozen weights themselves),
so a cache can never be reused for a network it does not belong to.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from attnhash.atomic import atomic_write, atomic_write_text
from attnhash.data import ImageDataset, Skipped
from attnhash.inference.device import device_chunks


def cache_root() -> Path:
    base = os.environ.get("ATTNHASH_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "attnhash")
    return Path(base) / "stages"


def prefix_key(network, source, image_size: int, n_stages: int) -> str:
    """What the output of stages[:n_stages] depends on, hashed."""
    h = hashlib.sha256()
    h.update(source.fingerprint().encode())
    backbone = network.backbone
    h.update(f"|{image_size}|{n_stages}|{type(backbone).__name__}|{getattr(backbone, 'output_stride', 32)}|".encode())
    h.update(repr(network.backbone.stages()[:n_stages]).encode())  # structure, incl. strides and block attention
    for stage in network.backbone.stages()[:n_stages]:
        for name, t in sorted(stage.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(network.mean.cpu().numpy().tobytes() + network.std.cpu().numpy().tobytes())
    return h.hexdigest()[:32]


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # two runs filling the same cache take turns
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# how often a fill marks its progress on disk (at 256 images a batch: every ~4k images)
CHECKPOINT_BATCHES = 16


def _checkpoint(feats: np.memmap, done: np.ndarray, done_path: Path) -> None:
    feats.flush()
    atomic_write(done_path, lambda tmp: _save_npy(tmp, done))  # rows are marked done only once flushed


def _open_or_create(folder: Path, network, source, indices, image_size: int, n_stages: int, device):
    """The cache's arrays: (features memmap, done mask, done path). meta.json is written last, atomically, so
    its presence says features.npy and done.npy were both made; a folder without it (a fill killed before it
    wrote one) is started again. A missing done.npy (left by versions that wrote it only at the end) means no
    row is done."""
    meta_path, data_path, done_path = folder / "meta.json", folder / "features.npy", folder / "done.npy"
    if meta_path.exists() and data_path.exists():
        shape = tuple(json.loads(meta_path.read_text())["shape"])
        feats = np.load(data_path, mmap_mode="r+")
        if feats.shape == shape and feats.dtype == np.float32:
            done = np.load(done_path) if done_path.exists() else np.zeros(shape[0], dtype=bool)
            return feats, done, done_path
        del feats
    probe = run_prefix(network, ImageDataset(source, indices[:1], image_size)[0]["image"][None], n_stages, device)
    shape = (len(source), *probe.shape[1:])
    folder.mkdir(parents=True, exist_ok=True)
    feats = np.lib.format.open_memmap(data_path, mode="w+", dtype=np.float32, shape=shape)
    done = np.zeros(len(source), dtype=bool)
    _checkpoint(feats, done, done_path)
    atomic_write_text(meta_path, json.dumps({"shape": list(shape), "source": getattr(source, "name", ""),
                                             "image_size": image_size, "n_stages": n_stages}))
    return feats, done, done_path


@torch.no_grad()
def run_prefix(network, images: torch.Tensor, n_stages: int, device) -> torch.Tensor:
    """The network's first `n_stages` backbone stages over a batch of `images`, on `device` and in its chunks
    (device_chunks): float32, contiguous NCHW, on the device."""
    stages = network.backbone.stages()[:n_stages]
    outs = []
    for x in device_chunks(images.to(device)):
        x = network.normalize(x)
        for stage in stages:
            x = stage(x)
        outs.append(x.float().contiguous())
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def stage_outputs(network, source, indices: np.ndarray, image_size: int, n_stages: int, device,
                  batch_size: int = 256, progress: bool = True, log=print,
                  skipped: Skipped | None = None) -> torch.Tensor:
    """Outputs of the first `n_stages` stages for source items `indices`, from the disk cache, computing
    (and storing) the rows that are not there yet. Returns a float32 tensor (len(indices), C, h, w).
    skipped: None = an unreadable image raises; a Skipped = its row is left out of the result (and of the
    cache) and it is listed there."""
    key = prefix_key(network, source, image_size, n_stages)
    folder = cache_root() / key
    indices = np.asarray(indices, dtype=np.int64)
    was_training = network.training
    network.eval()
    with _locked(folder / "lock"):
        feats, done, done_path = _open_or_create(folder, network, source, indices, image_size, n_stages, device)
        todo = np.unique(indices[~done[indices]])
        if len(todo):
            # a private generator: iterating a DataLoader draws a seed from the global RNG, and a run must train
            # the same whether its cache was filled now or by an earlier run (stochastic depth draws from it)
            loader = DataLoader(ImageDataset(source, todo, image_size, skip_unreadable=skipped is not None),
                                batch_size=batch_size, shuffle=False, generator=torch.Generator())
            pos = 0
            for n, batch in enumerate(tqdm(loader, desc=f"frozen stages -> {folder.name[:8]}", leave=False,
                                           disable=None if progress else True), 1):
                out = run_prefix(network, batch["image"], n_stages, device).cpu().numpy()
                rows = todo[pos : pos + len(out)]
                feats[rows] = out
                done[rows] = True
                for k, error in enumerate(batch.get("error", ())):
                    if error:
                        item = int(rows[k])
                        done[item] = False  # never cached: tried again (and reported again) next time
                        skipped.add(item, source.describe(item), error)
                pos += len(out)
                if n % CHECKPOINT_BATCHES == 0:  # a fill that is killed resumes from here, not from nothing
                    _checkpoint(feats, done, done_path)
            _checkpoint(feats, done, done_path)
            log(f"stage cache {folder}: computed {len(todo)} items ({feats.nbytes / 2**20:.0f} MiB in all)")
        if skipped is not None:
            indices = indices[done[indices]]
        result = torch.from_numpy(np.ascontiguousarray(feats[indices]))
    network.train(was_training)
    return result

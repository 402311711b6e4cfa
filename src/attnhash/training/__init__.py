"""Training: one entry point, `train(cfg)`, which trains a deep method (attnhash.training.deep) or fits a
shallow one (attnhash.training.shallow), as the method catalogue says, and leaves a run folder.

A run folder is never overwritten by accident: a name that already holds a run is refused unless `force`;
`resume_run` continues an interrupted training from its last finished epoch.

Under `torchrun --nproc_per_node=N -m attnhash train ...` both join the job's process group (gloo on CPU,
nccl on GPU) and train with DistributedDataParallel (attnhash.training.deep); the first process writes the
run folder and the log. Shallow methods are fitted in one step and refuse torchrun.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import numpy as np

from attnhash.config import RunConfig
from attnhash.data import FileSource, ImageDataset, RunData, Skipped, prepare_data
from attnhash.errors import CheckpointError, ConfigError
from attnhash.inference import pick_device
from attnhash.inference.distributed import Distributed
from attnhash.methods import METHODS
from attnhash.runs import RunFolder
from attnhash.training.common import TrainResult, default_run_name, seed_everything
from attnhash.training.deep import make_optimizer, make_scheduler, train_deep
from attnhash.training.shallow import fit_shallow

__all__ = ["train", "resume_run", "TrainResult", "seed_everything", "default_run_name", "make_optimizer",
           "make_scheduler"]


def train(cfg: RunConfig, run_dir: str | Path | None = None, progress: bool = True,
          log: Callable[[str], None] = print, data: RunData | None = None, force: bool = False) -> TrainResult:
    """Train (or fit) the method of `cfg` and save its run folder; returns where and how fast.
    A folder that holds a run already is refused unless `force`."""
    entry = METHODS.get(cfg.method.name)
    device, dist = _devices(cfg)
    if dist.active and not entry.deep:
        raise ConfigError(f"{entry.name} is a shallow method, fitted in one step on pretrained features: run it "
                          "without torchrun")
    if dist.active and run_dir is None and cfg.name is None:
        raise ConfigError("under torchrun every process must name the same run folder: pass --name")
    run = RunFolder(run_dir or Path(cfg.out_dir) / (cfg.name or default_run_name(cfg)))
    if not force and (run.has_model() or run.file(RunFolder.TRAIN_STATE).exists()):
        what = "a trained run" if run.has_model() else "an unfinished training"
        raise ConfigError(f"{run.path} holds {what} already; pass --force to train it again from scratch"
                          + ("" if run.has_model() else ", or --resume to continue it"))
    dist.barrier()  # every process has looked before the first one writes
    log = log if dist.is_main else _quiet
    if dist.is_main:
        run.create()
    generator = seed_everything(cfg.train.seed)
    data = _readable(data or prepare_data(cfg.data), cfg, run, log, dist.is_main)
    if entry.deep:
        return train_deep(cfg, run, data, device, generator, progress=progress and dist.is_main, log=log, dist=dist)
    run.start_training(cfg)
    return fit_shallow(cfg, run, data, device, progress=progress, log=log)


def resume_run(run_dir: str | Path, progress: bool = True, log: Callable[[str], None] = print) -> TrainResult:
    """Continue the interrupted training of a run folder with its own config, from its last finished epoch;
    the final weights equal those of an uninterrupted run."""
    run = RunFolder(run_dir)
    if run.has_model():
        raise ConfigError(f"{run.path}: its training finished already (model.safetensors is there)")
    cfg = run.load_config()
    state = run.load_train_state()
    if not METHODS.get(cfg.method.name).deep:
        raise ConfigError(f"{run.path}: {cfg.method.name} is fitted in one step; train it again with --force")
    device, dist = _devices(cfg)
    log = log if dist.is_main else _quiet
    generator = seed_everything(cfg.train.seed)
    data = _readable(prepare_data(cfg.data), cfg, run, log, dist.is_main)
    if state is None:
        log(f"{run.path}: no finished epoch to resume from; training from the start")
    return train_deep(cfg, run, data, device, generator, progress=progress and dist.is_main, log=log, resume=state,
                      dist=dist)


def _devices(cfg: RunConfig) -> tuple:
    """(this process's device, the torchrun job it belongs to, or the single process)."""
    device = pick_device(cfg.train.device)
    dist = Distributed.from_env(device.type)
    return dist.device(device), dist


def _quiet(message: str) -> None:
    """The log of every process but the first of a torchrun job."""


def _readable(data: RunData, cfg: RunConfig, run: RunFolder, log: Callable[[str], None],
              write: bool = True) -> RunData:
    """Say what the split is; leave out training images that cannot be read (listed in the run's skipped.tsv),
    unless data.strict (then the first one stops the training with its one-line error)."""
    sizes = f"{len(data.query)} query / {len(data.train)} train / {len(data.database)} database"
    log(f"split {data.split_path} ({cfg.data.protocol}): {sizes}")
    if len(data.database) < len(data.query):
        log(f"warning: the database ({len(data.database)}) is smaller than the query set ({len(data.query)}); "
            "retrieval figures will say little (more data, or a smaller data.split_query)")
    if len(data.train) == 0:
        raise ConfigError(f"{data.source.name}: the split leaves no training images")
    if cfg.data.strict or not isinstance(data.source, FileSource):
        return data  # in-memory images are always readable; strict: the first bad file raises when read
    skipped = Skipped()
    dataset = ImageDataset(data.source, data.train, 16, skip_unreadable=True)
    t0 = time.time()
    for start in range(0, len(dataset), 256):
        batch = dataset.get_batch(range(start, min(start + 256, len(dataset))))
        for pos, error in zip(batch["index"].tolist(), batch["error"]):
            if error:
                skipped.add(int(data.train[pos]), data.source.describe(int(data.train[pos])), error)
    if not skipped:
        return data
    report = run.write_skipped(skipped) if write else None
    log(skipped.summary(report) + f" (checked {len(dataset)} training images in {time.time() - t0:.1f}s)")
    bad = np.fromiter(skipped.indices(), dtype=np.int64)
    if len(bad) == len(data.train):
        raise CheckpointError(f"{data.source.name}: none of the {len(bad)} training images can be read "
                              f"(first: {skipped.items[0][2]})")
    return dataclasses.replace(data, train=np.setdiff1d(data.train, bad))

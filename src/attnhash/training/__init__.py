"""Training: one entry point, `train(cfg)`, which trains a deep method (attnhash.training.deep) or fits a
shallow one (attnhash.training.shallow), as the method catalogue says, and leaves a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from attnhash.config import RunConfig
from attnhash.data import RunData, prepare_data
from attnhash.inference import pick_device
from attnhash.methods import METHODS
from attnhash.runs import RunFolder
from attnhash.training.common import TrainResult, default_run_name, seed_everything
from attnhash.training.deep import make_optimizer, make_scheduler, train_deep
from attnhash.training.shallow import fit_shallow

__all__ = ["train", "TrainResult", "seed_everything", "default_run_name", "make_optimizer", "make_scheduler"]


def train(cfg: RunConfig, run_dir: str | Path | None = None, progress: bool = True,
          log: Callable[[str], None] = print, data: RunData | None = None) -> TrainResult:
    """Train (or fit) the method of `cfg` and save its run folder; returns where and how fast."""
    entry = METHODS.get(cfg.method.name)
    run = RunFolder(run_dir or Path(cfg.out_dir) / (cfg.name or default_run_name(cfg))).create()
    generator = seed_everything(cfg.train.seed)
    device = pick_device(cfg.train.device)
    data = data or prepare_data(cfg.data)
    if entry.deep:
        return train_deep(cfg, run, data, device, generator, progress=progress, log=log)
    return fit_shallow(cfg, run, data, device, progress=progress, log=log)

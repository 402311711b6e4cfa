"""What deep training and shallow fitting share: the result, seeding, run names and the run's meta."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from attnhash.config import RunConfig
from attnhash.data import RunData
from attnhash.provenance import code_version


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    seconds: float
    images_per_second: float
    history: list[dict] = field(default_factory=list)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def default_run_name(cfg: RunConfig) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    ablated = "-no-" + "-".join(cfg.method.ablate) if cfg.method.ablate else ""
    dataset = Path(cfg.data.dataset).name.replace(".", "_")
    return f"{cfg.method.name}{ablated}-{dataset}-{cfg.model.bits}b-{cfg.model.backbone}-{stamp}"


def run_meta(cfg: RunConfig, data: RunData, num_train: int, device: torch.device, **facts) -> dict:
    """The meta of a run (saved in its checkpoint and meta.json): the data it saw, where, and which code."""
    return {
        "num_classes": data.num_classes,
        "class_names": data.class_names,
        "num_train": num_train,
        "protocol": cfg.data.protocol,
        "split_file": data.split_path,
        **facts,
        "device": str(device),
        "code": code_version(),
    }

"""The data of a run: the image source, its protocol split and the label columns the protocol keeps.

Training and evaluation both go through `prepare_data`, so they see the same split file and labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import DataConfig
from .datasets import open_dataset
from .protocols import Split, load_or_create_split
from .sources import ImageSource


@dataclass
class RunData:
    source: ImageSource
    split: Split
    split_path: str
    labels: np.ndarray  # (N, C) uint8 multi-hot over the kept columns, indexed like the source
    train: np.ndarray  # indices into the source
    query: np.ndarray
    database: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(self.labels.shape[1])

    @property
    def topk(self) -> int | None:
        return self.split.topk

    @property
    def class_names(self) -> list[str] | None:
        names = getattr(self.source, "class_names", None)
        if names is None:
            return None
        if self.split.classes is not None:
            return [names[i] for i in self.split.classes]
        return list(names)


def _limit(indices: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """A seeded random subset (kept sorted), for quick runs on part of a split."""
    if limit is None or limit >= len(indices):
        return indices
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(indices, size=limit, replace=False))


def prepare_data(cfg: DataConfig) -> RunData:
    source = open_dataset(cfg.dataset, cfg.root)
    params = {"query": cfg.split_query, "train": cfg.split_train, "train_in_database": cfg.train_in_database}
    split, split_path = load_or_create_split(source, cfg.protocol, cfg.split_seed, cfg.split_file, params)
    labels = np.asarray(source.labels)
    if split.classes is not None:
        labels = labels[:, np.asarray(split.classes)]
    return RunData(
        source=source,
        split=split,
        split_path=str(split_path),
        labels=labels.astype(np.uint8),
        train=_limit(np.asarray(split.train), cfg.train_limit, cfg.split_seed + 1),
        query=_limit(np.asarray(split.query), cfg.query_limit, cfg.split_seed + 2),
        database=_limit(np.asarray(split.database), cfg.database_limit, cfg.split_seed + 3),
    )

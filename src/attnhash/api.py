"""The Python API: what `import attnhash` offers (see the README).

    import attnhash
    run = attnhash.train("dpfah", dataset="fmnist", bits=32, epochs=3)   # or attnhash.train(cfg)
    result = attnhash.evaluate(run)                                       # mAP@R, P@N, P@H<=2 -> run/metrics.json
    encoder = attnhash.load(run)                                          # images -> packed codes
    index = attnhash.build_index(run, "fmnist", out="fmnist.idx")         # a Retriever: search, add, remove
    index = attnhash.open_index("fmnist.idx")                             # the same, from the file
    hits = index.search_images([image], k=10)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from attnhash.config import RunConfig, build_config  # build_config is part of the API: defaults <- recipe <- ...
from attnhash.data import open_dataset
from attnhash.evaluation.run import evaluate_run
from attnhash.inference import Encoder
from attnhash.methods import METHODS
from attnhash.retrieval import Retriever
from attnhash.training import TrainResult
from attnhash.training import train as _train

__all__ = ["build_config", "train", "evaluate", "load", "build_index", "open_index", "list_methods"]

RunLike = str | Path | TrainResult


def _run_dir(run: RunLike) -> str:
    return str(run.run_dir if isinstance(run, TrainResult) else run)


def train(method: str | RunConfig | None = None, *, dataset: str | None = None, bits: int | None = None,
          epochs: int | None = None, name: str | None = None, overrides: list[str] | None = None,
          run_dir: str | Path | None = None, progress: bool | None = None, log=print,
          force: bool = False) -> TrainResult:
    """Train a method (by name, with the shortcuts and overrides given) or a ready RunConfig; returns the
    run's folder, time and history. Progress bars show when stderr is a terminal, unless told. A run folder
    that holds a run already is refused unless `force`."""
    if isinstance(method, RunConfig):
        cfg = method
    else:
        sections = {"data": {"dataset": dataset}, "model": {"bits": bits}, "train": {"epochs": epochs},
                    "name": name}
        if dataset in ("cifar10", "fmnist"):
            sections["data"]["protocol"] = dataset
        cfg = build_config(method, None, sections, overrides)
    METHODS.get(cfg.method.name)
    progress = sys.stderr.isatty() if progress is None else progress
    return _train(cfg, run_dir=run_dir, progress=progress, log=log, force=force)


def evaluate(run: RunLike, topk: int | None = None, plots: bool = True, device: str = "auto") -> dict[str, Any]:
    """Score a run on its protocol's query and database sets; the figures are also saved in the run folder."""
    return evaluate_run(_run_dir(run), topk=topk, progress=sys.stderr.isatty(), plots=plots, device=device)[1]


def load(run: RunLike, device: str = "auto") -> Encoder:
    """The encoder of a trained run: encode_images / encode_paths / encode_source -> packed codes."""
    return Encoder(_run_dir(run), device=device)


def build_index(run: RunLike, images: str, out: str | None = None, root: str | None = None,
                backend: str = "faiss", device: str = "auto") -> Retriever:
    """Encode a dataset (a name or a path, as `--images` takes) with a run and index it; saved to `out` if given."""
    source = open_dataset(images, root)
    retriever = Retriever.create(load(run, device), backend=backend, source=source)
    retriever.add_source(source, progress=sys.stderr.isatty())
    if out is not None:
        retriever.save(out)
    return retriever


def open_index(path: str, run: RunLike | None = None, backend: str = "faiss", device: str = "auto") -> Retriever:
    """An index file with the model that built it (its recorded run unless `run` is given)."""
    return Retriever.open(path, None if run is None else _run_dir(run), backend=backend, device=device)


def list_methods() -> list[str]:
    """The names of every method, deep and shallow."""
    return METHODS.names()

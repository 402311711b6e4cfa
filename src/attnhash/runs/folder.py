"""RunFolder: the one reader and writer of a run folder (see attnhash.runs)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from attnhash.atomic import atomic_write, atomic_write_text
from attnhash.codefile import SplitCodes
from attnhash.config import RunConfig, config_from_dict
from attnhash.errors import AttnHashError, CheckpointError, DataError
from attnhash.runs.state import load_state, read_safetensors, save_state
from attnhash.version import __version__

# Version 2 added the network spec; a version-1 checkpoint cannot be rebuilt without its method.
CHECKPOINT_FORMAT = "attnhash-checkpoint-2"


@dataclass
class Checkpoint:
    """What a checkpoint holds: the weights, the run's config and meta, the network spec, and the sha256 of
    the file (the model's fingerprint, recorded in every index built with it)."""

    path: Path
    state: dict[str, torch.Tensor]
    config: RunConfig
    meta: dict[str, Any]
    network: dict[str, Any]
    fingerprint: str


def file_fingerprint(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class RunFolder:
    """A run folder on disk. `RunFolder(path)` accepts the folder or its checkpoint file."""

    CHECKPOINT = "model.safetensors"
    CONFIG = "config.yaml"
    META = "meta.json"
    LOG = "log.jsonl"
    CODES = "codes.npz"
    METRICS = "metrics.json"
    PLOTS = "plots"
    ENCODED = "encoded.npz"
    TRAIN_STATE = "train_state.safetensors"
    SKIPPED = "skipped.tsv"

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_file():  # a checkpoint file given directly
            self.path, self.checkpoint_path = path.parent, path
        else:
            self.path, self.checkpoint_path = path, path / self.CHECKPOINT

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    def create(self) -> "RunFolder":
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def has_model(self) -> bool:
        return self.checkpoint_path.is_file()

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def plots_dir(self) -> Path:
        return self.path / self.PLOTS

    @property
    def encoded_path(self) -> Path:
        return self.path / self.ENCODED

    # ---- the checkpoint -----------------------------------------------------------------------------
    def save_model(self, state: dict[str, torch.Tensor], config: RunConfig, network: dict[str, Any],
                   meta: dict[str, Any]) -> Path:
        """Write the checkpoint (weights + config + meta + network spec, atomically), config.yaml and meta.json."""
        self.create()
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        metadata = {
            "format": CHECKPOINT_FORMAT,
            "attnhash_version": __version__,
            "config": json.dumps(config.to_dict()),
            "meta": json.dumps(meta),
            "network": json.dumps(network),
        }
        atomic_write(self.checkpoint_path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
        atomic_write_text(self.file(self.CONFIG), config.to_yaml())
        atomic_write_text(self.file(self.META), json.dumps(meta, indent=2))
        return self.checkpoint_path

    def load_model(self) -> Checkpoint:
        """The checkpoint; CheckpointError (one line) when missing, corrupted or not an attnhash checkpoint."""
        path = self.checkpoint_path
        if not path.exists():
            if self.path.is_dir():
                raise CheckpointError(f"{self.path} has no {self.CHECKPOINT}")
            raise CheckpointError(f"{self.path}: no such run folder or checkpoint")
        metadata, state = read_safetensors(path, "checkpoint")
        fmt = metadata.get("format")
        if fmt == "attnhash-checkpoint-1":
            raise CheckpointError(f"{path}: written by an older attnhash without the network spec; train the run "
                                  "again to use it with this version")
        if fmt != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: not an attnhash checkpoint (format {fmt!r})")
        try:
            config = config_from_dict(json.loads(metadata["config"]))
            meta = json.loads(metadata.get("meta", "{}"))
            network = json.loads(metadata["network"])
        except (KeyError, json.JSONDecodeError, AttnHashError) as err:
            raise CheckpointError(f"{path}: the saved config cannot be read ({err})") from None
        return Checkpoint(path, state, config, meta, network, file_fingerprint(path))

    def saved_config(self) -> dict[str, Any] | None:
        """config.yaml as a plain dict (None when absent or unreadable): how the run was made, without loading
        the weights."""
        path = self.file(self.CONFIG)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            return None
        return data if isinstance(data, dict) else None

    def fingerprint(self) -> str:
        return file_fingerprint(self.checkpoint_path)

    # ---- a training in progress ---------------------------------------------------------------------
    def start_training(self, config: RunConfig) -> None:
        """A new training in this folder: its config (so --resume knows it) and an empty log. The resumable state
        of an earlier training goes first: resumed under this config it would continue the other training."""
        self.create()
        self.file(self.TRAIN_STATE).unlink(missing_ok=True)
        atomic_write_text(self.file(self.CONFIG), config.to_yaml())
        self.write_log([])

    def write_log(self, records: list[dict[str, Any]]) -> None:
        atomic_write_text(self.file(self.LOG), "".join(json.dumps(r) + "\n" for r in records))

    def append_log(self, record: dict[str, Any]) -> None:
        with open(self.file(self.LOG), "a") as f:
            f.write(json.dumps(record) + "\n")

    def save_train_state(self, state: dict[str, Any]) -> None:
        """The state to resume from after the last finished epoch (written atomically every epoch)."""
        save_state(self.file(self.TRAIN_STATE), state)

    def load_train_state(self) -> dict[str, Any] | None:
        path = self.file(self.TRAIN_STATE)
        return load_state(path) if path.exists() else None

    def finish_training(self) -> None:
        """The final checkpoint is written: the resumable state is no longer needed."""
        self.file(self.TRAIN_STATE).unlink(missing_ok=True)

    def load_config(self) -> RunConfig:
        """The run's config (from config.yaml, written when its training started)."""
        saved = self.saved_config()
        if saved is None:
            raise CheckpointError(f"{self.path}: no readable {self.CONFIG}; not a run folder")
        try:
            return config_from_dict(saved)
        except AttnHashError as err:
            raise CheckpointError(f"{self.path / self.CONFIG}: {err}") from None

    def write_skipped(self, skipped, name: str = SKIPPED) -> str:
        """Images that could not be read (a data.Skipped), listed in skipped.tsv (training) or another file."""
        return skipped.write(self.file(name))

    def read_log(self) -> list[dict[str, Any]]:
        path = self.file(self.LOG)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # ---- evaluation ---------------------------------------------------------------------------------
    def save_codes(self, codes: SplitCodes) -> None:
        codes.save(self.file(self.CODES))

    def load_codes(self, fingerprint: str) -> SplitCodes | None:
        """The cached split codes when they were made by the model with this fingerprint, else None."""
        path = self.file(self.CODES)
        if not path.exists():
            return None
        try:
            codes = SplitCodes.load(path)
        except DataError:
            return None  # an unreadable cache is simply rebuilt
        return codes if codes.fingerprint == fingerprint else None

    def save_metrics(self, result: dict[str, Any]) -> None:
        atomic_write_text(self.file(self.METRICS), json.dumps(result, indent=2))

    def load_metrics(self) -> dict[str, Any] | None:
        path = self.file(self.METRICS)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def forget_metrics(self) -> None:
        """Remove metrics.json (a run being retrained has none, so an interrupted retrain reads as unfinished)."""
        self.file(self.METRICS).unlink(missing_ok=True)

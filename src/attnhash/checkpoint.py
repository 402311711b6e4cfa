"""Checkpoints: the weights in safetensors with the full run config in the file's metadata.

One file (`model.safetensors`) is the whole checkpoint, written atomically, so a run folder can never
hold weights and a config that disagree. `config.yaml` beside it is the same config for people to read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from attnhash import __version__
from attnhash.atomic import atomic_write, atomic_write_text
from attnhash.config import RunConfig, config_from_dict
from attnhash.errors import AttnHashError, CheckpointError

CHECKPOINT_NAME = "model.safetensors"
FORMAT = "attnhash-checkpoint-1"


def checkpoint_path(run: str | Path) -> Path:
    run = Path(run)
    return run / CHECKPOINT_NAME if run.is_dir() else run


def save_checkpoint(run_dir: str | Path, state: dict[str, torch.Tensor], cfg: RunConfig, meta: dict) -> Path:
    run_dir = Path(run_dir)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    metadata = {
        "format": FORMAT,
        "attnhash_version": __version__,
        "config": json.dumps(cfg.to_dict()),
        "meta": json.dumps(meta),
    }
    path = run_dir / CHECKPOINT_NAME
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    return path


def file_fingerprint(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_checkpoint(run: str | Path) -> tuple[dict[str, torch.Tensor], RunConfig, dict, str]:
    """(state dict, config, meta, fingerprint) of a run folder or checkpoint file; CheckpointError if unusable."""
    path = checkpoint_path(run)
    if not path.exists():
        where = f"{run} has no {CHECKPOINT_NAME}" if Path(run).is_dir() else f"{path}: no such run folder or checkpoint"
        raise CheckpointError(where)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint, the file is corrupted or truncated ({err})") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an attnhash checkpoint (format {metadata.get('format')!r})")
    try:
        cfg = config_from_dict(json.loads(metadata["config"]))
        meta = json.loads(metadata.get("meta", "{}"))
    except (KeyError, json.JSONDecodeError, AttnHashError) as err:
        raise CheckpointError(f"{path}: the saved config cannot be read ({err})") from None
    return state, cfg, meta, file_fingerprint(path)


def check_bits(path: str | Path, state: dict[str, torch.Tensor], bits: int) -> None:
    """Refuse a checkpoint whose hash layer has another code length than asked, naming both."""
    keys = [k for k in state if k.startswith("hash_layer.") and k.endswith(".weight")]
    if not keys:
        return
    have = state[keys[-1]].shape[0]
    if have != bits:
        raise CheckpointError(f"{path}: the checkpoint makes {have}-bit codes, but {bits} bits were asked")


def load_state_into(network: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """load_state_dict with one clear line on mismatch instead of PyTorch's multi-line report."""
    own = network.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"shape mismatch {', '.join(wrong[:3])}")
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{'...' if len(unexpected) > 3 else ''}")
        raise CheckpointError(f"{path}: weights do not fit the network of its config ({'; '.join(parts)})")
    network.load_state_dict(state, strict=True)

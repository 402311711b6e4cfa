"""Loading backbone weights from state-dict files, with one-line errors naming the file and the problem."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import Tensor

from attnhash.errors import CheckpointError
from attnhash.models.backbones.base import Backbone

_WRAPPER_KEYS = ("state_dict", "model")
_SHOW = 3  # how many offending keys an error message lists


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict saved with torch.save (plain, or wrapped under "state_dict"/"model")."""
    if not str(path).strip():
        raise CheckpointError("weights file path is empty")
    p = Path(path)
    if not p.is_file():
        problem = "is not a file" if p.exists() else "does not exist"
        raise CheckpointError(f"weights file {p} {problem}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors all mean "not a usable weights file"
        raise CheckpointError(f"weights file {p} cannot be read as a torch state dict: {_load_error(exc)}") from None
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"weights file {p} does not hold a state dict (found {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"weights file {p} is not a state dict: entries {_fmt(map(str, bad))} are not tensors")
    # Files saved from nn.DataParallel / DistributedDataParallel prefix every key with "module.".
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _load_error(exc: Exception) -> str:
    """Why torch.load(weights_only=True) refused a file, without torch's advice to load it with
    weights_only=False: that would run whatever code the file carries."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    if "Weights only load failed" not in text:
        return text.splitlines()[0] if text else type(exc).__name__
    found = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\s*Please use|\n\s*\n\s*Check|$)", text, re.S)
    detail = " ".join(found.group(1).split()).rstrip(".") if found else ""
    if "global" in detail.lower():
        return (f"it holds Python objects, not only tensors ({detail}); attnhash never runs code from a weights "
                "file: save the weights alone with torch.save(model.state_dict(), path)")
    return "not a file of tensors written by torch.save" + (f" ({detail})" if detail else "")


def _fmt(keys, n: int = _SHOW) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _optional(model: Backbone, key: str) -> bool:
    """Keys the file may lack: the classification layer, modules added on top (attention), BN counters."""
    return (
        key.startswith(model.head_prefixes)
        or ".attention." in key
        or key.startswith("attention.")
        or key.endswith("num_batches_tracked")
    )


def state_mismatch(own: dict[str, Tensor], state: dict[str, Tensor], may_lack=lambda key: False) -> list[str]:
    """Why `state` does not load into a module whose state dict is `own` (missing keys other than those
    `may_lack`, unexpected keys, shape mismatches), a few of each named; [] when it fits."""
    missing = [k for k in own if k not in state and not may_lack(k)]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                  for k in state if k in own and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_fmt(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_fmt(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches ({_fmt(mismatched)})")
    return problems


def load_weights(model: Backbone, path: str | os.PathLike, source: str | None = None) -> None:
    """Load a state-dict file into `model`, strictly apart from the classification layer.

    Keys of the classification layer are ignored unless the model has one of the same shape; every
    other key must match by name and shape, else CheckpointError lists a few offenders.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    head = model.head_prefixes
    # The classification layer is replaced by hashing: drop the file's unless it fits the model's own.
    for k in [k for k in state if k.startswith(head)]:
        if k not in own or own[k].shape != state[k].shape:
            del state[k]
    problems = state_mismatch(own, state, lambda key: _optional(model, key))
    if problems:
        raise CheckpointError(f"weights file {path} does not fit {model.name}: " + "; ".join(problems))
    non_float = [k for k, v in state.items() if own[k].is_floating_point() and not v.is_floating_point()]
    if non_float:
        raise CheckpointError(f"weights file {path} does not fit {model.name}: non-float values for {_fmt(non_float)}")
    model.load_state_dict(state, strict=False)
    model.weights_source = source or str(path)

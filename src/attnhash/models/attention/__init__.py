"""Attention modules, by name.

An attention module maps a feature map (B, C, H, W) to a feature map of the same shape. It may also return
auxiliary outputs as a second value, a dict of tensors (e.g. class logits of a CAM branch), which the hashing
network passes on to the method's loss. Each module registers itself with `@register_attention("name")` and is
built with `create_attention(name, channels, **args)`.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

from torch import nn

from attnhash.errors import ConfigError

_ATTENTION: dict[str, Callable[..., nn.Module]] = {}


def register_attention(name: str):
    def deco(factory):
        if name in _ATTENTION:
            raise RuntimeError(f"attention '{name}' registered twice")
        _ATTENTION[name] = factory
        return factory

    return deco


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def available_attention() -> list[str]:
    _load_all()
    return sorted(_ATTENTION)


def create_attention(name: str, channels: int, **args) -> nn.Module:
    _load_all()
    if name not in _ATTENTION:
        raise ConfigError(f"unknown attention module '{name}' (known: {', '.join(sorted(_ATTENTION)) or 'none'})")
    try:
        return _ATTENTION[name](channels, **args)
    except TypeError as err:
        raise ConfigError(f"attention '{name}': bad arguments {args} ({err})") from None

"""The attention registry: name -> factory(channels, **args) -> nn.Module (see the package docstring)."""

from __future__ import annotations

from torch import nn

from attnhash.errors import ConfigError
from attnhash.registry import Registry

ATTENTION: Registry = Registry("attention module", package="attnhash.models.attention")


def available_attention() -> list[str]:
    return ATTENTION.names()


def create_attention(name: str, channels: int, **args) -> nn.Module:
    factory = ATTENTION.get(name)
    try:
        return factory(channels, **args)
    except TypeError as err:
        raise ConfigError(f"attention '{name}': bad arguments {args} ({err})") from None

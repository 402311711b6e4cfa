"""Which device a network runs on."""

from __future__ import annotations

import torch


def pick_device(name: str = "auto") -> torch.device:
    """"auto": the GPU when there is one, else the CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prepare_network(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The network on `device` in eval mode, channels-last on the CPU (faster convolutions there)."""
    network.to(device).eval()
    if device.type == "cpu":
        network.to(memory_format=torch.channels_last)
    return network

"""Attention modules, by name.

An attention module maps a feature map (B, C, H, W) to a feature map of the same shape. It may also return
auxiliary outputs as a second value, a dict of tensors (e.g. class logits of a CAM branch), which the hashing
network passes on to the method's loss. Each module registers itself with `@ATTENTION.register("name")` and is
built with `create_attention(name, channels, **args)`.
"""

from attnhash.models.attention.base import ATTENTION, available_attention, create_attention

__all__ = ["ATTENTION", "available_attention", "create_attention"]

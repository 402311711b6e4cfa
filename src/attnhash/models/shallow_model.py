"""The network of a shallow run: pretrained backbone features -> a fitted shallow hasher (LSH, ITQ, ...).

A shallow run is saved like a deep one (one safetensors checkpoint): the backbone weights plus the
hasher's arrays under `hasher_*` buffers, so `encode`, `evaluate`, the index and the service treat it the
same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from attnhash.models.backbones import create_backbone
from attnhash.shallow import HASHERS


@dataclass
class ShallowSpec:
    """What rebuilds a shallow run's network: the backbone and the hasher with its arrays' shapes."""

    backbone: str
    hasher: str
    arrays: dict[str, dict] = field(default_factory=dict)  # name -> {"shape": [...], "dtype": "float64"}

    def to_dict(self) -> dict:
        return {"kind": "shallow", "backbone": self.backbone, "hasher": self.hasher, "arrays": self.arrays}

    @classmethod
    def from_dict(cls, data: dict) -> "ShallowSpec":
        return cls(backbone=data["backbone"], hasher=data["hasher"], arrays=dict(data.get("arrays", {})))


class ShallowCodeModel(nn.Module):
    """Backbone pooled features -> a fitted shallow hasher. forward() returns {"z": codes as float +-1}."""

    def __init__(self, backbone: nn.Module, hasher: str, hasher_state: dict[str, np.ndarray]):
        super().__init__()
        self.backbone = backbone
        self.hasher_name = hasher
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1) * 255.0, persistent=False)
        self._keys = sorted(hasher_state)
        for k in self._keys:
            self.register_buffer(f"hasher_{k}", torch.from_numpy(np.ascontiguousarray(hasher_state[k])))
        self._hasher = None

    @classmethod
    def from_spec(cls, spec: ShallowSpec) -> "ShallowCodeModel":
        """An empty model of the spec's shapes, ready for the checkpoint's state dict."""
        backbone = create_backbone(spec.backbone, weights="none")
        state = {k: np.zeros(v["shape"], dtype=np.dtype(v["dtype"])) for k, v in spec.arrays.items()}
        return cls(backbone, spec.hasher, state)

    def spec(self, backbone_name: str) -> ShallowSpec:
        arrays = {k: {"shape": list(getattr(self, f"hasher_{k}").shape),
                      "dtype": str(getattr(self, f"hasher_{k}").cpu().numpy().dtype)} for k in self._keys}
        return ShallowSpec(backbone=backbone_name, hasher=self.hasher_name, arrays=arrays)

    def hasher(self):
        if self._hasher is None:  # rebuilt from the buffers after a checkpoint was loaded into them
            state = {k: getattr(self, f"hasher_{k}").cpu().numpy() for k in self._keys}
            self._hasher = HASHERS.get(self.hasher_name).from_state_dict(state)
        return self._hasher

    def _load_from_state_dict(self, *args, **kwargs):
        self._hasher = None
        super()._load_from_state_dict(*args, **kwargs)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std

    def features(self, x: torch.Tensor, start_stage: int = 0) -> torch.Tensor:
        """Pooled backbone features of uint8 images, or of stage outputs when start_stage > 0."""
        if start_stage == 0:
            x = self.normalize(x)
        return self.backbone.pool(self.backbone.forward_features(x, start=start_stage))

    def forward(self, x: torch.Tensor, start_stage: int = 0) -> dict[str, torch.Tensor]:
        feats = self.features(x, start_stage).float().cpu().numpy()
        codes = self.hasher().encode(feats)
        return {"z": torch.from_numpy(codes.astype(np.float32))}

"""The hashing network: backbone -> attention -> pooling -> hash layer (+ optional classification layer).

The network takes uint8 RGB images (B, 3, S, S) and normalises them itself, so a checkpoint needs nothing
but its weights and config to encode new images. Codes are always sign(z) of the hash layer's output `z`
(every method's activation - tanh, hard tanh, straight-through sign - preserves the sign of z).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnhash.config import ModelConfig
from attnhash.errors import ConfigError
from attnhash.models.attention import create_attention
from attnhash.models.backbones import create_backbone


@dataclass
class NetworkSpec:
    """Everything needed to rebuild a trained hashing network without the method that trained it: the model
    config as the method resolved it (attention switched off by an ablation, EGA's CAM classes, ...) and the
    outputs of the classification layer. Saved in every checkpoint."""

    model: ModelConfig
    num_classes: int = 0  # outputs of the classification layer (0: none)

    def to_dict(self) -> dict:
        return {"kind": "deep", "model": dataclasses.asdict(self.model), "num_classes": self.num_classes}

    @classmethod
    def from_dict(cls, data: dict) -> "NetworkSpec":
        fields = {f.name for f in dataclasses.fields(ModelConfig)}
        unknown = set(data["model"]) - fields
        if unknown:
            raise ConfigError(f"network spec: unknown model key(s) {', '.join(sorted(unknown))}")
        return cls(model=ModelConfig(**data["model"]), num_classes=int(data.get("num_classes", 0)))

    def build(self, weights: str | None = None) -> "HashingNetwork":
        """The network; `weights` overrides the backbone's initial weights ("none" when a checkpoint will
        supply every weight)."""
        model = self.model if weights is None else dataclasses.replace(self.model, weights=weights)
        return build_network(model, self.num_classes)


class HashingNetwork(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        bits: int,
        attention: nn.Module | None = None,
        num_classes: int = 0,
        hidden: int = 0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.backbone = backbone
        self.attention = attention
        self.bits = bits
        dim = backbone.feature_dim
        width = getattr(attention, "out_channels", backbone.out_channels)
        if width != backbone.out_channels:  # an attention module with its own input convolution (DHIDA's A)
            if backbone.feature_dim != backbone.out_channels:
                raise ConfigError(
                    f"{type(backbone).__name__}: its pooling layers expect {backbone.out_channels} channels, "
                    f"so the attention module cannot change the width to {width} (leave its width unset)"
                )
            dim = width
        layers: list[nn.Module] = []
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        if hidden > 0:
            layers += [nn.Linear(dim, hidden), nn.ReLU(inplace=True)]
            dim_in = hidden
        else:
            dim_in = dim
        layers.append(nn.Linear(dim_in, bits))
        self.hash_layer = nn.Sequential(*layers)
        self.classifier = nn.Linear(dim, num_classes) if num_classes > 0 else None
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1) * 255.0, persistent=False)

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 (or 0..255 float) RGB batch -> the backbone's normalised input."""
        return (images.float() - self.mean) / self.std

    def forward(self, x: Tensor, start_stage: int = 0) -> dict[str, Tensor]:
        """x: uint8 images when start_stage == 0, else the output of backbone stage `start_stage - 1`.

        Returns a dict with `z` (hash layer output, B x bits), `features` (pooled, B x D), `fmap` (the feature
        map after attention), `logits` when the network has a classifier, and any auxiliary outputs of the
        attention module.
        """
        if start_stage == 0:
            x = self.normalize(x)
        fmap = self.backbone.forward_features(x, start=start_stage)
        out: dict[str, Tensor] = {}
        if self.attention is not None:
            result = self.attention(fmap)
            if isinstance(result, tuple):
                fmap, aux = result
                out.update(aux)
            else:
                fmap = result
        features = self.backbone.pool(fmap)
        out.update(fmap=fmap, features=features, z=self.hash_layer(features))
        if self.classifier is not None:
            out["logits"] = self.classifier(features)
        return out

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters outside the backbone (attention, hash and classification layers)."""
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.parameters() if id(p) not in backbone_ids]


def build_network(cfg: ModelConfig, num_classes: int = 0) -> HashingNetwork:
    """The hashing network of a model config, with a classification layer of `num_classes` outputs (0: none)."""
    block_attention = None
    attention = None
    if cfg.attention:
        if cfg.attention_placement == "blocks":
            if not cfg.backbone.startswith("resnet"):
                raise ConfigError(
                    f"model.attention_placement=blocks needs a ResNet backbone (got {cfg.backbone})"
                )
            args = dict(cfg.attention_args)

            def block_attention(channels: int) -> nn.Module:
                module = create_attention(cfg.attention, channels, **args)
                if getattr(module, "out_channels", channels) != channels:
                    raise ConfigError(f"model.attention_placement=blocks: attention '{cfg.attention}' must keep "
                                      f"the block's {channels} channels (leave its width unset)")
                return module

    kwargs = {"block_attention": block_attention} if block_attention is not None else {}
    if cfg.output_stride != 32:
        if not (cfg.backbone.startswith("resnet") or cfg.backbone.startswith("efficientnet")):
            raise ConfigError(f"model.output_stride={cfg.output_stride} is not available for {cfg.backbone}")
        kwargs["output_stride"] = cfg.output_stride
    backbone = create_backbone(cfg.backbone, weights=cfg.weights, **kwargs)
    if cfg.attention and cfg.attention_placement == "output":
        args = dict(cfg.attention_args)
        if args.get("width") and backbone.feature_dim != backbone.out_channels:
            # pooling with layers of its own (AlexNet's fc6) takes only the backbone's width
            args["width"] = backbone.out_channels
        attention = create_attention(cfg.attention, backbone.out_channels, **args)
    return HashingNetwork(
        backbone,
        bits=cfg.bits,
        attention=attention,
        num_classes=num_classes,
        hidden=cfg.hidden,
        dropout=cfg.dropout,
    )

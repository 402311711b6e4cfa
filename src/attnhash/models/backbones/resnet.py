"""ResNet18/34/50 in plain torch with torchvision's state-dict key names and shapes.

A file such as torchvision's `resnet18-f37072fd.pth` loads into these models unchanged. The
optional `block_attention` puts a module on the residual branch of every block where the SimAM reference
puts SimAM: right after conv2 and before bn2 (the reference wraps conv2 as (conv2, SimAM)), in a
BasicBlock and in a Bottleneck (there conv2 is the 3x3 convolution, so the module sees `planes`
channels). The module therefore attends the raw convolution output, and bn2 re-normalises what it
weighted.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from attnhash.errors import ConfigError
from attnhash.models.backbones.base import BACKBONES, Backbone, StageView, kaiming_init_

BlockAttention = Callable[[int], nn.Module]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (ResNet18/34)."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
        attention: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.attention = attention  # registered only when given; parameter-free ones add no keys

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        if self.attention is not None:
            out = self.attention(out)
        out = self.bn2(out)
        return self.relu(out + identity)

    def extra_repr(self) -> str:
        # in the structure the stage cache keys on, so a cache made with another placement is never reused
        return "attention after conv2" if self.attention is not None else ""


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, torchvision's v1.5), 1x1 expand by 4 (ResNet50)."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
        attention: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.attention = attention

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        if self.attention is not None:
            out = self.attention(out)
        out = self.relu(self.bn2(out))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)

    def extra_repr(self) -> str:
        return "attention after conv2" if self.attention is not None else ""


class ResNet(Backbone):
    """ResNet backbone; stages: stem (conv1, bn1, relu, maxpool), layer1..layer4."""

    stage_names = ("stem", "layer1", "layer2", "layer3", "layer4")
    head_prefixes = ("fc.",)

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        name: str,
        num_classes: int | None = None,
        block_attention: BlockAttention | None = None,
        zero_init_residual: bool = False,
        output_stride: int = 32,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ConfigError(f"{name}: output_stride must be 8, 16 or 32, got {output_stride}")
        self.name = name
        self.output_stride = output_stride
        self._block_attention = block_attention
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        # A smaller output stride keeps the last stages at a higher resolution (no weights change), so small
        # CPU-sized inputs still leave a spatial map for attention: 64 px -> 4x4 at stride 16.
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2 if output_stride > 8 else 1)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2 if output_stride > 16 else 1)
        width = 512 * block.expansion
        self.stage_channels = (64, 64 * block.expansion, 128 * block.expansion, 256 * block.expansion, width)
        self.out_channels = width
        self.feature_dim = width
        self.fc = nn.Linear(width, num_classes) if num_classes else None
        kaiming_init_(self)
        if zero_init_residual:
            # Each block starts as the identity: helps from-scratch training (Goyal et al. 2017).
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        mods = []
        for i in range(blocks):
            att = self._block_attention(planes) if self._block_attention else None  # conv2's output channels
            mods.append(block(self.inplanes, planes, stride if i == 0 else 1, downsample if i == 0 else None, att))
            self.inplanes = planes * block.expansion
        return nn.Sequential(*mods)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, output_stride={self.output_stride}"

    def _build_stages(self) -> list[nn.Module]:
        stem = StageView(self.conv1, self.bn1, self.relu, self.maxpool)
        return [stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def head(self) -> nn.Module | None:
        return self.fc

    def conv_bn_pairs(self) -> list[tuple[nn.Module, str, str]]:
        pairs: list[tuple[nn.Module, str, str]] = [(self, "conv1", "bn1")]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                pairs.append((block, "conv1", "bn1"))
                if block.attention is None:  # in-block attention sits between conv2 and bn2
                    pairs.append((block, "conv2", "bn2"))
                if isinstance(block, Bottleneck):
                    pairs.append((block, "conv3", "bn3"))
                if block.downsample is not None:
                    pairs.append((block.downsample, "0", "1"))
        return pairs


@BACKBONES.register("resnet18")
def resnet18(**kwargs) -> ResNet:
    """ResNet18: BasicBlock x (2, 2, 2, 2), 512-d features."""
    return ResNet(BasicBlock, (2, 2, 2, 2), "resnet18", **kwargs)


@BACKBONES.register("resnet34")
def resnet34(**kwargs) -> ResNet:
    """ResNet34: BasicBlock x (3, 4, 6, 3), 512-d features."""
    return ResNet(BasicBlock, (3, 4, 6, 3), "resnet34", **kwargs)


@BACKBONES.register("resnet50")
def resnet50(**kwargs) -> ResNet:
    """ResNet50 (v1.5): Bottleneck x (3, 4, 6, 3), 2048-d features."""
    return ResNet(Bottleneck, (3, 4, 6, 3), "resnet50", **kwargs)

"""AlexNet in plain torch with torchvision's state-dict keys (features.{0,3,6,8,10}, classifier.{1,4,6}).

Deep-hashing papers use its FC7 activations as the image feature, so `pool` runs the adaptive 6x6
average pool, fc6, ReLU, dropout, fc7, ReLU and gives 4096-d features.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from attnhash.models.backbones.base import BACKBONES, Backbone, StageView


class AlexNet(Backbone):
    """AlexNet (torchvision's one-weird-trick variant); stages conv1..conv5, pool = FC7 features."""

    name = "alexnet"
    stage_names = ("conv1", "conv2", "conv3", "conv4", "conv5")
    stage_channels = (64, 192, 384, 256, 256)
    out_channels = 256
    feature_dim = 4096
    # conv1 (k11 s4 p2) and three 3x3/s2 max-pools need 63 px to leave a 1x1 map.
    min_input_size = 63
    head_prefixes = ("classifier.6.",)

    def __init__(self, num_classes: int | None = None, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        layers: list[nn.Module] = [
            # Index 0 is torchvision's dropout before fc6; FC7 features skip it (kept for the key indices).
            nn.Identity(),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
        ]
        if num_classes:
            layers.append(nn.Linear(4096, num_classes))
        self.classifier = nn.Sequential(*layers)

    def _build_stages(self) -> list[nn.Module]:
        f = self.features
        return [StageView(f[0], f[1], f[2]), StageView(f[3], f[4], f[5]), StageView(f[6], f[7]),
                StageView(f[8], f[9]), StageView(f[10], f[11], f[12])]

    def pool_modules(self) -> list[nn.Module]:
        return [self.classifier[i] for i in range(1, 6)]

    def pool(self, fmap: Tensor) -> Tensor:
        """Adaptive 6x6 average pool, flatten, fc6, ReLU, dropout, fc7, ReLU -> (B, 4096)."""
        x = F.adaptive_avg_pool2d(fmap, (6, 6)).flatten(1)
        for i in range(1, 6):
            x = self.classifier[i](x)
        return x

    def head(self) -> nn.Module | None:
        return self.classifier[6] if len(self.classifier) > 6 else None


@BACKBONES.register("alexnet")
def alexnet(**kwargs) -> AlexNet:
    """AlexNet with 4096-d FC7 features."""
    return AlexNet(**kwargs)

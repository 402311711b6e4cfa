"""CAM attention branch of EGA, "explicitly guided attention" (Zhu, master's thesis 2020; seed 003).

A class activation map branch (Zhou et al., "Learning Deep Features for Discriminative Localization",
CVPR 2016) on the last feature map F (B, C, h, w):

    M = conv1x1(F)                       (B, n_classes, h, w) class maps
    logits = mean_hw M                   global average pooling -> class logits (aux output "cam_logits")
    p = softmax(logits) (single-label) or sigmoid(logits) (multi-label)
    A = ReLU(sum_c p_c M_c), divided by its per-image maximum -> [0, 1]    (B, h, w)
    F' = F * (1 + A)                     in stage 2 (`stage` buffer = 2) when `weighting` is on

Stage 1 of EGA trains the branch with classification so its maps mean something ("explicitly guided");
stage 2 freezes it and uses A as spatial weighting of the hashing branch. A enters F' detached: the map is
guided by classification only, never reshaped by the hashing loss (choice; the abstract says the map is
"used as auxiliary spatial information").

`stage` and `multi_label` are buffers, saved with the checkpoint, so an encoder rebuilt from a run
applies exactly the weighting the run was trained with. `last_map` holds A of the last forward (detached)
for `attnhash explain`, in both stages and with `weighting` off (the ablation).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnhash.models.attention.base import ATTENTION


class CAMAttention(nn.Module):
    def __init__(self, channels: int, num_classes: int, weighting: bool = True):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"the CAM branch needs at least one class, got {num_classes}")
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.weighting = weighting
        self.register_buffer("stage", torch.tensor(2, dtype=torch.long))
        self.register_buffer("multi_label", torch.tensor(False))
        self.last_map: Tensor | None = None

    def attention_map(self, class_maps: Tensor, logits: Tensor) -> Tensor:
        """Class maps weighted by the predicted class probabilities, ReLU, per-image max -> [0, 1]."""
        probs = torch.sigmoid(logits) if bool(self.multi_label) else torch.softmax(logits, dim=1)
        a = torch.relu(torch.einsum("bc,bchw->bhw", probs, class_maps))
        return a / a.amax(dim=(1, 2), keepdim=True).clamp_min(1e-6)

    def forward(self, fmap: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        class_maps = self.classifier(fmap)
        logits = class_maps.mean(dim=(2, 3))
        a = self.attention_map(class_maps, logits).detach()
        self.last_map = a
        if self.weighting and int(self.stage) == 2:
            fmap = fmap * (1.0 + a.unsqueeze(1).to(fmap.dtype))
        return fmap, {"cam_logits": logits}

    def extra_repr(self) -> str:
        return f"weighting={self.weighting}, stage={int(self.stage)}, multi_label={bool(self.multi_label)}"


@ATTENTION.register("cam")
def cam(channels: int, num_classes: int, weighting: bool = True) -> CAMAttention:
    """EGA's CAM branch; `num_classes` is set by the ega method from the dataset."""
    return CAMAttention(channels, num_classes, weighting=weighting)

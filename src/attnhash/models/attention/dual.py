"""Dual attention: DANet's (Fu et al., CVPR 2019) and DHIDA's improved dual attention (IDA, seed 002).

Both modules run a position attention and a channel attention on the feature map A (B, C, H, W), N = H*W:

- position (seed 002 section 3.3.1, DANet's PAM): 1x1 convolutions give B and C' (C/8 channels, as DANet)
  and D (C channels); M = B^T C' (N x N, M_ij = <b_i, c'_j>); P = softmax over j; E_p = alpha * (D P^T) + A.
- channel (section 3.3.2, DANet's CAM): A1 = A as (C, N); Nmat = A1 A1^T (C x C); X = softmax over j;
  E_c = beta * (X A1) + A.

They differ only in what enters the softmax:

- `danet`: softmax(M) and softmax(max_row(Nmat) - Nmat) (DANet's reference). The row maximum is constant
  along the softmax axis, so it cancels: DANet's channel map is softmax(-Nmat).
- `ida` (eqs. 3 and 6): M~ = (max(M) + mean(M))/2 - M, and the same for Nmat, with max and mean taken
  over each COLUMN (over i, for every j) while the softmax runs along each row (over j). A statistic
  taken along the softmax axis would cancel (softmax is shift-invariant per row) and IDA would collapse
  to DANet's softmax(-M) / softmax(-Nmat); per column it is a bias per key position (channel) that
  favours keys with a high maximum and mean response, which is what the paper means by using "the
  average value and maximum value of the column" to weigh the salient and global features.
  Eq. 3 is applied literally to the position branch too, so its map is softmax(stat - M) where DANet's
  is softmax(M); the sign of M alone is immaterial (the learned key convolution can flip it), the
  column statistic is what differs.

alpha and beta are learnable scalars initialised to 0 (paper), and the two branch outputs are fused by
their mean, (E_p + E_c) / 2 (choice: the paper says "sum"; the sum is twice this, a constant factor the
hash layer absorbs, and the mean makes the module the exact identity at initialisation, so pretrained
features reach the hash layer unchanged). `fusion="sum"` gives the literal sum.

The paper feeds "the high-dimensional features" through a convolution layer to get A (section 3.3.1).
`width` adds that layer, a 1x1 convolution from the backbone's channels to `width` followed by BN and
ReLU as DANet's reference does before its attention, so A has `width` channels and the module's output
too; without it (width=None) A is the backbone's last feature map itself and the module is the exact
identity at initialisation. The DHIDA recipe sets width 512, the C of the paper's ResNet18; on
EfficientNet-Lite0 (1280 channels) that also makes the C x C channel attention 6x cheaper. DANet's extra
3x3 convolutions before and after each branch (segmentation head) are not part of either module.

`last_map` (B, h, w): the position attention each location receives, averaged over the query locations
(the column mean of P), from the last forward, detached.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from attnhash.models.attention.base import ATTENTION


def column_statistic(energy: Tensor) -> Tensor:
    """(max + mean)/2 of every column of a batch of square energy matrices (B, n, n) -> (B, 1, n)."""
    return 0.5 * (energy.amax(dim=-2, keepdim=True) + energy.mean(dim=-2, keepdim=True))


def ida_attention(energy: Tensor) -> Tensor:
    """IDA's attention map (eqs. 3-4 and 6-7): softmax over each row of (column max + column mean)/2 - energy."""
    return torch.softmax(column_statistic(energy) - energy, dim=-1)


def danet_position_attention(energy: Tensor) -> Tensor:
    """DANet's position attention: softmax(M) over each row (the keys)."""
    return torch.softmax(energy, dim=-1)


def danet_channel_attention(energy: Tensor) -> Tensor:
    """DANet's channel attention: softmax(max_row(Nmat) - Nmat) over each row (equal to softmax(-Nmat))."""
    return torch.softmax(energy.amax(dim=-1, keepdim=True) - energy, dim=-1)


def ida_attention_from(left: Tensor, right: Tensor, symmetric: bool = False) -> Tensor:
    """ida_attention(E) for E = left @ right^T (left, right: (B, n, d)), without extra passes over E.

    The same map as `ida_attention`, computed for CPU economy: the (n x n) energy (C x C per image on
    the channel branch, C = 1280 on EfficientNet) is memory bound, so every full pass over it costs. The
    column mean is <mean_i left_i, right_j> and the column max is <left_i*(j), right_j> with i*(j) the
    arg-max found without gradient, so both statistics and their gradients cost O(n d), and the energy is
    computed already negated. `symmetric` (left is right) finds the arg-max along rows, a faster scan.
    """
    neg = torch.bmm(left, -right.transpose(1, 2))  # -E
    d = left.shape[-1]
    with torch.no_grad():
        arg = neg.argmin(dim=-1 if symmetric else -2)  # (B, n): the row of each column's maximum
    best = torch.gather(left, 1, arg.unsqueeze(-1).expand(-1, -1, d))  # (B, n, d)
    col_max = (best * right).sum(dim=-1)  # (B, n)
    col_mean = torch.bmm(left.mean(dim=1, keepdim=True), right.transpose(1, 2)).squeeze(1)  # (B, n)
    stat = (0.5 * (col_max + col_mean)).unsqueeze(1)
    return torch.softmax(neg.add_(stat), dim=-1)  # in place: bmm does not keep its output for backward


class DualAttention(nn.Module):
    """Position + channel attention with learnable scales (init 0); `improved` selects IDA over DANet."""

    def __init__(self, channels: int, reduction: int = 8, improved: bool = True, fusion: str = "mean",
                 width: int | None = None):
        super().__init__()
        if channels <= 0 or reduction <= 0 or (width is not None and width <= 0):
            raise ValueError(f"channels, reduction and width must be positive, got {channels}, {reduction}, {width}")
        if fusion not in ("mean", "sum"):
            raise ValueError(f"fusion must be 'mean' or 'sum', got {fusion!r}")
        # the paper's convolution layer making A, as DANet's (conv, BN, ReLU): the BN centres the backbone's
        # all-positive features, without which a fresh projection leaves DHIDA's outputs near their zero saddle
        self.input = nn.Sequential(
            nn.Conv2d(channels, width, kernel_size=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        ) if width is not None else None
        channels = width or channels
        self.out_channels = channels
        inner = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, inner, kernel_size=1)  # B of the paper
        self.key = nn.Conv2d(channels, inner, kernel_size=1)  # C'
        self.value = nn.Conv2d(channels, channels, kernel_size=1)  # D
        self.alpha = nn.Parameter(torch.zeros(1))  # position scale
        self.beta = nn.Parameter(torch.zeros(1))  # channel scale
        self.improved = improved
        self.fusion = fusion
        self.last_map: Tensor | None = None

    def position_attention(self, q: Tensor, k: Tensor) -> Tensor:
        """(B, N, N) map from query/key features (B, C', N); rows = query locations, softmax over keys."""
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        if self.improved:
            return ida_attention_from(q, k)
        return danet_position_attention(torch.bmm(q, k.transpose(1, 2)))

    def channel_attention(self, a1: Tensor) -> Tensor:
        """(B, C, C) map from the features (B, C, N); softmax over each row."""
        if self.improved:
            return ida_attention_from(a1, a1, symmetric=True)
        # DANet's softmax(max_row(Nmat) - Nmat) is softmax(-Nmat): the row max cancels, skip that pass
        return torch.softmax(torch.bmm(a1, -a1.transpose(1, 2)), dim=-1)

    def channel_output(self, a1: Tensor) -> Tensor:
        """X A1 (B, C, N): the channel attention applied to the features (B, C, N), one image at a time.

        Why one at a time: the C x C map is memory bound (C = 1280 on EfficientNet: 6.5 MB an image, 420 MB
        for a batch of 64), so one image's map stays in cache, and under autograd each image is checkpointed
        (its map recomputed in backward instead of kept). The numbers are the same bit for bit; a training
        step's channel branch runs 1.4x faster on one CPU thread (B 64, C 1280, N 16) and keeps no maps, and
        without autograd (encoding) 2.4x / 2.1x at N 16 / 36 (benchmarks/bench_channel_attention.py).
        """
        if not (torch.is_grad_enabled() and a1.requires_grad):
            return torch.cat([self._channel_output_one(x) for x in a1.split(1)])
        return torch.cat([checkpoint(self._channel_output_one, x, use_reentrant=False) for x in a1.split(1)])

    def _channel_output_one(self, a1: Tensor) -> Tensor:
        return torch.bmm(self.channel_attention(a1), a1)

    def forward(self, a: Tensor) -> Tensor:
        if self.input is not None:
            a = self.input(a)
        b, c, h, w = a.shape
        # reshape, not view: the trainer runs in channels_last on CPU
        q = self.query(a).reshape(b, -1, h * w)
        k = self.key(a).reshape(b, -1, h * w)
        v = self.value(a).reshape(b, c, h * w)
        p = self.position_attention(q, k)
        self.last_map = p.detach().mean(dim=1).reshape(b, h, w).float()
        position = torch.bmm(v, p.transpose(1, 2)).reshape(b, c, h, w)

        channel = self.channel_output(a.reshape(b, c, h * w)).reshape(b, c, h, w)

        fused = self.alpha * position + self.beta * channel + 2 * a  # E_p + E_c
        return 0.5 * fused if self.fusion == "mean" else fused

    def extra_repr(self) -> str:
        return f"{'IDA' if self.improved else 'DANet'}, channels={self.out_channels}, fusion={self.fusion}"


@ATTENTION.register("ida")
def ida(channels: int, reduction: int = 8, fusion: str = "mean", width: int | None = None) -> DualAttention:
    """DHIDA's improved dual attention (column max+mean transform before both softmaxes)."""
    return DualAttention(channels, reduction=reduction, improved=True, fusion=fusion, width=width)


@ATTENTION.register("danet")
def danet(channels: int, reduction: int = 8, fusion: str = "mean", width: int | None = None) -> DualAttention:
    """Plain DANet dual attention (the DHIDA-D row of seed 002 Table 4)."""
    return DualAttention(channels, reduction=reduction, improved=False, fusion=fusion, width=width)

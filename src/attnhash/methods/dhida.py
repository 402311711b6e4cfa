"""DHIDA: Deep Hash with Improved Dual Attention (Information 12(7):285, 2021; seed 002).

Network (paper, Fig. 1): backbone -> IDA module on the last feature map (`ida`, see
attnhash/models/attention/dual.py) -> pooling -> hash layer fch, u = W^T psi(x) + b (eq. 14, linear).

The paper's IDA starts with a convolution layer making A (512 channels for its ResNet18: `attention_args.width`).
The recipe leaves it out (width: null, IDA on the backbone's own map; choice, issue 16): on a pretrained
backbone it is a fresh 1x1 conv + BN + ReLU between the pretrained features and the hash layer, and it makes
DHIDA worse the longer the code. Measured on the fmnist grid (benchmarks/results/dhida_input/, probe.md):
mAP@ALL 0.739 / 0.661 / 0.634 at 16 / 32 / 64 bits with it, 0.739 / 0.758 / 0.756 without. The probe shows
why: the features the hash layer reads collapse onto fewer directions as K grows (effective rank 8.5 / 6.9 /
4.6) and lose their class structure (cosine mAP of the features 0.92 / 0.77 / 0.67), while without the layer
they keep more as K grows (rank 6.9 / 9.5 / 11.1, cosine mAP 0.91 / 0.91 / 0.87). The pairwise logits are sums
over the K bits, so the gradient the loss sends into that freshly initialised layer grows with K; our reading
of the probe is that this drives its ReLU units onto a few directions, which the pretrained map (no fresh
layer in between) does not undergo. The attention's own scalars stay near 0 (alpha ~ 1e-5), so the module is
close to the identity either way: the damage is the layer's, not the loss's (the audit of issue 16 saw DPSH
with the same layer added fall from 0.743 to 0.328 at 64 bits). `--set model.attention_args.width=512` restores the paper's layer.

The piecewise function f(u) (eq. 1) is a hard tanh: 1 above 1, u on [-1, 1], -1 below -1; the code is
h = sign(f(u)) (eq. 2, sign(0) = +1).

Where f acts (decision): sign(f(u)) = sign(u) for every u, so f applied only when reading the code
could not change a single code, yet Table 4 credits f(u) with +4.0 mAP (DHIDA-A -> DHIDA-I). f must
therefore shape training: the loss is computed on v = f(u), the network output clipped at the binary
threshold. Entries past +-1 count exactly as +-1 (no quantisation error left, and the loss stops pushing
them further out), entries inside stay linear. The encoder still takes sign(z), which is sign(f(z)).
The `piecewise` ablation computes the loss on u itself.

Loss (eq. 13):  L = L1 + gamma * L2,
    L1 = sum over pairs of log(1 + exp(theta_ij)) - s_ij theta_ij            (eq. 11, softplus form)
    L2 = sum over bits n of (mean over the batch of v^(n))^2                 (eq. 12, bit balance)
- theta_ij = scale * <v_i, v_j>. Eq. 11 writes <u_i, u_j>, but the derivative the paper trains with
  (eq. 16) has a_ij = sigma(1/2 u_i^T u_j) and the factors 1/2 in front, which is the derivative of eq. 11
  with theta = <u_i, u_j>/2 (DPSH's likelihood, which the paper builds on). Default scale = 0.5, so eq. 16
  is the true gradient; scale = 1.0 is eq. 11 as printed.
- Pairs: each batch against a memory bank of the (clipped) outputs of the whole training set, as DPSH,
  since eq. 11 sums over all labelled pairs of S (choice).
- L1 is averaged over pairs (all attnhash pairwise losses are means); L2 is eq. 12 as printed (a sum over
  bits of squared batch means), with the paper's gamma = 0.1.

Training (section 4.2): RMSProp, lr 5e-5, batch 128, weight decay 1e-5, ResNet18 pretrained, 224 px
(configs/methods/dhida.yaml).

Ablations (Table 4: AlexNet; +f(u); ResNet18; +DANet; +IDA; the backbones are `--backbone`):
`attention` removes the dual attention, `ida` replaces IDA by plain DANet attention, `piecewise` trains
without f(u).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from attnhash.config import ModelConfig
from attnhash.errors import ConfigError
from attnhash.losses.pairwise import MemoryBank, label_similarity, pairwise_likelihood
from attnhash.methods.base import Method, TrainContext, register_method


@dataclass
class DHIDAParams:
    gamma: float = 0.1  # weight of the bit-balance loss L2 (paper)
    scale: float = 0.5  # theta_ij = scale * <v_i, v_j>; 0.5 makes eq. 16 the gradient, 1.0 is eq. 11 as printed


def piecewise(u: Tensor) -> Tensor:
    """f(u) of eq. 1: 1 if u > 1, u if -1 <= u <= 1, -1 if u < -1 (a hard tanh)."""
    return F.hardtanh(u, -1.0, 1.0)


def balance_loss(v: Tensor) -> Tensor:
    """L2 of eq. 12: sum over bits of the squared mean of that bit over the batch."""
    return v.mean(dim=0).pow(2).sum()


@register_method
class DHIDA(Method):
    name = "dhida"
    paper = "Deep Hash with Improved Dual Attention for Image Retrieval. Information 12(7):285, 2021"
    summary = ("improved dual attention (column max+mean) on the last feature map; loss on the hard-tanh "
               "f(u): pairwise logistic likelihood + 0.1 bit balance")
    supervised = True
    Params = DHIDAParams
    ablations = {
        "attention": "no dual attention module",
        "ida": "plain DANet dual attention instead of IDA (no column max+mean transform)",
        "piecewise": "no piecewise function f(u): the loss sees the raw hash-layer output",
    }

    def __init__(self, params, bits, num_classes, num_train, ablate=()):
        super().__init__(params if params is not None else DHIDAParams(), bits, num_classes, num_train, ablate)
        if self.params.scale <= 0:
            raise ConfigError(f"dhida: scale must be positive, got {self.params.scale}")
        self.bank: MemoryBank | None = None

    def adjust_model_config(self, cfg: ModelConfig) -> ModelConfig:
        if "attention" in self.ablate:
            cfg.attention = None
        elif "ida" in self.ablate:
            if cfg.attention != "ida":
                raise ConfigError(f"dhida: the 'ida' ablation replaces model.attention=ida by danet, "
                                  f"but this run uses model.attention={cfg.attention!r}")
            cfg.attention = "danet"
        return cfg

    def setup(self, ctx: TrainContext) -> None:
        self.bank = ctx.memory_bank(self.bits)

    def loss(self, out, batch, ctx):
        u = out["z"]
        v = u if "piecewise" in self.ablate else piecewise(u)
        labels = batch["label"]
        if self.bank is None:  # loss used outside the trainer: pairs within the batch
            others, s, mask = v, label_similarity(labels, labels), None
        else:
            self.bank.update(batch["index"], v)
            others, s, mask = self.bank.pairs(labels)
        l1 = pairwise_likelihood(v, others, s, scale=self.params.scale, mask=mask)
        l2 = balance_loss(v)
        loss = l1 + self.params.gamma * l2
        return loss, {"likelihood": float(l1.detach()), "balance": float(l2.detach())}

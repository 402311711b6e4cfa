"""SSDH: Semantic Structure-based Unsupervised Deep Hashing (Yang, Deng, Liu, Liu, Tao, IJCAI 2018).

Unsupervised: labels are never read (the trainer does not even put them in the batches).

1. Before training (`setup`), one pass over the training set with the network in eval mode gives the
   pooled features of its own pretrained backbone (the paper uses VGG-F fc7; here the configured backbone,
   e.g. EfficientNet-Lite0's pooled features or AlexNet's fc7). Their cosine distances give the semantic
   structure S in {-1, 0, +1} (attnhash.methods.similarity: histogram peak, two half Gaussians mirrored
   about it, thresholds m_l - alpha s_l and m_r + beta s_r; alpha = beta = 2 as in SSDH's code).
2. Loss (paper eq. 5): h = tanh(z),  L = mean over known pairs (S_ij != 0) of (<h_i, h_j>/K - S_ij)^2.
   Unknown pairs contribute nothing. The paper sums |S_ij| (...)^2; the mean over known pairs only divides
   by their number (constant per batch), so the recipe's learning rate absorbs it.

Pairs (choice, `pairs`): "batch" (default) compares the items of a mini-batch with each other, as SSDH's
code does with S[batch, batch]; "bank" compares each batch with the relaxed codes of the whole training set
kept in a memory bank (DPSH-style, ~N/B times more known pairs per step; better on short CPU runs).

SSDH has no attention and no other parts to switch off, so it has no ablations. UHGA (uhga.py) builds on
it: the same S, and `uhga --set method.params.loss=squared` is the paper's "SSDH+GA" row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnhash.losses.similarity import SimilarityPairs, build_similarity, ssdh_squared_loss
from attnhash.methods.base import Method, TrainContext, register_method


@dataclass
class SSDHParams:
    alpha: float = 2.0  # similar if d < peak - alpha * left std
    beta: float = 2.0  # dissimilar if d > peak + beta * right std
    bins: int = 100  # histogram bins over the observed distances (SSDH: 100)
    pairs: str = "batch"  # batch | bank


@register_method
class SSDH(Method):
    name = "ssdh"
    paper = "Yang, Deng, Liu, Liu, Tao. Semantic Structure-based Unsupervised Deep Hashing. IJCAI 2018"
    summary = "unsupervised: S from cosine distances of pretrained features, squared loss on <h_i,h_j>/K"
    supervised = False
    Params = SSDHParams

    def __init__(self, params, bits, num_classes, num_train, ablate=()):
        super().__init__(params or SSDHParams(), bits, num_classes, num_train, ablate)
        self.pairs: SimilarityPairs | None = None

    def setup(self, ctx: TrainContext) -> None:
        p = self.params
        s = build_similarity(*ctx.collect_outputs("features"), p.alpha, p.beta, p.bins, ctx.log,
                             backbone_weights=ctx.network.backbone.weights_source)
        self.pairs = SimilarityPairs(s, self.bits, p.pairs, ctx.gather())

    def loss(self, out, batch, ctx):
        h = torch.tanh(out["z"])
        other, s, mask = self.pairs.targets(batch["index"], h)
        loss = ssdh_squared_loss(h, other, s, mask)
        return loss, {"known_pairs": float(mask.mean())}

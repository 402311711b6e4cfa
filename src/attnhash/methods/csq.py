"""CSQ: Yuan, Wang, Mei, Jiang, Yan, Tian, Feng, "Central Similarity Quantization for Efficient Image and
Video Retrieval", CVPR 2020.

Every class c gets a hash centre C_c in {-1, +1}^K, far from the others in Hamming distance:
  - K a power of two and C <= 2K: rows of a Hadamard matrix H_K and of -H_K. Any two of these are exactly
    K/2 apart (a row and its own negation K apart). Which rows (`hadamard_rows`):
      "first": the first C rows of [H_K; -H_K] (the paper's construction). Entry (i, j) of Sylvester's H_K
        is (-1)^popcount(i & j), so rows i < 16 see only the low 4 bits of the column index j: 10 classes
        get 16 distinct bit columns at any K >= 16, each repeated K/16 times. A 64-bit code then carries
        16 bits of information, and mAP is flat in K (0.731-0.739 at 16-64 bits on the supervised grid).
        The all-ones first column is also a bit that is +1 in every centre.
      "random": C distinct rows drawn (seeded by `centre_seed`) from the K rows of H_K (from the 2K rows of
        [H_K; -H_K] when C > K). Pairs stay exactly K/2 apart, and the columns take 2^rank distinct
        values, rank being that of the chosen row indices as vectors over GF(2): every bit is used as soon
        as they span it (10 random rows of 64 do in almost every draw).
    The default stays "first": on the fmnist grid (benchmarks/results/csq_centres, seed 0) random rows gave
    0.732 / 0.743 / 0.725 mAP@ALL at 16 / 32 / 64 bits against 0.721 / 0.732 / 0.731, using all 64 bit columns
    instead of 16 yet not better at 64 bits: no win across the code lengths, within about one seed's spread.
  - otherwise (48 bits, or more classes than 2K): centres drawn bit by bit from Bernoulli(1/2), whose
    pairwise distance is K/2 in expectation. Plain draws can put two centres close (48 bits, 100 classes:
    the closest pair is below K/4 in 42% of draws), so each centre is the best of 1,024 Bernoulli
    candidates (the one farthest from the centres so far), redrawn while closer than
    ceil(min_distance * K) to any of them (K/4 by default; an error if impossible). Choice: the paper stops
    at the expectation; best-candidate sampling keeps its distribution family and pushes the closest pair
    up (48 bits, seed 0: 23 bits apart for 10 classes, 18 for 100, vs ~16 and ~12 on average for plain
    draws). Seeded (`centre_seed`): reproducible.
  - multi-label items: the centroid of their labels' centres, binarised; a tie (0) takes the bit of one
    fixed random +-1 vector (the paper breaks ties at random; fixed, as the authors' code, so an item's
    centre does not change between epochs).

Loss (the paper's central similarity + quantisation) on h = tanh(z), averaged over items and bits:
    L_C = BCE((h + 1)/2, (C + 1)/2)      [(tanh(z) + 1)/2 = sigmoid(2z): computed from the logits 2z]
    L_Q = log cosh(|h| - 1)              (the paper's smooth quantisation term; ~ (|h| - 1)^2 / 2)
    L   = L_C + lambda * L_Q,  lambda = 1e-4.
Items without any label (possible in multi-label data) have no centre and do not count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from attnhash.errors import ConfigError
from attnhash.methods.base import Method, TrainContext, register_method

DRAW_BATCH = 1024  # candidate centres drawn at once for each new centre
DRAW_ROUNDS = 16  # fresh batches per centre before giving up


@dataclass
class CSQParams:
    lam: float = 1e-4  # lambda: weight of the quantisation term
    min_distance: float = 0.25  # floor on the pairwise distance of random centres, as a fraction of K
    centre_seed: int = 0  # seed of the random centres (and random Hadamard rows) and of the tie-break vector
    hadamard_rows: str = "first"  # first (the paper's) | random: which rows of [H_K; -H_K] are the centres


def hadamard(k: int) -> Tensor:
    """Sylvester's Hadamard matrix H_k (k a power of two): +-1 entries, H H^T = k I."""
    if k < 1 or k & (k - 1):
        raise ValueError(f"a Sylvester Hadamard matrix needs a power of two, got {k}")
    h = torch.ones(1, 1)
    while h.shape[0] < k:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def random_centres(num: int, bits: int, floor: int, seed: int = 0) -> Tensor:
    """`num` Bernoulli(1/2) centres in {-1, +1}^bits, every pair at least `floor` bits apart.

    Centres are placed one at a time: DRAW_BATCH candidates are drawn and the one farthest (in its
    minimum distance) from the centres so far is kept (best-candidate sampling); if even that one is
    closer than `floor`, a fresh batch is drawn, up to DRAW_ROUNDS times. (NumPy: these small products
    run on one thread, where torch's thread pool only adds overhead.)
    """
    rng = np.random.default_rng(seed)
    centres = np.empty((0, bits), dtype=np.float32)
    for _ in range(num):
        for _ in range(DRAW_ROUNDS):
            cand = rng.integers(0, 2, size=(DRAW_BATCH, bits)).astype(np.float32) * 2 - 1
            if len(centres) == 0:
                centres = cand[:1]
                break
            nearest = ((bits - cand @ centres.T) / 2).min(axis=1)  # distance to the closest centre
            best = int(np.argmax(nearest))
            if nearest[best] >= floor:
                centres = np.concatenate([centres, cand[best : best + 1]])
                break
        else:
            raise ConfigError(
                f"csq: cannot place {num} hash centres of {bits} bits at least {floor} bits apart; use more "
                f"bits or lower method.params.min_distance"
            )
    return torch.from_numpy(centres)


HADAMARD_ROWS = ("first", "random")


def hash_centres(num_classes: int, bits: int, min_distance: float = 0.25, seed: int = 0,
                 rows: str = "first") -> Tensor:
    """The C x K centres of CSQ (Hadamard when K is a power of two and C <= 2K, else random): the first C
    rows of [H; -H] (rows="first") or C distinct seeded random rows of H (of [H; -H] when C > K)."""
    if rows not in HADAMARD_ROWS:
        raise ConfigError(f"csq: hadamard_rows must be one of {', '.join(HADAMARD_ROWS)}, got {rows!r}")
    if num_classes <= 2 * bits and bits & (bits - 1) == 0:
        h = hadamard(bits)
        both = torch.cat([h, -h])
        if rows == "first":
            return both[:num_classes].clone()
        pool = bits if num_classes <= bits else 2 * bits
        chosen = np.random.default_rng(seed).choice(pool, size=num_classes, replace=False)
        return both[torch.from_numpy(np.sort(chosen))].clone()
    return random_centres(num_classes, bits, math.ceil(min_distance * bits), seed)


def label_centres(labels: Tensor, centres: Tensor, tie: Tensor) -> Tensor:
    """Per item: sign of the sum (= centroid) of its labels' centres, ties taking the bits of `tie`.

    A single-label item gets its class centre exactly. Rows without labels come out as `tie`; the loss
    leaves them out.
    """
    total = labels @ centres
    return torch.where(total > 0, 1.0, torch.where(total < 0, -1.0, tie.expand_as(total)))


def central_similarity_loss(z: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean BCE of (tanh(z) + 1)/2 against the centre bits (targets + 1)/2, from the logits 2z (stable)."""
    bce = F.binary_cross_entropy_with_logits(2.0 * z, (targets + 1.0) / 2.0, reduction="none").mean(dim=1)
    if weight is None:
        return bce.mean()
    return (bce * weight).sum() / weight.sum().clamp_min(1.0)


def csq_quantization(h: Tensor) -> Tensor:
    """Mean of log cosh(|h| - 1) (CSQ's smooth quantisation term)."""
    x = h.abs() - 1.0
    # log cosh x = |x| + log(1 + e^{-2|x|}) - log 2, without overflow
    return (x.abs() + F.softplus(-2.0 * x.abs()) - math.log(2.0)).mean()


@register_method
class CSQ(Method):
    name = "csq"
    paper = "Yuan et al. Central Similarity Quantization for Efficient Image and Video Retrieval. CVPR 2020"
    summary = "hash centres (Hadamard or separated random), BCE of tanh codes to their centre + quantisation"
    supervised = True
    Params = CSQParams

    def __init__(self, params, bits, num_classes, num_train, ablate=()):
        super().__init__(params or CSQParams(), bits, num_classes, num_train, ablate)
        p = self.params
        if not 0 <= p.min_distance <= 0.5:
            raise ConfigError(f"csq: min_distance is a fraction of the bits in [0, 0.5], got {p.min_distance}")
        self.register_buffer("centres", hash_centres(num_classes, bits, p.min_distance, p.centre_seed,
                                                     p.hadamard_rows))
        tie = torch.randint(0, 2, (bits,), generator=torch.Generator().manual_seed(p.centre_seed + 1))
        self.register_buffer("tie", tie.float() * 2 - 1)

    def setup(self, ctx: TrainContext) -> None:
        c = self.centres
        dist = (self.bits - c @ c.t()) / 2
        off = dist[~torch.eye(len(c), dtype=torch.bool, device=c.device)]
        closest = int(off.min()) if len(off) else self.bits
        columns = len(torch.unique(c.t(), dim=0))
        ctx.log(f"csq: {len(c)} hash centres of {self.bits} bits, closest pair {closest} bits apart, "
                f"{columns} distinct bit columns")

    def loss(self, out, batch, ctx):
        z = out["z"]
        labels = batch["label"]
        targets = label_centres(labels, self.centres, self.tie)
        has_label = (labels.sum(dim=1) > 0).float()
        centre = central_similarity_loss(z, targets, has_label)
        quant = csq_quantization(torch.tanh(z))
        loss = centre + self.params.lam * quant
        return loss, {"centre": float(centre.detach()), "quantization": float(quant.detach())}

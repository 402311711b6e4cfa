"""The semantic structure of SSDH: a similarity matrix S from the cosine distances of pretrained features.

SSDH (Yang, Deng, Liu, Liu, Tao, "Semantic Structure-based Unsupervised Deep Hashing", IJCAI 2018) observes
that the cosine distances of all pairs of deep features have a histogram with one peak whose two sides look
like two half Gaussians. Each side is mirrored about the peak to estimate its spread, and pairs far in the
tails are labelled:

    p    = the centre of the most populated histogram bin (the peak),
    s_l  = sqrt(mean over d <= p of (d - p)^2)   (std of the left side mirrored about p; its mean is p = m_l)
    s_r  = sqrt(mean over d >  p of (d - p)^2)   (std of the right side mirrored about p; m_r = p)
    d_l  = m_l - alpha * s_l,   d_r = m_r + beta * s_r
    S_ij = +1 if d_ij < d_l (similar),  -1 if d_ij > d_r (dissimilar),  0 otherwise (unknown, not trained on).

SSDH's defaults alpha = beta = 2 are kept. UHGA (seed 001, eq. 2-3) builds its S the same way.

Memory: S is held dense as int8, N^2 bytes (5,000 training items: 25 MB; 20,000: 400 MB). Distances are
never stored: they are computed in row blocks of at most `block_bytes` (64 MiB of float32) twice, once to
build a fine histogram with per-bin sums of d and d^2 (exact moments for the two sides, up to the one fine
bin that holds the peak) and once to threshold. Working memory is therefore S plus one block. N above
`MAX_ITEMS` (65,536: a 4 GiB S) is refused with a ConfigError; use data.train_limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from attnhash.errors import ConfigError
from attnhash.losses.pairwise import pairwise_likelihood

MAX_ITEMS = 65_536  # S is N x N int8: 4 GiB at this size
FINE_BINS = 16_384  # resolution of the first-pass histogram on [0, 2]: bin width 1.2e-4


@dataclass
class SimilarityStats:
    """What the construction found, for the log and for tests."""

    num_items: int
    peak: float
    left_std: float
    right_std: float
    low: float  # d_l: pairs closer than this are similar
    high: float  # d_r: pairs farther than this are dissimilar
    min_distance: float
    max_distance: float
    similar: int  # ordered off-diagonal pairs labelled +1
    dissimilar: int  # ... -1
    unknown: int  # ... 0

    def describe(self) -> str:
        pairs = max(self.similar + self.dissimilar + self.unknown, 1)
        return (
            f"cosine distances of {self.num_items} items: peak {self.peak:.4f}, left std {self.left_std:.4f}, "
            f"right std {self.right_std:.4f} -> similar if d < {self.low:.4f} ({100 * self.similar / pairs:.1f}% "
            f"of pairs), dissimilar if d > {self.high:.4f} ({100 * self.dissimilar / pairs:.1f}%), "
            f"unknown {100 * self.unknown / pairs:.1f}%"
        )


def _row_blocks(n: int, block_bytes: int) -> list[tuple[int, int]]:
    rows = max(1, min(n, block_bytes // max(4 * n, 1)))
    return [(s, min(s + rows, n)) for s in range(0, n, rows)]


def _distance_block(unit: Tensor, start: int, stop: int) -> Tensor:
    """Cosine distances 1 - cos of rows start..stop against all rows, clamped to [0, 2]."""
    return (1.0 - unit[start:stop] @ unit.t()).clamp_(0.0, 2.0)


def cosine_distance_thresholds(
    features: Tensor, alpha: float = 2.0, beta: float = 2.0, bins: int = 100, block_bytes: int = 64 << 20
) -> SimilarityStats:
    """First pass: peak, the two mirrored stds and the thresholds d_l, d_r (pair counts not yet filled).

    The peak is taken on `bins` equal-width bins spanning the observed distances (SSDH uses 100 bins of
    0.01 on [0, 1], i.e. the same when distances fill [0, 1]); its centre is the peak. Self-pairs (d = 0)
    are left out of the histogram.
    """
    n = features.shape[0]
    if n < 2:
        raise ConfigError(f"the SSDH similarity needs at least 2 items, got {n}")
    if bins < 2:
        raise ConfigError(f"similarity bins must be at least 2, got {bins}")
    unit = F.normalize(features.float(), dim=1)
    device = unit.device
    count = torch.zeros(FINE_BINS + 1, dtype=torch.float64, device=device)  # last slot collects self-pairs
    sum_d = torch.zeros_like(count)
    sum_d2 = torch.zeros_like(count)
    d_min, d_max = math.inf, -math.inf
    for start, stop in _row_blocks(n, block_bytes):
        d = _distance_block(unit, start, stop)
        idx = (d * (FINE_BINS / 2.0)).long().clamp_(max=FINE_BINS - 1)
        rows = torch.arange(stop - start, device=device)
        idx[rows, rows + start] = FINE_BINS  # self-pairs go to the discarded slot
        d[rows, rows + start] = math.inf
        d_min = min(d_min, float(d.min()))
        d[rows, rows + start] = -math.inf
        d_max = max(d_max, float(d.max()))
        d[rows, rows + start] = 0.0
        flat_idx, flat_d = idx.reshape(-1), d.reshape(-1).double()
        count += torch.bincount(flat_idx, minlength=FINE_BINS + 1).double()
        sum_d += torch.bincount(flat_idx, weights=flat_d, minlength=FINE_BINS + 1)
        sum_d2 += torch.bincount(flat_idx, weights=flat_d * flat_d, minlength=FINE_BINS + 1)
    count, sum_d, sum_d2 = count[:-1], sum_d[:-1], sum_d2[:-1]

    # Peak on `bins` coarse bins over [d_min, d_max]: each fine bin's mass goes to the coarse bin of its
    # mean distance (exact assignment of every pair up to the fine resolution).
    centres = torch.where(count > 0, sum_d / count.clamp_min(1), torch.zeros_like(sum_d))
    width = max(d_max - d_min, 1e-12) / bins
    coarse_idx = ((centres - d_min) / width).long().clamp_(0, bins - 1)
    coarse = torch.zeros(bins, dtype=torch.float64, device=device).index_add_(0, coarse_idx, count)
    peak_bin = int(torch.argmax(coarse))
    peak = d_min + (peak_bin + 0.5) * width

    left = centres <= peak
    right = ~left & (count > 0)

    def mirrored_std(side: Tensor) -> float:
        m = float(count[side].sum())
        if m == 0:
            return 0.0
        # sum (d - p)^2 = sum d^2 - 2 p sum d + m p^2, from the per-bin sums
        sq = float(sum_d2[side].sum() - 2 * peak * sum_d[side].sum() + m * peak * peak)
        return math.sqrt(max(sq, 0.0) / m)

    left_std, right_std = mirrored_std(left), mirrored_std(right)
    return SimilarityStats(
        num_items=n, peak=peak, left_std=left_std, right_std=right_std,
        low=peak - alpha * left_std, high=peak + beta * right_std,
        min_distance=d_min, max_distance=d_max, similar=0, dissimilar=0, unknown=0,
    )


def ssdh_similarity(
    features: Tensor,
    alpha: float = 2.0,
    beta: float = 2.0,
    bins: int = 100,
    valid: Tensor | None = None,
    block_bytes: int = 64 << 20,
) -> tuple[Tensor, SimilarityStats]:
    """S (N x N int8 in {-1, 0, +1}, on the features' device) and its statistics.

    `valid` (N bools) marks the items whose features are known; the rows and columns of the others are 0
    (unknown) and they take no part in the histogram. The diagonal is +1 (an item is similar to itself).
    """
    n = features.shape[0]
    if n > MAX_ITEMS:
        raise ConfigError(
            f"the SSDH similarity matrix of {n} items would take {n * n / 2**30:.1f} GiB; at most {MAX_ITEMS} "
            f"training items are supported (set data.train_limit)"
        )
    keep = torch.arange(n, device=features.device) if valid is None else torch.nonzero(valid).flatten()
    feats = features[keep]
    stats = cosine_distance_thresholds(feats, alpha, beta, bins, block_bytes)
    unit = F.normalize(feats.float(), dim=1)
    m = len(keep)
    sub = torch.zeros(m, m, dtype=torch.int8, device=features.device)
    for start, stop in _row_blocks(m, block_bytes):
        d = _distance_block(unit, start, stop)
        block = sub[start:stop]
        block[d < stats.low] = 1
        block[d > stats.high] = -1
    sub.fill_diagonal_(1)
    similar = int((sub == 1).sum()) - m
    dissimilar = int((sub == -1).sum())
    stats.similar, stats.dissimilar = similar, dissimilar
    stats.unknown = m * (m - 1) - similar - dissimilar
    if m == n:
        return sub, stats
    s = torch.zeros(n, n, dtype=torch.int8, device=features.device)
    s[keep.unsqueeze(1), keep.unsqueeze(0)] = sub
    s.fill_diagonal_(1)
    return s, stats


def build_similarity(features: Tensor, filled: Tensor, alpha: float, beta: float, bins: int,
                     log: Callable[[str], None], backbone_weights: str = "imagenet") -> Tensor:
    """S of the training set from the network's own (pretrained) pooled features, logged; int8.

    `features` (N, D) are the pooled features of the training items (from TrainContext.collect_outputs),
    `filled` marks the rows the feature pass saw; `backbone_weights` is where the backbone's weights came
    from ("random" earns a warning: untrained features carry little meaning).
    """
    if backbone_weights == "random":
        log("warning: the backbone has random weights; the SSDH similarity of untrained features carries "
            "little meaning (use a pretrained backbone, e.g. efficientnet_lite0, or --weights PATH)")
    if features.shape[0] == 0:
        raise ConfigError("the training set is empty: no features for the SSDH similarity")
    missing = int((~filled).sum())
    if missing:
        log(f"SSDH similarity: {missing} training item(s) not seen in the feature pass; their pairs are unknown")
    s, stats = ssdh_similarity(features, alpha, beta, bins, valid=filled if missing else None)
    log("SSDH similarity: " + stats.describe())
    if stats.similar == 0 or stats.dissimilar == 0:
        log("warning: the SSDH similarity has no similar or no dissimilar pairs; lower alpha/beta")
    return s


# ----- pairs of a batch ---------------------------------------------------------------------------------
class SimilarityPairs:
    """Which pairs a batch is trained on: within the batch (SSDH's and Huang et al.'s form) or the batch
    against a bank of the relaxed codes of the whole training set (DPSH-style, many more known pairs)."""

    def __init__(self, s: Tensor, bits: int, mode: str = "batch", gather: Callable[[Tensor], Tensor] | None = None):
        if mode not in ("batch", "bank"):
            raise ConfigError(f"pairs must be 'batch' or 'bank', got {mode!r}")
        self.s = s
        self.mode = mode
        self.gather = gather  # every process's batch into the bank, under distributed training
        self.codes = torch.zeros(s.shape[0], bits, device=s.device) if mode == "bank" else None
        self.filled = torch.zeros(s.shape[0], dtype=torch.bool, device=s.device) if mode == "bank" else None

    def targets(self, index: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(the other side's codes, S of the pairs as float, 0/1 mask of known pairs).

        In batch mode the other side is `h` itself (gradients flow through both codes of a pair); in bank
        mode the batch's codes are first written to the bank (detached) and the other side is the bank.
        """
        index = index.to(self.s.device)
        if self.mode == "batch":
            s = self.s[index][:, index].float()
            return h, s, (s != 0).float()
        codes, where = h.detach().float(), index
        if self.gather is not None:
            codes, where = self.gather(codes), self.gather(index)
        self.codes[where] = codes
        self.filled[where] = True
        s = self.s[index].float()
        mask = (s != 0).float() * self.filled.float().unsqueeze(0)
        return self.codes, s, mask


def ssdh_squared_loss(h: Tensor, other: Tensor, s: Tensor, mask: Tensor) -> Tensor:
    """SSDH's loss: mean over known pairs of (<h_i, h_j>/K - S_ij)^2, h = tanh(z) in (-1, 1)^K."""
    return ssdh_squared_of_inner(h @ other.t(), s, mask, h.shape[1])


def ssdh_squared_of_inner(inner: Tensor, s: Tensor, mask: Tensor, bits: int) -> Tensor:
    """`ssdh_squared_loss` as a function of the inner products <h_i, h_j> of K-bit codes (a gradient attention
    that weighs each pair's share of the gradient needs dL/d<h_i, h_j>)."""
    return ((inner / bits - s).pow(2) * mask).sum() / mask.sum().clamp_min(1.0)


def similarity_likelihood(h: Tensor, other: Tensor, s: Tensor, mask: Tensor, scale: float = 0.5) -> Tensor:
    """DPSH's pairwise negative log-likelihood on the known pairs of S, s_ij = (S_ij + 1)/2 in {0, 1}."""
    return pairwise_likelihood(h, other, (s + 1.0) * 0.5, scale=scale, mask=mask)


def similarity_likelihood_of_inner(inner: Tensor, s: Tensor, mask: Tensor, scale: float = 0.5) -> Tensor:
    """`similarity_likelihood` as a function of the inner products <h_i, h_j> (see ssdh_squared_of_inner)."""
    theta = scale * inner
    nll = F.softplus(theta) - (s + 1.0) * 0.5 * theta
    return (nll * mask).sum() / mask.sum().clamp_min(1.0)

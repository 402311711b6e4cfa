"""SSDH's similarity construction (attnhash.methods.similarity) on features of known structure."""

import numpy as np
import pytest
import torch

from attnhash.errors import ConfigError
from attnhash.losses.similarity import (
    MAX_ITEMS,
    SimilarityPairs,
    cosine_distance_thresholds,
    similarity_likelihood,
    ssdh_similarity,
    ssdh_squared_loss,
)


def clustered_features(seed: int = 0):
    """Two tight clusters at opposite directions (A, B) and a bulk of random directions (C).

    Random directions in 256-D have cosine distance 1 +- 1/16 to everything: that bulk makes the peak of
    the histogram. A-A and B-B pairs are at distance ~0 (far left tail), A-B pairs at ~2 (far right tail).
    """
    g = torch.Generator().manual_seed(seed)
    dim = 256
    axis = torch.zeros(dim)
    axis[0] = 1.0
    a = axis + 0.01 * torch.randn(20, dim, generator=g)
    b = -axis + 0.01 * torch.randn(20, dim, generator=g)
    c = torch.randn(200, dim, generator=g)
    return torch.cat([a, b, c]), slice(0, 20), slice(20, 40), slice(40, 240)


def test_two_tight_clusters_similar_within_dissimilar_across_unknown_in_between():
    feats, a, b, c = clustered_features()
    s, stats = ssdh_similarity(feats, alpha=2.0, beta=2.0)
    assert s.dtype == torch.int8 and s.shape == (240, 240)
    assert abs(stats.peak - 1.0) < 0.03
    assert stats.low > 0.1 and stats.high < 1.9
    assert (s[a, a] == 1).all() and (s[b, b] == 1).all()
    assert (s[a, b] == -1).all() and (s[b, a] == -1).all()
    # the bulk is ambiguous: its pairs with everything are unknown
    assert (s[c, c][~torch.eye(200, dtype=torch.bool)] == 0).all()
    assert (s[a, c] == 0).all() and (s[c, b] == 0).all()
    assert torch.equal(s, s.t())
    assert stats.similar == 2 * 20 * 19 and stats.dissimilar == 2 * 20 * 20
    assert stats.similar + stats.dissimilar + stats.unknown == 240 * 239


def test_thresholds_move_with_alpha_and_beta():
    feats, *_ = clustered_features(1)
    narrow = cosine_distance_thresholds(feats, alpha=0.5, beta=0.5)
    wide = cosine_distance_thresholds(feats, alpha=2.0, beta=3.0)
    assert narrow.peak == wide.peak and narrow.left_std == wide.left_std
    assert wide.low == pytest.approx(wide.peak - 2.0 * wide.left_std)
    assert wide.high == pytest.approx(wide.peak + 3.0 * wide.right_std)
    assert wide.low < narrow.low < narrow.peak < narrow.high < wide.high


def reference(feats: np.ndarray, alpha: float, beta: float, bins: int):
    """Dense NumPy SSDH construction, written independently of the blockwise one."""
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    d = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    off = d[~np.eye(len(d), dtype=bool)]
    counts, edges = np.histogram(off, bins=bins, range=(off.min(), off.max()))
    k = int(np.argmax(counts))
    peak = 0.5 * (edges[k] + edges[k + 1])
    left, right = off[off <= peak], off[off > peak]
    # mirror each side about the peak and take the std of the symmetric sample
    s_l = np.concatenate([left, 2 * peak - left]).std()
    s_r = np.concatenate([right, 2 * peak - right]).std()
    low, high = peak - alpha * s_l, peak + beta * s_r
    s = np.where(d < low, 1, np.where(d > high, -1, 0))
    np.fill_diagonal(s, 1)
    return d, peak, s_l, s_r, low, high, s, edges[1] - edges[0]


def test_blockwise_construction_matches_a_dense_reference():
    rng = np.random.default_rng(3)
    # non-negative, skewed features (like pooled ReLU activations): distances fill [0, 1] unevenly
    centres = rng.gamma(0.6, size=(6, 48))
    feats = centres[rng.integers(0, 6, 300)] + rng.gamma(0.5, 0.6, size=(300, 48))
    d, peak, s_l, s_r, low, high, s_ref, _ = reference(feats, 1.5, 2.0, 100)
    s, stats = ssdh_similarity(torch.from_numpy(feats).float(), 1.5, 2.0, bins=100, block_bytes=4 * 300 * 7)
    assert stats.peak == pytest.approx(peak, abs=1e-6)  # the same coarse bin
    assert stats.left_std == pytest.approx(s_l, rel=2e-3)
    assert stats.right_std == pytest.approx(s_r, rel=2e-3)
    disagree = s.numpy() != s_ref
    # only pairs sitting on a threshold (float32 vs float64 distances) may disagree
    near = (np.abs(d - low) < 1e-3) | (np.abs(d - high) < 1e-3)
    assert not (disagree & ~near).any()
    assert (s_ref == 1).sum() > 300 and (s_ref == -1).sum() > 300


def test_items_without_features_are_unknown_and_too_many_items_are_refused():
    feats, a, b, c = clustered_features(2)
    valid = torch.ones(240, dtype=torch.bool)
    valid[5] = False
    s, stats = ssdh_similarity(feats, valid=valid)
    assert s[5, 5] == 1 and (s[5, :5] == 0).all() and (s[5, 6:] == 0).all() and (s[:5, 5] == 0).all()
    assert s[0, 1] == 1 and s[0, 25] == -1
    assert stats.num_items == 239
    with pytest.raises(ConfigError, match="train_limit"):
        ssdh_similarity(torch.ones(MAX_ITEMS + 1, 1))


def test_pairs_of_a_batch_and_the_two_losses():
    s = torch.tensor([[1, 1, -1, 0], [1, 1, 0, -1], [-1, 0, 1, 1], [0, -1, 1, 1]], dtype=torch.int8)
    h = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    batch = SimilarityPairs(s, bits=2, mode="batch")
    other, sb, mask = batch.targets(torch.tensor([0, 2]), h[[0, 2]])
    assert sb.tolist() == [[1.0, -1.0], [-1.0, 1.0]] and mask.tolist() == [[1.0, 1.0], [1.0, 1.0]]
    # <h0,h0>/2 = 1 (S=1, error 0); <h0,h2>/2 = 0 (S=-1, error 1): mean over 4 known pairs = 0.5
    assert ssdh_squared_loss(h[[0, 2]], other, sb, mask).item() == pytest.approx(0.5)
    bank = SimilarityPairs(s, bits=2, mode="bank")
    codes, sk, mk = bank.targets(torch.tensor([0, 1]), h[[0, 1]])
    assert codes.shape == (4, 2) and sk.shape == (2, 4)
    # items 2 and 3 are not in the bank yet, and (0,3), (1,2) are unknown pairs
    assert mk.tolist() == [[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]
    # likelihood uses s = (S+1)/2; only the known pairs count
    value = similarity_likelihood(h[[0, 1]], codes, sk, mk)
    theta = 0.5 * (h[[0, 1]] @ codes.t())
    nll = torch.nn.functional.softplus(theta) - (sk + 1) / 2 * theta
    assert value.item() == pytest.approx(float((nll * mk).sum() / mk.sum()))
    with pytest.raises(ConfigError):
        SimilarityPairs(s, 2, mode="all")

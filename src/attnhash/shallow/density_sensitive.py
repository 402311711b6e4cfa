"""DSH (density): Density Sensitive Hashing.

Jin, Li, Lin, Cai, "Density sensitive hashing", IEEE Transactions on Cybernetics 44(8):1362-1371, 2014
(arXiv:1205.2930). Registered as ``density_sensitive``: ``dsh`` in attnhash is Deep Supervised Hashing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attnhash.errors import CheckpointError, ConfigError
from attnhash.shallow._numeric import kmeans, squared_distances
from attnhash.shallow.base import ShallowHasher, check_float, check_int, register_shallow

__all__ = ["DensitySensitiveHashing"]


def _entropy(p: np.ndarray) -> np.ndarray:
    """Binary entropy in bits, 0 at p in {0, 1}."""
    p = np.clip(p, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return np.nan_to_num(h, nan=0.0)


@register_shallow
class DensitySensitiveHashing(ShallowHasher):
    """Projections between neighbouring k-means groups, thresholded at their median plane, chosen by entropy.

    1. k-means with round(alpha * bits) groups (a few Lloyd rounds suffice: the groups only need to
       summarise the density, not to converge);
    2. groups i and j are r-adjacent when one is among the r nearest groups (by centre distance) of the
       other;
    3. each r-adjacent pair gives a candidate hash: w = mu_i - mu_j, threshold t = w . (mu_i + mu_j) / 2
       (the hyperplane bisecting the two centres, so it cuts through the low-density gap between them),
       bit = sign(w . x - t);
    4. the ``bits`` candidates of largest entropy are kept (balanced bits carry the most information); as in
       the paper, the split of each candidate is estimated from the groups, each group falling on the side
       of its centre with weight |group| / n.

    After fit: ``centres_`` (groups, d), ``entropy_`` (bits,) of the chosen candidates, ``pairs_`` (bits, 2).
    """

    name = "density_sensitive"
    paper = "Jin, Li, Lin, Cai, IEEE Trans. Cybernetics 2014"
    _param_names = ("alpha", "r", "kmeans_iter")
    _array_names = ("projections", "thresholds")

    def __init__(self, bits: int, seed: int = 0, alpha: float = 1.5, r: int = 3, kmeans_iter: int = 3,
                 **unknown: Any) -> None:
        super().__init__(bits, seed, **unknown)
        self.alpha = check_float(self.name, "alpha", alpha, 0.0, None, low_open=True)
        self.r = check_int(self.name, "r", r, minimum=1)
        self.kmeans_iter = check_int(self.name, "kmeans_iter", kmeans_iter, minimum=0)
        self.projections_: np.ndarray | None = None
        self.thresholds_: np.ndarray | None = None
        self.centres_: np.ndarray | None = None
        self.entropy_: np.ndarray | None = None
        self.pairs_: np.ndarray | None = None

    def _fit(self, x: np.ndarray) -> None:
        n = x.shape[0]
        n_groups = max(2, int(round(self.alpha * self.bits)))
        if n_groups > n:
            raise ConfigError(
                f"{self.name}.fit: {n_groups} k-means groups (alpha * bits) need at least that many "
                f"training points, got {n}"
            )
        centres, labels = kmeans(x, n_groups, self.kmeans_iter, np.random.default_rng(self.seed))
        weight = np.bincount(labels, minlength=n_groups) / n

        # r-adjacent pairs: each group with its r nearest other groups, as unordered pairs (i < j)
        dist = squared_distances(centres, centres)
        np.fill_diagonal(dist, np.inf)
        r = min(self.r, n_groups - 1)
        nearest = np.argsort(dist, axis=1, kind="stable")[:, :r]
        rows = np.repeat(np.arange(n_groups), r)
        pairs = np.unique(np.sort(np.stack([rows, nearest.ravel()], axis=1), axis=1), axis=0)
        w = centres[pairs[:, 0]] - centres[pairs[:, 1]]
        usable = np.einsum("ij,ij->i", w, w) > 0  # coincident centres (duplicated points) give no hyperplane
        pairs, w = pairs[usable], w[usable]
        if len(pairs) < self.bits:
            raise ConfigError(
                f"{self.name}.fit: only {len(pairs)} distinct adjacent-group projections for {self.bits} bits; "
                "raise alpha or r, or use fewer bits"
            )
        t = np.einsum("ij,ij->i", w, 0.5 * (centres[pairs[:, 0]] + centres[pairs[:, 1]]))

        # group-level estimate of each candidate's split: a group goes where its centre goes
        positive = (centres @ w.T - t[None, :]) >= 0  # (groups, candidates)
        entropy = _entropy(weight @ positive)
        order = np.argsort(-entropy, kind="stable")[: self.bits]
        self.projections_, self.thresholds_ = w[order], t[order]
        self.centres_, self.entropy_, self.pairs_ = centres, entropy[order], pairs[order]

    def _project(self, x: np.ndarray) -> np.ndarray:
        return x @ self.projections_.T - self.thresholds_[None, :]

    def _state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"projections": (self.bits, self.dim_), "thresholds": (self.bits,)}

    def _check_state(self) -> None:
        if np.any(np.abs(self.projections_).sum(axis=1) == 0):
            raise CheckpointError("density_sensitive state: a projection is all zeros")

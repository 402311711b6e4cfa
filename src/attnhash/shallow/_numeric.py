"""Small numpy building blocks shared by the shallow hashers: PCA, random rotations, k-means, distances."""

from __future__ import annotations

import numpy as np

__all__ = ["pca", "random_orthogonal", "squared_distances", "kmeans"]


def _fix_signs(vectors: np.ndarray) -> np.ndarray:
    """Eigenvectors have an arbitrary sign; make each column's largest-magnitude entry positive (determinism)."""
    idx = np.argmax(np.abs(vectors), axis=0)
    signs = np.sign(vectors[idx, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return vectors * signs


def pca(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k principal directions of x (n, d): (mean (d,), components (d, k), variances (k,)), descending."""
    n, d = x.shape
    mean = x.mean(axis=0)
    xc = x - mean
    if d <= n:
        # d x d covariance + symmetric eigensolver: cheap for n >> d (5,000 x 1,280: well under a second)
        cov = (xc.T @ xc) / max(n - 1, 1)
        values, vectors = np.linalg.eigh(cov)
        order = np.argsort(values, kind="stable")[::-1][:k]
        values, vectors = values[order], vectors[:, order]
    else:
        # fewer points than dimensions: the thin SVD of the data is the cheaper route
        _, s, vt = np.linalg.svd(xc, full_matrices=False)
        vectors, values = vt[:k].T, s[:k] ** 2 / max(n - 1, 1)
    return mean, _fix_signs(vectors), np.clip(values, 0.0, None)


def random_orthogonal(k: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-distributed random k x k orthogonal matrix (QR of a Gaussian, with R's diagonal signs folded in)."""
    q, r = np.linalg.qr(rng.standard_normal((k, k)))
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    return q * signs


def squared_distances(x: np.ndarray, c: np.ndarray, x_sq: np.ndarray | None = None) -> np.ndarray:
    """Squared Euclidean distances (n, m) between the rows of x (n, d) and c (m, d), clipped at 0."""
    if x_sq is None:
        x_sq = np.einsum("ij,ij->i", x, x)
    c_sq = np.einsum("ij,ij->i", c, c)
    d2 = x_sq[:, None] - 2.0 * (x @ c.T) + c_sq[None, :]
    return np.maximum(d2, 0.0, out=d2)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator, x_sq: np.ndarray) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): spread initial centres, each drawn with prob ~ D^2."""
    n = x.shape[0]
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(n)]
    closest = squared_distances(x, centres[:1], x_sq)[:, 0]
    for i in range(1, k):
        total = closest.sum()
        # all remaining points coincide with a centre: any point will do
        j = rng.integers(n) if total <= 0 else rng.choice(n, p=closest / total)
        centres[i] = x[j]
        closest = np.minimum(closest, squared_distances(x, centres[i:i + 1], x_sq)[:, 0])
    return centres


def _group_sums(x: np.ndarray, labels: np.ndarray, k: int, chunk: int = 8192) -> np.ndarray:
    """Per-group sums of the rows of x, as one-hot matrix products over row blocks (fast, bounded memory)."""
    sums = np.zeros((k, x.shape[1]))
    for start in range(0, x.shape[0], chunk):
        lab = labels[start:start + chunk]
        onehot = np.zeros((k, len(lab)))
        onehot[lab, np.arange(len(lab))] = 1.0
        sums += onehot @ x[start:start + chunk]
    return sums


def kmeans(x: np.ndarray, k: int, n_iter: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding: (centres (k, d), labels (n,)). Seeded through rng."""
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= n, got k={k}, n={n}")
    x_sq = np.einsum("ij,ij->i", x, x)
    centres = _kmeans_pp(x, k, rng, x_sq)
    d2 = squared_distances(x, centres, x_sq)
    labels = d2.argmin(axis=1)
    for _ in range(n_iter):
        counts = np.bincount(labels, minlength=k)
        sums = _group_sums(x, labels, k)
        nonempty = counts > 0
        centres[nonempty] = sums[nonempty] / counts[nonempty, None]
        empty = np.flatnonzero(~nonempty)
        if empty.size:
            # an empty group restarts at the points worst served by their centre
            worst = np.argsort(-d2[np.arange(n), labels], kind="stable")[: empty.size]
            centres[empty] = x[worst]
        d2 = squared_distances(x, centres, x_sq)
        new_labels = d2.argmin(axis=1)
        if np.array_equal(new_labels, labels) and not empty.size:
            break
        labels = new_labels
    return centres, labels

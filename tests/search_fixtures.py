"""Helpers of the search tests (no tests here): the definition of top-k and radius search, written apart from
every scan, and code sets of several shapes (random, heavily tied, clustered like learned codes)."""

from __future__ import annotations

import numpy as np

from attnhash.codes import hamming_distances


def definition_topk(q, db, k):
    """lexsort on (distance, position), written apart from every scan."""
    d = hamming_distances(q, db)
    nd, npos = np.full((len(q), k), -1, np.int32), np.full((len(q), k), -1, np.int64)
    for i, row in enumerate(d):
        order = np.lexsort((np.arange(len(row)), row))[:k]
        nd[i, : len(order)] = row[order]
        npos[i, : len(order)] = order
    return nd, npos


def definition_radius(q, db, r):
    d = hamming_distances(q, db)
    out = []
    for row in d:
        p = np.flatnonzero(row <= r)
        order = np.lexsort((p, row[p]))
        out.append((row[p][order], p[order]))
    return out


def codes(rng, n, nbytes, kind):
    if kind == "random":
        return rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    if kind == "ties":  # few distinct byte values: most distances tie
        return rng.choice(np.array([0, 1, 3, 255], np.uint8), size=(n, nbytes))
    # clustered: a few centres, each copy with 0-3 flipped bits (many exact duplicates, like learned codes)
    centres = rng.integers(0, 256, (20, nbytes), dtype=np.uint8)
    out = np.unpackbits(centres[rng.integers(0, 20, n)], axis=1)
    for i in range(n):
        out[i, rng.choice(nbytes * 8, rng.integers(0, 4), replace=False)] ^= 1
    return np.packbits(out, axis=1)

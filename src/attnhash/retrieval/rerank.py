"""Tie-aware ranking of image queries: items at equal Hamming distance ordered by <tanh(z_q), b_d>.

A code keeps only the signs of the query's hash-layer outputs z; at equal Hamming distance the database items
are ranked by the asymmetric score <tanh(z_q), b_d> (larger first), which weighs each agreeing bit by how
sure the query is of it. Equal codes score equally and keep the index's order (insertion order), so the
ranking stays deterministic.

Exact over any Index: a top-k query asks the index for k + 1 items; when the (k+1)-th lies at the k-th
distance t, the tie group at t is cut by id and every item at distance <= t is fetched (a radius search) to be
scored, so the items at t that win on score are not lost to the cut.
"""

from __future__ import annotations

import numpy as np

from attnhash.codes import asymmetric_scores
from attnhash.index import Index

__all__ = ["reranked_search", "SCORE_SCALE", "DEFAULT"]

DEFAULT = False  # image queries of `attnhash search` and the service: measured in benchmarks/results/rerank.md

SCORE_SCALE = float(1 << 20)  # asymmetric_scores are <tanh(z), b> times this (exact integers)


def _ranked(index: Index, real: np.ndarray, dist: np.ndarray, ids: np.ndarray, limit: int | None):
    if len(ids) == 0:
        return dist, ids, np.zeros(0)
    scores = asymmetric_scores(real[None, :], index.reconstruct(ids))[0]
    order = np.lexsort((-scores, dist))  # stable: equal (distance, score) keep the index's order
    if limit is not None:
        order = order[:limit]
    return dist[order], ids[order], scores[order] / SCORE_SCALE


def reranked_search(index: Index, codes: np.ndarray, real: np.ndarray, k: int | None = None,
                    radius: int | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per query (distances, ids, scores) ranked by (distance, -score, index order): the top k, or every item
    within `radius`. `real`: the queries' real-valued outputs z (nq, bits)."""
    if (k is None) == (radius is None):
        raise ValueError("give exactly one of k and radius")
    real = np.asarray(real, dtype=np.float32)
    if real.shape != (len(codes), index.bits):
        raise ValueError(f"query outputs of shape {real.shape} do not fit {len(codes)} {index.bits}-bit queries")
    out = []
    if radius is not None:
        for i, (d, ids) in enumerate(index.range_search(codes, radius)):
            out.append(_ranked(index, real[i], d, ids, None))
        return out
    dist, ids = index.search(codes, k + 1)
    for i in range(len(codes)):
        d, row = dist[i], ids[i]
        keep = row >= 0
        d, row = d[keep], row[keep]
        if len(row) > k and d[k] == d[k - 1]:  # the tie group at the k-th distance is cut: take all of it
            d, row = index.range_search(codes[i : i + 1], int(d[k - 1]))[0]
        out.append(_ranked(index, real[i], d, row, k))
    return out

"""Retrieval metrics of the deep-hashing literature, computed in one pass over the Hamming ranking.

Conventions (DESIGN.md section 4):
- relevance: a database item is relevant to a query when they share at least one label;
- ranking: ascending Hamming distance, ties broken by database index (stable, deterministic); with the real-
  valued query outputs (`query_real`), items at equal distance are first ranked by the asymmetric score
  <tanh(z_q), b_d> (larger first; equal codes score equally and stay in database order);
- mAP@R: AP = mean, over the relevant items within the top R, of (relevant so far / rank); a query with no
  relevant item in its top R scores 0 and still counts in the mean; R = None means the whole database;
- tie-aware mAP@R: the exact expectation of AP@R over uniformly random orders inside each group of equal
  distance (of equal distance and score when ranked by the score) (He et al., "Hashing as Tie-Aware Learning to Rank", CVPR 2018), extended to a top-R cut that
  falls inside a tie group by conditioning on how many relevant items of that group land above the cut;
- PR curve: per Hamming radius r = 0..K, the items at distance <= r are retrieved; recall is averaged over
  all queries, precision over the queries that retrieved at least one item at that radius (precision of an
  empty set is undefined; this is the convention of the DPSH/HashNet evaluation code);
- P@N: precision of the first N items of the ranking;
- P@H<=2: precision of the items within radius 2, a query that retrieves nothing scoring 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from attnhash.codes import as_packed, asymmetric_scores, hamming_distances

DEFAULT_PN_GRID = (1, 5, 10, 20, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000)

__all__ = ["RetrievalMetrics", "evaluate_retrieval", "mean_average_precision", "as_multihot", "DEFAULT_PN_GRID"]


def as_multihot(labels, num_classes: int | None = None, name: str = "labels") -> np.ndarray:
    """Class ids (n,) or a multi-hot / one-hot matrix (n, C) -> bool matrix (n, C)."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        if labels.size and (labels.min() < 0 or not np.issubdtype(labels.dtype, np.integer)):
            raise ValueError(f"{name}: class ids must be non-negative integers")
        c = int(labels.max()) + 1 if num_classes is None and labels.size else int(num_classes or 0)
        out = np.zeros((len(labels), c), dtype=bool)
        out[np.arange(len(labels)), labels] = True
        return out
    if labels.ndim == 2:
        if not np.isin(np.unique(labels), (0, 1)).all():
            raise ValueError(f"{name}: a label matrix must hold only 0 and 1 (multi-hot)")
        return labels.astype(bool)
    raise ValueError(f"{name}: expected class ids (n,) or a multi-hot matrix (n, C), got shape {labels.shape}")


def _relevance(q_labels: np.ndarray, d_labels: np.ndarray) -> np.ndarray:
    return (q_labels.astype(np.float32) @ d_labels.T.astype(np.float32)) > 0


@dataclass
class RetrievalMetrics:
    bits: int
    num_queries: int
    num_database: int
    topk: int | None
    mAP: float
    mAP_tie_aware: float
    precision_at_n: dict[int, float]
    pr_radius: list[int]
    pr_precision: list[float]
    pr_recall: list[float]
    precision_hamming2: float
    recall_hamming2: float
    per_query_ap: np.ndarray = field(repr=False, default=None)

    def to_dict(self) -> dict:
        return {
            "mAP": self.mAP,
            "mAP_tie_aware": self.mAP_tie_aware,
            "topk": self.topk,
            "bits": self.bits,
            "num_queries": self.num_queries,
            "num_database": self.num_database,
            "precision_at_n": {str(k): v for k, v in self.precision_at_n.items()},
            "pr_curve": {"radius": self.pr_radius, "precision": self.pr_precision, "recall": self.pr_recall},
            "precision_hamming2": self.precision_hamming2,
            "recall_hamming2": self.recall_hamming2,
        }


def _tie_group_sums(n_before: np.ndarray, p_before: np.ndarray, n: np.ndarray, r: np.ndarray, harmonic: np.ndarray):
    """Expected sum of precisions at the relevant positions of tie groups, vectorised over groups.

    A group of n items holding r relevant ones starts after n_before items of which p_before are relevant.
    A relevant item at group position j (uniform on 1..n) has in expectation (j-1)(r-1)/(n-1) other relevant
    items above it in the group, so its expected precision is
        (p_before + 1 + (j-1)c) / (n_before + j),   c = (r-1)/(n-1)   (c = 0 when n = 1);
    summing over j with harmonic numbers H gives the closed form below, multiplied by r/n relevant items.
    """
    n = n.astype(np.float64)
    r = r.astype(np.float64)
    nb = n_before.astype(np.int64)
    d_h = harmonic[nb + n.astype(np.int64)] - harmonic[nb]
    c = np.where(n > 1, (r - 1) / np.maximum(n - 1, 1), 0.0)
    inner = (p_before + 1) * d_h + c * (n - (nb + 1) * d_h)
    return np.where(n > 0, r / np.maximum(n, 1) * inner, 0.0)


def _tie_aware_ap(hist_all: np.ndarray, hist_rel: np.ndarray, topk: int, harmonic: np.ndarray, log_fact: np.ndarray):
    """Exact expected AP@topk of one query from its per-distance counts of items and relevant items."""
    n_before = np.concatenate(([0], np.cumsum(hist_all)[:-1]))
    p_before = np.concatenate(([0], np.cumsum(hist_rel)[:-1]))
    inside = (n_before + hist_all) <= topk  # groups entirely within the top R
    full = _tie_group_sums(n_before[inside], p_before[inside], hist_all[inside], hist_rel[inside], harmonic)
    s_full = float(full.sum())
    boundary = np.nonzero(~inside & (n_before < topk) & (hist_all > 0))[0]
    if len(boundary) == 0:
        total_rel = int(hist_rel[inside].sum())
        return s_full / total_rel if total_rel else 0.0
    b = boundary[0]
    nb, pb, n, r = int(n_before[b]), int(p_before[b]), int(hist_all[b]), int(hist_rel[b])
    m = topk - nb  # positions of the boundary group inside the top R
    y = np.arange(max(0, m - (n - r)), min(r, m) + 1)
    # hypergeometric P(Y = y): y of the r relevant items among the m positions kept
    log_p = (log_fact[r] - log_fact[y] - log_fact[r - y]) + (
        log_fact[n - r] - log_fact[m - y] - log_fact[n - r - m + y]
    ) - (log_fact[n] - log_fact[m] - log_fact[n - m])
    prob = np.exp(log_p)
    s_boundary = _tie_group_sums(np.full(len(y), nb), np.full(len(y), pb), np.full(len(y), m), y, harmonic)
    denom = pb + y
    ap = np.where(denom > 0, (s_full + s_boundary) / np.maximum(denom, 1), 0.0)
    return float((prob * ap).sum())


def evaluate_retrieval(
    query_codes,
    db_codes,
    query_labels,
    db_labels,
    topk: int | None = None,
    bits: int | None = None,
    pn_grid=DEFAULT_PN_GRID,
    tie_aware: bool = True,
    chunk: int = 128,
    query_real=None,
) -> RetrievalMetrics:
    """Score a retrieval: codes as {-1,+1} (n, K) or packed uint8 (n, K/8); labels as ids or multi-hot.
    query_real: the queries' real-valued outputs z (nq, K), to rank equal distances by <tanh(z_q), b_d>."""
    q = as_packed(query_codes, bits)
    d = as_packed(db_codes, bits)
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"query codes have {q.shape[1] * 8} bits but database codes have {d.shape[1] * 8}")
    bits = q.shape[1] * 8 if bits is None else bits
    ql_raw, dl_raw = np.asarray(query_labels), np.asarray(db_labels)
    if ql_raw.ndim == 1 and dl_raw.ndim == 1:
        num_classes = int(max(ql_raw.max(initial=0), dl_raw.max(initial=0))) + 1
        ql, dl = as_multihot(ql_raw, num_classes, "query labels"), as_multihot(dl_raw, num_classes, "database labels")
    else:
        ql, dl = as_multihot(ql_raw, name="query labels"), as_multihot(dl_raw, name="database labels")
        if ql.shape[1] != dl.shape[1]:
            raise ValueError(f"query labels have {ql.shape[1]} classes but database labels have {dl.shape[1]}")
    if len(ql) != len(q):
        raise ValueError(f"{len(q)} query codes but {len(ql)} query labels")
    if len(dl) != len(d):
        raise ValueError(f"{len(d)} database codes but {len(dl)} database labels")
    if query_real is not None:
        query_real = np.asarray(query_real, dtype=np.float32)
        if query_real.shape != (len(q), bits):
            raise ValueError(f"query outputs have shape {query_real.shape}, expected ({len(q)}, {bits})")
    nq, nd = len(q), len(d)
    if nq == 0 or nd == 0:
        raise ValueError("need at least one query and one database item")
    R = nd if topk is None or topk <= 0 or topk >= nd else int(topk)
    pn_grid = [int(n) for n in pn_grid if n <= nd]
    depth = max([R, *pn_grid]) if pn_grid else R

    harmonic = np.concatenate(([0.0], np.cumsum(1.0 / np.arange(1, nd + 1))))
    log_fact = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, nd + 1)))))
    ranks = np.arange(1, depth + 1, dtype=np.float64)

    ap = np.zeros(nq)
    ap_tie = np.zeros(nq)
    pn_sum = np.zeros(len(pn_grid))
    hits_r = np.zeros((nq, bits + 1))
    retrieved_r = np.zeros((nq, bits + 1))
    n_relevant = np.zeros(nq)

    for s in range(0, nq, chunk):
        e = min(s + chunk, nq)
        dist = hamming_distances(q[s:e], d)
        rel = _relevance(ql[s:e], dl)
        n_relevant[s:e] = rel.sum(1)
        # stable sort by distance = ties broken by database index (by the score first when ranking by it)
        if query_real is None:
            order = np.argsort(dist, axis=1, kind="stable")[:, :depth]
        else:
            score = asymmetric_scores(query_real[s:e], d)
            full = np.lexsort((-score, dist), axis=1)
            order = full[:, :depth]
        rel_sorted = np.take_along_axis(rel, order, axis=1)
        cum = np.cumsum(rel_sorted, axis=1, dtype=np.float64)
        top = rel_sorted[:, :R]
        n_top = top.sum(1)
        ap[s:e] = np.where(n_top > 0, (cum[:, :R] / ranks[:R] * top).sum(1) / np.maximum(n_top, 1), 0.0)
        if pn_grid:
            pn_sum += (cum[:, np.array(pn_grid) - 1] / np.array(pn_grid)).sum(0)
        # per-distance histograms: all items and relevant items
        offsets = (np.arange(e - s) * (bits + 1))[:, None]
        hist_all = np.bincount((dist + offsets).ravel(), minlength=(e - s) * (bits + 1)).reshape(e - s, bits + 1)
        hist_rel = np.bincount(
            (dist + offsets)[rel], minlength=(e - s) * (bits + 1)
        ).reshape(e - s, bits + 1)
        retrieved_r[s:e] = np.cumsum(hist_all, axis=1)
        hits_r[s:e] = np.cumsum(hist_rel, axis=1)
        if tie_aware and query_real is None:
            for i in range(e - s):
                ap_tie[s + i] = _tie_aware_ap(hist_all[i], hist_rel[i], R, harmonic, log_fact)
        elif tie_aware:  # tie groups: runs of equal (distance, score) in the ranking
            for i in range(e - s):
                ds, ss, rs = dist[i, full[i]], score[i, full[i]], rel[i, full[i]]
                starts = np.flatnonzero(np.r_[True, (ds[1:] != ds[:-1]) | (ss[1:] != ss[:-1])])
                sizes = np.diff(np.r_[starts, nd])
                ap_tie[s + i] = _tie_aware_ap(sizes, np.add.reduceat(rs.astype(np.int64), starts), R, harmonic,
                                              log_fact)

    with np.errstate(invalid="ignore", divide="ignore"):
        prec_r = np.where(retrieved_r > 0, hits_r / np.maximum(retrieved_r, 1), np.nan)
        recall_r = np.where(n_relevant[:, None] > 0, hits_r / np.maximum(n_relevant[:, None], 1), 0.0)
    answered = ~np.isnan(prec_r)
    pr_precision = np.where(answered.any(0), np.nansum(prec_r, 0) / np.maximum(answered.sum(0), 1), 0.0)
    r2 = min(2, bits)
    p_h2 = np.where(retrieved_r[:, r2] > 0, hits_r[:, r2] / np.maximum(retrieved_r[:, r2], 1), 0.0)

    return RetrievalMetrics(
        bits=bits,
        num_queries=nq,
        num_database=nd,
        topk=None if R == nd else R,
        mAP=float(ap.mean()),
        mAP_tie_aware=float(ap_tie.mean()) if tie_aware else float("nan"),
        precision_at_n={n: float(v / nq) for n, v in zip(pn_grid, pn_sum)},
        pr_radius=list(range(bits + 1)),
        pr_precision=[float(x) for x in pr_precision],
        pr_recall=[float(x) for x in recall_r.mean(0)],
        precision_hamming2=float(p_h2.mean()),
        recall_hamming2=float(recall_r[:, r2].mean()),
        per_query_ap=ap,
    )


def mean_average_precision(query_codes, db_codes, query_labels, db_labels, topk: int | None = None) -> float:
    """mAP@topk with the deterministic tie order (topk=None: the whole database)."""
    return evaluate_retrieval(
        query_codes, db_codes, query_labels, db_labels, topk=topk, pn_grid=(), tie_aware=False
    ).mAP

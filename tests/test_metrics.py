"""Metrics against hand-computed cases and an independent, deliberately naive implementation."""

import itertools

import numpy as np
import pytest

from attnhash.codes import pack_codes
from attnhash.metrics import evaluate_retrieval, mean_average_precision


def codes_at_distances(distances, bits=8):
    """A query code (all +1) and database codes at the given Hamming distances from it."""
    q = np.ones((1, bits), dtype=np.int8)
    d = np.ones((len(distances), bits), dtype=np.int8)
    for i, dist in enumerate(distances):
        d[i, :dist] = -1
    return q, d


# ---------- hand-computed cases ------------------------------------------------------------------------
def test_map_hand_computed_single_label():
    q, d = codes_at_distances([0, 1, 2, 3, 4])
    # ranking = 0,1,2,3,4; relevant at ranks 1, 3, 4 -> AP = (1/1 + 2/3 + 3/4) / 3
    m = evaluate_retrieval(q, d, [7], [7, 1, 7, 7, 2])
    assert m.mAP == pytest.approx((1 + 2 / 3 + 3 / 4) / 3, abs=1e-12)


def test_ties_broken_by_database_index():
    q, d = codes_at_distances([1, 1, 0])
    # ranking = 2, 0, 1 (item 0 before item 1 at equal distance); relevant: item 1 only -> AP = 1/3
    assert mean_average_precision(q, d, [0], [0 if i == 1 else 1 for i in range(3)]) == pytest.approx(1 / 3)
    # relevant: item 0 only -> it ranks 2nd -> AP = 1/2
    assert mean_average_precision(q, d, [0], [0, 1, 1]) == pytest.approx(1 / 2)


def test_tie_aware_is_expectation_over_tie_orders():
    q, d = codes_at_distances([1, 1, 0])
    # item 2 (non-relevant) first, then items 0/1 in random order, one relevant: E[AP] = (1/2 + 1/3) / 2
    m = evaluate_retrieval(q, d, [0], [0, 1, 1])
    assert m.mAP_tie_aware == pytest.approx((1 / 2 + 1 / 3) / 2)


def test_query_without_relevant_items_scores_zero_and_counts():
    q1, d = codes_at_distances([0, 1, 2])
    q = np.vstack([q1, q1])
    # query 0 (label 0): relevant = item 0 at rank 1 -> AP 1; query 1 (label 5): nothing relevant -> 0
    m = evaluate_retrieval(q, d, [0, 5], [0, 1, 2])
    assert m.mAP == pytest.approx(0.5)
    assert m.per_query_ap.tolist() == [1.0, 0.0]


def test_map_at_r_normalises_by_relevant_within_top_r():
    q, d = codes_at_distances([0, 1, 2, 3, 4])
    labels = [1, 0, 1, 1, 1]  # relevant (label 1) at ranks 1, 3, 4, 5
    # top 3: relevant at 1 and 3 -> (1 + 2/3) / 2, not divided by the 4 relevant items overall
    assert mean_average_precision(q, d, [1], labels, topk=3) == pytest.approx((1 + 2 / 3) / 2)
    # top 1 with a non-relevant first item -> 0
    assert mean_average_precision(q, d, [1], [0, 1, 1, 1, 1], topk=1) == 0.0


def test_multilabel_relevance_is_sharing_any_label():
    q, d = codes_at_distances([0, 1, 2, 3])
    ql = np.array([[1, 0, 1]])
    dl = np.array([[0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 0]])  # relevant: items 1, 2
    m = evaluate_retrieval(q, d, ql, dl)
    assert m.mAP == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_pr_curve_p_at_n_and_hamming2():
    q, d = codes_at_distances([0, 1, 2, 3, 5], bits=8)
    m = evaluate_retrieval(q, d, [1], [1, 0, 1, 1, 0], pn_grid=(1, 2, 5))
    assert m.precision_at_n == {1: 1.0, 2: 0.5, 5: pytest.approx(3 / 5)}
    assert m.precision_hamming2 == pytest.approx(2 / 3)  # items at d <= 2: 0, 1, 2 -> 2 relevant
    assert m.recall_hamming2 == pytest.approx(2 / 3)
    assert m.pr_precision[:4] == pytest.approx([1.0, 0.5, 2 / 3, 3 / 4])
    assert m.pr_recall[:4] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 1.0])
    assert m.pr_recall[-1] == 1.0


def test_hamming2_zero_when_nothing_retrieved():
    q, d = codes_at_distances([3, 4])
    m = evaluate_retrieval(q, d, [0], [0, 0])
    assert m.precision_hamming2 == 0.0


def test_codes_packed_or_pm1_give_same_result():
    rng = np.random.default_rng(0)
    q = rng.choice([-1, 1], size=(20, 32))
    d = rng.choice([-1, 1], size=(200, 32))
    ql, dl = rng.integers(0, 4, 20), rng.integers(0, 4, 200)
    a = evaluate_retrieval(q, d, ql, dl, topk=50)
    b = evaluate_retrieval(pack_codes(q), pack_codes(d), ql, dl, topk=50)
    assert a.mAP == b.mAP and a.mAP_tie_aware == b.mAP_tie_aware


def test_label_count_mismatch_is_clear():
    q, d = codes_at_distances([0, 1])
    with pytest.raises(ValueError, match="2 database codes but 3 database labels"):
        evaluate_retrieval(q, d, [0], [0, 1, 1])


# ---------- an independent implementation ---------------------------------------------------------------
def naive_scores(q_pm1, d_pm1, q_lab, d_lab, topk):
    """Straight from the definitions: Python loops, sorting by (distance, index), no shared code."""
    K = q_pm1.shape[1]
    n = len(d_pm1)
    R = n if topk is None else min(topk, n)
    aps, ties = [], []
    for i in range(len(q_pm1)):
        dist = [(K - int(np.dot(q_pm1[i], d_pm1[j]))) // 2 for j in range(n)]
        rel = [bool(np.any(np.logical_and(q_lab[i], d_lab[j]))) for j in range(n)]
        order = sorted(range(n), key=lambda j: (dist[j], j))
        hits, total = 0, 0.0
        for rank, j in enumerate(order[:R], start=1):
            if rel[j]:
                hits += 1
                total += hits / rank
        aps.append(total / hits if hits else 0.0)
        ties.append(monte_carlo_tie_ap(dist, rel, R, rng=np.random.default_rng(i)))
    return float(np.mean(aps)), float(np.mean(ties))


def monte_carlo_tie_ap(dist, rel, R, rng, samples=4000):
    """Average AP over random orders inside tie groups (distance + a random fraction < 1 as the sort key)."""
    dist, rel = np.array(dist, dtype=float), np.array(rel)
    order = np.argsort(dist[None, :] + 0.5 * rng.random((samples, len(dist))), axis=1)
    r = rel[order][:, :R]
    c = np.cumsum(r, axis=1)
    n_rel = r.sum(1)
    ap = (c / np.arange(1, R + 1) * r).sum(1) / np.maximum(n_rel, 1)
    return float(np.where(n_rel > 0, ap, 0.0).mean())


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("bits,topk", [(8, None), (8, 40), (16, None), (16, 25)])
def test_agrees_with_independent_implementation(multilabel, bits, topk):
    rng = np.random.default_rng(bits * 7 + (topk or 0) + multilabel)
    nq, nd = 12, 120
    # few bits + clustered codes -> many ties
    centres = rng.choice([-1, 1], size=(4, bits))
    qc = centres[rng.integers(0, 4, nq)] * np.where(rng.random((nq, bits)) < 0.15, -1, 1)
    dc = centres[rng.integers(0, 4, nd)] * np.where(rng.random((nd, bits)) < 0.15, -1, 1)
    if multilabel:
        ql = (rng.random((nq, 5)) < 0.3).astype(np.uint8)
        dl = (rng.random((nd, 5)) < 0.3).astype(np.uint8)
        ql[0] = 0  # a query with no label at all: nothing relevant
    else:
        ql, dl = rng.integers(0, 6, nq), rng.integers(0, 6, nd)
    m = evaluate_retrieval(qc, dc, ql, dl, topk=topk)
    ql_mh = ql if multilabel else np.eye(6)[ql]
    dl_mh = dl if multilabel else np.eye(6)[dl]
    naive_map, mc_tie = naive_scores(qc, dc, ql_mh, dl_mh, topk)
    assert m.mAP == pytest.approx(naive_map, abs=1e-6)
    assert m.mAP_tie_aware == pytest.approx(mc_tie, abs=0.01)  # Monte Carlo tolerance


def test_tie_aware_exact_by_enumeration():
    """Every order consistent with the ties, enumerated on tiny cases, including a top-R cut inside a tie group."""
    rng = np.random.default_rng(3)
    for _ in range(30):
        nd = 6
        dist = rng.integers(0, 3, nd)
        rel = rng.random(nd) < 0.5
        R = int(rng.integers(1, nd + 1))
        q = np.ones((1, 8), dtype=np.int8)
        d = np.ones((nd, 8), dtype=np.int8)
        for i, k in enumerate(dist):
            d[i, :k] = -1
        values = []
        for perm in itertools.permutations(range(nd)):
            p = np.array(perm)
            if np.all(np.diff(dist[p]) >= 0):
                r = rel[p][:R]
                values.append((np.cumsum(r) / np.arange(1, R + 1) * r).sum() / r.sum() if r.sum() else 0.0)
        m = evaluate_retrieval(q, d, [0], np.where(rel, 0, 1), topk=R)
        assert m.mAP_tie_aware == pytest.approx(np.mean(values), abs=1e-12)

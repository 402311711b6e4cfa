"""Ranking ties by the asymmetric score <tanh(z_q), b_d>: the definition (a lexsort on distance, -score,
position) for top-k and radius over any index, the encoder's real-valued outputs, and the metrics."""

from __future__ import annotations

import numpy as np
import pytest

from attnhash.codes import asymmetric_scores, hamming_distances, pack_codes, sign, unpack_codes
from attnhash.index import create_index
from attnhash.metrics import evaluate_retrieval
from attnhash.retrieval.rerank import SCORE_SCALE, reranked_search
from search_fixtures import codes


def definition(q, real, db, k=None, radius=None):
    d = hamming_distances(q, db)
    s = asymmetric_scores(real, db)
    out = []
    for i in range(len(q)):
        order = np.lexsort((np.arange(db.shape[0]), -s[i], d[i]))
        if radius is not None:
            order = order[d[i][order] <= radius]
        else:
            order = order[:k]
        out.append((d[i][order], order, s[i][order] / SCORE_SCALE))
    return out


@pytest.mark.parametrize("backend", ["faiss", "numpy"])
def test_reranked_search_is_the_definition(backend):
    rng = np.random.default_rng(0)
    db = codes(rng, 3000, 8, "clustered")  # many exact duplicates: ties at every distance
    real = rng.standard_normal((12, 64)).astype(np.float32)
    real[6:] = unpack_codes(db[:6]) * rng.random((6, 64))  # queries sitting on database codes
    q = pack_codes(sign(real))
    index = create_index(backend, 64)
    index.add(db)
    for k in (1, 10, 100, 500):
        got = reranked_search(index, q, real, k=k)
        for (gd, gi, gs), (wd, wi, ws) in zip(got, definition(q, real, db, k=k), strict=True):
            np.testing.assert_array_equal(gi, wi)
            np.testing.assert_array_equal(gd, wd)
            np.testing.assert_allclose(gs, ws)
    for r in (0, 2, 5):
        for (gd, gi, _), (wd, wi, _) in zip(reranked_search(index, q, real, radius=r),
                                            definition(q, real, db, radius=r), strict=True):
            np.testing.assert_array_equal(gi, wi)
            np.testing.assert_array_equal(gd, wd)
    # the score really moves items inside tie groups: a top-10 differs from the plain one for some query
    plain = index.search(q, 10)[1]
    assert any((plain[i] != got_i[1]).any() for i, got_i in enumerate(reranked_search(index, q, real, k=10)))


def test_scores_are_exact_so_equal_codes_tie():
    rng = np.random.default_rng(1)
    real = rng.standard_normal((3, 64)) * 3
    db = np.repeat(codes(rng, 50, 8, "random"), 4, axis=0)
    s = asymmetric_scores(real, db)
    assert (s.reshape(3, 50, 4) == s.reshape(3, 50, 4)[:, :, :1]).all()
    assert np.allclose(s / SCORE_SCALE, np.tanh(real) @ unpack_codes(db).T.astype(np.float64), atol=1e-4)


def test_metrics_rank_ties_by_score():
    rng = np.random.default_rng(2)
    q = rng.choice([-1, 1], (30, 16))
    d = rng.choice([-1, 1], (400, 16))
    ql, dl = rng.integers(0, 3, 30), rng.integers(0, 3, 400)
    plain = evaluate_retrieval(q, d, ql, dl, topk=100)
    # outputs of equal magnitude score every code at one distance equally: the ranking is the plain one
    same = evaluate_retrieval(q, d, ql, dl, topk=100, query_real=q * 0.7)
    assert same.mAP == plain.mAP and same.mAP_tie_aware == plain.mAP_tie_aware
    assert same.precision_at_n == plain.precision_at_n
    # outputs of varying magnitude reorder the ties
    real = rng.standard_normal((30, 16))
    scored = evaluate_retrieval(q, d, ql, dl, topk=100, query_real=real)
    assert scored.pr_precision == plain.pr_precision  # radius-based metrics do not depend on order
    assert scored.mAP != plain.mAP
    with pytest.raises(ValueError, match="query outputs have shape"):
        evaluate_retrieval(q, d, ql, dl, query_real=real[:, :8])

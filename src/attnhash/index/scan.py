"""Exact Hamming scans over packed codes: top-k and radius, compiled (numba) with a NumPy fallback.

The definition (the one every backend is tested against): distances popcount(q XOR x); top-k sorted by
(distance, position), position = insertion order; rows padded with distance -1 and position -1 when fewer
than k items exist; a radius search returns every item at distance <= r in the same order.

The compiled scan (`topk`, `radius`):
- codes are read as machine words (one uint64 per 64-bit code), distances by XOR + popcount;
- the database is walked in blocks; the minimum distance of a block is computed first (a vectorised loop: 8
  codes per AVX-512 popcount), and a block whose minimum cannot enter the current top-k (or radius) is left
  at that: most blocks of a large scan never reach the selection;
- selection counts candidates per distance (distances are small integers): the k-th distance t is known
  from the counts, later items are taken only when closer than t (an item at t comes after the ones already
  held, so it loses the tie), and the scan stops as soon as k items at distance 0 are held: nothing can
  displace them;
- one query is split across threads (disjoint position ranges, merged in position order); a batch of
  queries is split across threads by query, and each thread walks the database in cache-sized blocks, all
  of its queries over one block before the next, so the codes are read from memory once per thread.

The NumPy fallback (`topk_numpy`, `radius_numpy`; the numpy backend's reference implementation): XOR +
popcount over blocks of queries, then a counting select (bincount, threshold, stable order) per query.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from attnhash.codes import popcount as np_popcount
from attnhash.index.compiled import AVAILABLE, jit, popcount, threads

__all__ = ["COMPILED", "topk", "radius", "topk_numpy", "radius_numpy", "as_words", "run_parallel",
           "sort_by_distance"]

COMPILED = AVAILABLE
BLOCK = 1024  # codes per block of a single-query scan: the granularity of the minimum-distance test
BATCH_BLOCK = 4096  # codes per cache block of a batch scan (32 KB of 64-bit codes)
SPLIT_MIN = 1 << 18  # a single query is split across threads from this many codes (below: dispatch > scan)
_NUMPY_BLOCK_ELEMS = 1 << 23  # distance-matrix elements per block of the NumPy scan (~64 MB temporaries)


# ---- words ----------------------------------------------------------------------------------------------
def word_dtype(code_size: int) -> np.dtype:
    """The widest unsigned integer that divides the code size (one word per code where possible)."""
    for size, dt in ((8, np.uint64), (4, np.uint32), (2, np.uint16)):
        if code_size % size == 0:
            return np.dtype(dt)
    return np.dtype(np.uint8)


def as_words(codes: np.ndarray) -> np.ndarray:
    """Packed codes (n, code_size) uint8 -> a (n, W) view as words: one word when the code is 1, 2, 4 or 8
    bytes, else uint64 words when the code size is a multiple of 8, else bytes. No copy for contiguous codes."""
    c = np.ascontiguousarray(codes, dtype=np.uint8)
    if c.ndim != 2:
        raise ValueError(f"codes must be a 2-D uint8 array, got shape {c.shape}")
    cs = c.shape[1]
    if cs in (1, 2, 4, 8):
        dt = np.dtype({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[cs])
    else:
        dt = np.dtype(np.uint64) if cs % 8 == 0 else np.dtype(np.uint8)
    return c.view(dt)


# ---- threads --------------------------------------------------------------------------------------------
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def run_parallel(tasks: Sequence[Callable[[], object]]) -> list:
    """Run callables (compiled kernels release the GIL) on the shared thread pool; the first runs in the
    calling thread. Results in task order."""
    global _pool, _pool_size
    if len(tasks) <= 1:
        return [t() for t in tasks]
    want = threads()
    if _pool is None or _pool_size != want:
        _pool, _pool_size = ThreadPoolExecutor(max_workers=max(1, want), thread_name_prefix="attnhash-scan"), want
    futures = [_pool.submit(t) for t in tasks[1:]]
    first = tasks[0]()
    return [first] + [f.result() for f in futures]


def _splits(n: int, parts: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, parts + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


# ---- compiled kernels -------------------------------------------------------------------------------------
@jit
def _block_min(flat, s, e, q, W):
    """Smallest distance from q to codes s..e-1 (flat: the words of all codes, W per code)."""
    m = 1 << 20
    if W == 1:
        blk = flat[s:e]
        q0 = q[0]
        for j in range(blk.shape[0]):
            m = min(m, popcount(blk[j] ^ q0))
    else:
        blk = flat[s * W : e * W]
        for j in range(e - s):
            d = 0
            for w in range(W):
                d += popcount(blk[j * W + w] ^ q[w])
            m = min(m, d)
    return m


@jit
def _block_dist(flat, s, e, q, W, out):
    """Distances from q to codes s..e-1 into out[:e-s]."""
    if W == 1:
        blk = flat[s:e]
        q0 = q[0]
        for j in range(blk.shape[0]):
            out[j] = popcount(blk[j] ^ q0)
    else:
        blk = flat[s * W : e * W]
        for j in range(e - s):
            d = 0
            for w in range(W):
                d += popcount(blk[j * W + w] ^ q[w])
            out[j] = d


@jit
def _threshold(hist, k, bound):
    """The smallest distance t < bound at which the counts reach k, else bound."""
    c = 0
    for t in range(bound):
        c += hist[t]
        if c >= k:
            return t
    return bound


@jit
def _trim(cd, cp, m, hist, k, bound):
    """Keep the candidates that can still be in the top k (in position order): all closer than `bound`, and
    the first k - (count closer) at `bound`; the counts follow. Returns the new count."""
    below = 0
    for t in range(min(bound, hist.shape[0])):
        below += hist[t]
    need = k - below  # > 0 whenever bound is a threshold
    at = 0
    o = 0
    for i in range(m):
        d = cd[i]
        if d < bound or (d == bound and at < need):
            if d == bound:
                at += 1
            cd[o] = d
            cp[o] = cp[i]
            o += 1
    if bound < hist.shape[0]:
        hist[bound] = at
        for t in range(bound + 1, hist.shape[0]):
            hist[t] = 0
    return o


@jit
def _scan_topk(flat, W, q, k, lo, hi, nbits, cd, cp, hist, scratch, state):
    """Feed codes lo..hi-1 to one query's selection. state = [m, total, bound]; cd/cp hold the candidates in
    position order, hist their counts per distance. Returns early once k items at distance 0 are held."""
    m, total, bound = state[0], state[1], state[2]
    cap = cd.shape[0]
    for s in range(lo, hi, scratch.shape[0]):
        if bound == 0:
            break
        e = min(s + scratch.shape[0], hi)
        if _block_min(flat, s, e, q, W) >= bound:
            continue
        _block_dist(flat, s, e, q, W, scratch)
        for j in range(e - s):
            d = scratch[j]
            if d < bound:
                if m == cap:
                    m = _trim(cd, cp, m, hist, k, bound)
                cd[m] = d
                cp[m] = s + j
                m += 1
                hist[d] += 1
                total += 1
                if total >= k:
                    bound = _threshold(hist, k, bound)
                    if bound == 0:
                        break
    state[0] = m
    state[1] = total
    state[2] = bound


@jit
def _select_sorted(cd, cp, m, k, nbits, out_d, out_p):
    """From candidates in position order, the top k sorted by (distance, position) into out_d/out_p (padded
    with -1). A counting sort: stable, so equal distances keep position order."""
    hist = np.zeros(nbits + 2, np.int64)
    for i in range(m):
        hist[cd[i]] += 1
    t = _threshold(hist, k, nbits + 1)
    start = np.zeros(nbits + 2, np.int64)
    c = 0
    for d in range(nbits + 2):
        start[d] = c
        c += hist[d]
    need = k - start[t]
    at = 0
    written = 0
    for i in range(m):
        d = cd[i]
        if d < t or (d == t and at < need):
            if d == t:
                at += 1
            out_d[start[d]] = d
            out_p[start[d]] = cp[i]
            start[d] += 1
            written += 1
    for i in range(written, k):
        out_d[i] = -1
        out_p[i] = -1


@jit
def _topk_chunk(words, q, k, lo, hi, nbits):
    """One query over positions lo..hi-1: its top-k candidates in position order (distances, positions)."""
    W = words.shape[1]
    flat = words.reshape(words.shape[0] * W)
    cap = 2 * k + 64
    cd = np.empty(cap, np.int32)
    cp = np.empty(cap, np.int64)
    hist = np.zeros(nbits + 2, np.int64)
    scratch = np.empty(1024, np.int64)
    state = np.array([0, 0, nbits + 1], np.int64)
    _scan_topk(flat, W, q, k, lo, hi, nbits, cd, cp, hist, scratch, state)
    m = _trim(cd, cp, state[0], hist, k, state[2]) if state[1] >= k else state[0]
    return cd[:m].copy(), cp[:m].copy()


@jit
def _min1(blk, q0):
    """Smallest popcount(x ^ q0) over a block of one-word codes (the vectorised hot loop of a batch)."""
    m = 1 << 20
    for j in range(blk.shape[0]):
        m = min(m, popcount(blk[j] ^ q0))
    return m


@jit
def _topk_batch(words, qs, k, nbits, out_d, out_p):
    """Top-k of every query in qs, walking the database once in cache blocks (all queries per block)."""
    n, W = words.shape
    nq = qs.shape[0]
    flat = words.reshape(n * W)
    qflat = qs.reshape(nq * W)
    cap = 2 * k + 64
    cd = np.empty((nq, cap), np.int32)
    cp = np.empty((nq, cap), np.int64)
    hist = np.zeros((nq, nbits + 2), np.int64)
    state = np.zeros((nq, 3), np.int64)
    state[:, 2] = nbits + 1
    bound = np.full(nq, nbits + 1, np.int64)  # a copy of state[:, 2], read without making row views
    scratch = np.empty(4096, np.int64)
    for s in range(0, n, 4096):
        e = min(s + 4096, n)
        blk = flat[s:e] if W == 1 else flat[:0]
        live = 0
        for i in range(nq):
            b = bound[i]
            if b == 0:
                continue
            live += 1
            if W == 1 and _min1(blk, qflat[i]) >= b:  # most blocks end here
                continue
            _scan_topk(flat, W, qs[i], k, s, e, nbits, cd[i], cp[i], hist[i], scratch, state[i])
            bound[i] = state[i, 2]
        if live == 0:
            break
    for i in range(nq):
        _select_sorted(cd[i], cp[i], state[i, 0], k, nbits, out_d[i], out_p[i])


@jit
def grow(a, m, need):
    """`a` if it holds `need` rows, else a larger copy of its first m rows (the hot loops never reallocate:
    numba would then count references on every element)."""
    if need <= a.shape[0]:
        return a
    b = np.empty(max(need, 2 * a.shape[0]), a.dtype)
    b[:m] = a[:m]
    return b


@jit
def _emit(scratch, count, r, s, bd, bp, m):
    """Append (distance, position) of the block's codes at distance <= r; returns the new count. The hits of
    64 codes at a time become the bits of a mask (a vectorised comparison) and only the set bits are visited:
    no branch per code to mispredict when hits are frequent (clustered codes)."""
    full = count - count % 64
    for c in range(0, full, 64):
        mask = np.uint64(0)
        for t in range(64):
            mask |= np.uint64(scratch[c + t] <= r) << np.uint64(t)
        while mask != 0:
            low = mask & (~mask + np.uint64(1))
            j = c + popcount(low - np.uint64(1))
            bd[m] = scratch[j]
            bp[m] = s + j
            m += 1
            mask ^= low
    for j in range(full, count):
        d = scratch[j]
        if d <= r:
            bd[m] = d
            bp[m] = s + j
            m += 1
    return m


@jit
def _radius_chunk(words, q, r, lo, hi):
    """One query over positions lo..hi-1: every item at distance <= r, in position order."""
    W = words.shape[1]
    flat = words.reshape(words.shape[0] * W)
    bd = np.empty(1024, np.int32)
    bp = np.empty(1024, np.int64)
    m = 0
    scratch = np.empty(1024, np.int64)
    for s in range(lo, hi, 1024):
        e = min(s + 1024, hi)
        if _block_min(flat, s, e, q, W) > r:
            continue
        _block_dist(flat, s, e, q, W, scratch)
        bd = grow(bd, m, m + e - s)
        bp = grow(bp, m, m + e - s)
        m = _emit(scratch, e - s, r, s, bd, bp, m)
    return bd[:m].copy(), bp[:m].copy()


@jit
def _radius_batch(words, qs, r):
    """Every item at distance <= r of every query, the database walked once in cache blocks. Returns
    (offsets (nq+1), distances, positions) grouped by query and sorted by (distance, position)."""
    n, W = words.shape
    nq = qs.shape[0]
    flat = words.reshape(n * W)
    bq = np.empty(4096, np.int64)
    bd = np.empty(4096, np.int32)
    bp = np.empty(4096, np.int64)
    m = 0
    scratch = np.empty(4096, np.int64)
    for s in range(0, n, 4096):
        e = min(s + 4096, n)
        for i in range(nq):
            if _block_min(flat, s, e, qs[i], W) > r:
                continue
            _block_dist(flat, s, e, qs[i], W, scratch)
            bq = grow(bq, m, m + e - s)
            bd = grow(bd, m, m + e - s)
            bp = grow(bp, m, m + e - s)
            m0 = m
            m = _emit(scratch, e - s, r, s, bd, bp, m)
            bq[m0:m] = i
    # counting sort by (query, distance); within a key the entries are already in position order
    nkeys = nq * (r + 1)
    start = np.zeros(nkeys + 1, np.int64)
    for i in range(m):
        start[bq[i] * (r + 1) + bd[i] + 1] += 1
    for key in range(nkeys):
        start[key + 1] += start[key]
    offsets = np.empty(nq + 1, np.int64)
    for i in range(nq + 1):
        offsets[i] = start[i * (r + 1)]
    od = np.empty(m, np.int32)
    op = np.empty(m, np.int64)
    for i in range(m):
        key = bq[i] * (r + 1) + bd[i]
        od[start[key]] = bd[i]
        op[start[key]] = bp[i]
        start[key] += 1
    return offsets, od, op


@jit
def _sort_by_distance(d, p, nbits):
    """(distance, position) pairs in position order -> sorted by (distance, position): a counting sort."""
    start = np.zeros(nbits + 2, np.int64)
    for i in range(d.shape[0]):
        start[d[i] + 1] += 1
    for t in range(nbits + 1):
        start[t + 1] += start[t]
    od = np.empty(d.shape[0], np.int32)
    op = np.empty(d.shape[0], np.int64)
    for i in range(d.shape[0]):
        od[start[d[i]]] = d[i]
        op[start[d[i]]] = p[i]
        start[d[i]] += 1
    return od, op


def sort_by_distance(d: np.ndarray, p: np.ndarray, nbits: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable sort by distance of hits given in position order (compiled when available)."""
    if COMPILED:
        return _sort_by_distance(np.ascontiguousarray(d, np.int32), np.ascontiguousarray(p, np.int64), nbits)
    order = np.argsort(d, kind="stable")
    return d[order].astype(np.int32), p[order].astype(np.int64)


# ---- public scans --------------------------------------------------------------------------------------
def _prepare(codes: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    words = as_words(codes)
    q = as_words(np.ascontiguousarray(queries, dtype=np.uint8))
    if q.shape[1] != words.shape[1] or q.dtype != words.dtype:
        raise ValueError(f"queries of {queries.shape[1]} bytes do not fit codes of {codes.shape[1]} bytes")
    return words, q, codes.shape[1] * 8


def topk(codes: np.ndarray, queries: np.ndarray, k: int, parts: int | None = None
         ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k: (distances int32 (nq, k), positions int64 (nq, k)) sorted by (distance, position),
    padded with -1. Compiled when numba is available (on `parts` threads, default all), else NumPy."""
    if not COMPILED:
        return topk_numpy(codes, queries, k)
    k = int(k)
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    words, q, nbits = _prepare(codes, queries)
    n, nq = len(words), len(q)
    out_d = np.full((nq, k), -1, np.int32)
    out_p = np.full((nq, k), -1, np.int64)
    if n == 0 or nq == 0:
        return out_d, out_p
    t = parts or threads()
    if nq < t or nq == 1:
        parts = min(t, max(1, n // (SPLIT_MIN // 2))) if n >= SPLIT_MIN else 1
        ranges = _splits(n, parts)
        for i in range(nq):
            chunks = run_parallel([(lambda lo=lo, hi=hi, qi=q[i]: _topk_chunk(words, qi, k, lo, hi, nbits))
                                   for lo, hi in ranges])
            cd = np.concatenate([c[0] for c in chunks]) if len(chunks) > 1 else chunks[0][0]
            cp = np.concatenate([c[1] for c in chunks]) if len(chunks) > 1 else chunks[0][1]
            _select_sorted(cd, cp, len(cd), k, nbits, out_d[i], out_p[i])
        return out_d, out_p
    # bound the candidate buffers: (queries per call) x (2k + 64) entries
    per_call = max(1, min(-(-nq // t), (1 << 24) // (2 * k + 64)))
    spans = [(s, min(s + per_call, nq)) for s in range(0, nq, per_call)]
    run_parallel([(lambda a=a, b=b: _topk_batch(words, q[a:b], k, nbits, out_d[a:b], out_p[a:b]))
                  for a, b in spans])
    return out_d, out_p


def radius(codes: np.ndarray, queries: np.ndarray, r: int, parts: int | None = None
           ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every item within Hamming distance <= r of each query: [(distances int32, positions int64)] sorted by
    (distance, position). Compiled when numba is available (on `parts` threads, default all), else NumPy."""
    if not COMPILED:
        return radius_numpy(codes, queries, r)
    r = int(r)
    if r < 0:
        raise ValueError(f"radius must be >= 0, got {r}")
    words, q, nbits = _prepare(codes, queries)
    n, nq = len(words), len(q)
    if n == 0 or nq == 0:
        return [(np.zeros(0, np.int32), np.zeros(0, np.int64)) for _ in range(nq)]
    r = min(r, nbits)
    t = parts or threads()
    if nq < t or nq == 1:
        parts = min(t, max(1, n // (SPLIT_MIN // 2))) if n >= SPLIT_MIN else 1
        ranges = _splits(n, parts)
        out = []
        for i in range(nq):
            chunks = run_parallel([(lambda lo=lo, hi=hi, qi=q[i]: _radius_chunk(words, qi, r, lo, hi))
                                   for lo, hi in ranges])
            d = np.concatenate([c[0] for c in chunks]) if len(chunks) > 1 else chunks[0][0]
            p = np.concatenate([c[1] for c in chunks]) if len(chunks) > 1 else chunks[0][1]
            out.append(_sort_by_distance(d, p, nbits))
        return out
    spans = _splits(nq, t)
    parts = run_parallel([(lambda a=a, b=b: _radius_batch(words, q[a:b], r)) for a, b in spans])
    out = []
    for offsets, d, p in parts:
        out += [(d[offsets[i] : offsets[i + 1]], p[offsets[i] : offsets[i + 1]]) for i in range(len(offsets) - 1)]
    return out


# ---- the NumPy fallback (and the numpy backend's reference) ---------------------------------------------
def _numpy_distance_blocks(codes: np.ndarray, queries: np.ndarray):
    """Yield (query slice, distances (bq, n) uint8/uint16) over blocks of queries."""
    n, cs = codes.shape
    dt = word_dtype(cs)
    dbw = codes.view(dt) if n else np.zeros((0, max(1, cs // dt.itemsize)), dtype=dt)
    qw = np.ascontiguousarray(queries, dtype=np.uint8).view(dt)
    dist_dtype = np.uint8 if cs * 8 < 256 else np.uint16
    bq = max(1, _NUMPY_BLOCK_ELEMS // max(n, 1))
    for s in range(0, len(qw), bq):
        block = qw[s : s + bq]
        d = np.zeros((len(block), n), dtype=dist_dtype)
        for w in range(dbw.shape[1]):
            d += np_popcount(block[:, w : w + 1] ^ dbw[:, w]).astype(dist_dtype, copy=False)
        yield slice(s, s + len(block)), d


def numpy_distances(codes: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Full (nq, n) distance matrix in position order (int32)."""
    out = np.zeros((len(queries), len(codes)), dtype=np.int32)
    for sl, d in _numpy_distance_blocks(np.ascontiguousarray(codes), queries):
        out[sl] = d
    return out


def topk_numpy(codes: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by a counting select per query: count items per distance (bincount), find the threshold t where
    the running count reaches k, take every item closer than t and the first at t in position order, order
    them stably by distance."""
    codes = np.ascontiguousarray(codes)
    n, nbits = len(codes), codes.shape[1] * 8
    dist = np.full((len(queries), k), -1, dtype=np.int32)
    pos = np.full((len(queries), k), -1, dtype=np.int64)
    kk = min(k, n)
    if kk == 0:
        return dist, pos
    for sl, block in _numpy_distance_blocks(codes, queries):
        for row, d in zip(range(sl.start, sl.stop), block):
            counts = np.bincount(d, minlength=nbits + 1)
            t = int(np.searchsorted(np.cumsum(counts), kk))  # first distance where the count reaches kk
            closer = np.flatnonzero(d < t)
            at_t = np.flatnonzero(d == t)[: kk - len(closer)]
            sel = np.concatenate([closer, at_t])
            order = np.argsort(d[sel], kind="stable")  # stable: equal distances keep position order
            pos[row, :kk] = sel[order]
            dist[row, :kk] = d[sel[order]]
    return dist, pos


def radius_numpy(codes: np.ndarray, queries: np.ndarray, r: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every item at distance <= r, per query sorted by (distance, position)."""
    codes = np.ascontiguousarray(codes)
    out = [(np.zeros(0, np.int32), np.zeros(0, np.int64)) for _ in range(len(queries))]
    for sl, block in _numpy_distance_blocks(codes, queries):
        for row, d in zip(range(sl.start, sl.stop), block):
            p = np.flatnonzero(d <= r)
            order = np.argsort(d[p], kind="stable")
            out[row] = (d[p][order].astype(np.int32), p[order].astype(np.int64))
    return out

"""The distinct-code layer: each distinct code stored once, with the id-sorted list of the items that hold it.

Learned codes collapse: the demo's 64,000 database codes hold about 3,800 distinct values, the largest shared
by over 6,000 items, and almost every query has an exact match. A scan over codes keeps reading long after the
answer is certain; here the codes are grouped:

- `keys` (D, W): the distinct codes as uint64 words (zero-padded), in order of first appearance;
- an open-addressing hash table on the full code (key -> group), so the Hamming ball of radius r around a
  query is enumerated exactly by probing every code at distance 0, 1, ..., r (1 + 64 + 2016 probes for r = 2
  on 64-bit codes), each probe landing on one group and no false candidates;
- `group_of` (n): the group of every position (insertion order); the item lists are a CSR (`offsets`,
  `items`) built from it by a counting sort, so each list is sorted by position, i.e. by id order.

Top-k over groups: group counts are summed per distance; the k-th distance t follows from the counts; every
item of a group closer than t is in, and at distance t the lists of the groups at t are merged (a heap over
their heads) and the first k - (count closer) positions taken: exactly the (distance, position) order of a
flat scan. A radius query merges every level up to r.

Kept up to date by add (new codes get new groups, positions are appended; O(m)) and remove (positions are
renumbered as the code store compacts; O(n)); the CSR is rebuilt lazily on the next search (O(n + D)), and
the whole layer is rebuilt when more than half of its groups are empty.
"""

from __future__ import annotations

import threading
from math import comb

import numpy as np

from attnhash.index.compiled import AVAILABLE, jit, popcount
from attnhash.index.scan import _block_dist, _block_min, grow, run_parallel

__all__ = ["DistinctCodes", "AVAILABLE", "ball_size", "padded_words", "distinct_summary"]

_MAX_LOAD = 0.7  # hash-table load factor before it doubles


def ball_size(nbits: int, r: int) -> int:
    """Codes within Hamming distance r of a code of nbits bits (the probes of a radius-r ball)."""
    return sum(comb(nbits, i) for i in range(min(r, nbits) + 1))


def padded_words(codes: np.ndarray) -> np.ndarray:
    """Packed codes (n, code_size) uint8 -> (n, ceil(code_size/8)) uint64, zero-padded (a copy unless the code
    size is a multiple of 8)."""
    c = np.ascontiguousarray(codes, dtype=np.uint8)
    n, cs = c.shape
    if cs % 8 == 0:
        return c.view(np.uint64)
    out = np.zeros((n, -(-cs // 8) * 8), dtype=np.uint8)
    out[:, :cs] = c
    return out.view(np.uint64)


def distinct_summary(codes: np.ndarray) -> dict[str, int]:
    """Distinct codes and the size of the largest group of equal codes (NumPy; for `index info`)."""
    c = np.ascontiguousarray(codes, dtype=np.uint8)
    if len(c) == 0:
        return {"distinct_codes": 0, "largest_group": 0}
    rows = c.view(np.dtype((np.void, c.shape[1]))).ravel()
    _, counts = np.unique(rows, return_counts=True)
    return {"distinct_codes": int(len(counts)), "largest_group": int(counts.max())}


# ---- compiled kernels ----------------------------------------------------------------------------------
@jit
def _hash(key, W, shift):
    h = np.uint64(0)
    for w in range(W):
        h = (h ^ key[w]) * np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    return np.int64(h >> np.uint64(shift))


@jit
def _lookup(table, key, W, shift):
    """Group of `key`, or -1."""
    mask = table.shape[0] - 1
    i = _hash(key, W, shift)
    while True:
        g1 = table[i, W]
        if g1 == 0:
            return -1
        same = True
        for w in range(W):
            if table[i, w] != key[w]:
                same = False
                break
        if same:
            return np.int64(g1) - 1
        i = (i + 1) & mask


@jit
def _insert(table, key, W, shift, group):
    mask = table.shape[0] - 1
    i = _hash(key, W, shift)
    while table[i, W] != 0:
        i = (i + 1) & mask
    for w in range(W):
        table[i, w] = key[w]
    table[i, W] = np.uint64(group + 1)


@jit
def _add_codes(table, shift, keys, counts, d, words, group_of):
    """Group every code of `words` (finding or creating its group) into group_of; returns the new group count.
    The caller leaves room: keys/counts hold d + len(words) rows, the table stays below its load limit."""
    W = words.shape[1]
    for i in range(words.shape[0]):
        key = words[i]
        g = _lookup(table, key, W, shift)
        if g < 0:
            g = d
            keys[d] = key
            counts[d] = 0
            _insert(table, key, W, shift, d)
            d += 1
        counts[g] += 1
        group_of[i] = g
    return d


@jit
def _rehash(table, shift, keys, d):
    W = keys.shape[1]
    for g in range(d):
        _insert(table, keys[g], W, shift, g)


@jit
def _csr(group_of, d):
    """Item lists from the group of every position: a counting sort, so each list is in position order."""
    offsets = np.zeros(d + 1, np.int64)
    for i in range(group_of.shape[0]):
        offsets[group_of[i] + 1] += 1
    for g in range(d):
        offsets[g + 1] += offsets[g]
    fill = offsets[:-1].copy()
    items = np.empty(group_of.shape[0], np.int64)
    for i in range(group_of.shape[0]):
        g = group_of[i]
        items[fill[g]] = i
        fill[g] += 1
    return offsets, items


@jit
def _probe_level(table, W, shift, q, nbits, r, key, idx, fd, fg, m):
    """Look up every code at distance exactly r from q (r of its nbits bits flipped); write the groups found
    as (r, group) to fd/fg from m on (the caller leaves room for every group). Returns the new count."""
    if r == 0:
        g = _lookup(table, q, W, shift)
        if g >= 0:
            fd[m] = 0
            fg[m] = g
            m += 1
        return m
    for i in range(r):
        idx[i] = i
    while True:
        for w in range(W):
            key[w] = q[w]
        for i in range(r):
            b = idx[i]
            key[b >> 6] ^= np.uint64(1) << np.uint64(b & 63)
        g = _lookup(table, key, W, shift)
        if g >= 0:
            fd[m] = r
            fg[m] = g
            m += 1
        # next combination of r positions out of nbits (lexicographic)
        i = r - 1
        while i >= 0 and idx[i] == nbits - r + i:
            i -= 1
        if i < 0:
            break
        idx[i] += 1
        for j in range(i + 1, r):
            idx[j] = idx[j - 1] + 1
    return m


@jit
def _ball_groups(table, W, shift, q, nbits, r, key, idx, fd, fg, m, groups):
    """_probe_level with room made first: at most min(C(nbits, r), groups) more entries."""
    c = 1
    for i in range(r):
        c = c * (nbits - i) // (i + 1)
        if c > groups:
            c = groups
            break
    fd = grow(fd, m, m + c)
    fg = grow(fg, m, m + c)
    m = _probe_level(table, W, shift, q, nbits, r, key, idx, fd, fg, m)
    return fd, fg, m


@jit
def _heap_merge(gs, take, offsets, items, out_p, o):
    """The `take` smallest positions of the union of the (sorted, disjoint) item lists of groups gs, ascending,
    into out_p[o:o+take]: a heap over the lists' heads."""
    ng = gs.shape[0]
    heads = np.empty(ng, np.int64)  # next index into items of each list
    ends = np.empty(ng, np.int64)
    heap = np.empty(ng, np.int64)  # list numbers, a min-heap on items[heads[list]]
    h = 0
    for j in range(ng):
        heads[j] = offsets[gs[j]]
        ends[j] = offsets[gs[j] + 1]
        if heads[j] < ends[j]:
            c = h
            heap[h] = j
            h += 1
            while c > 0:
                p = (c - 1) >> 1
                if items[heads[heap[p]]] > items[heads[heap[c]]]:
                    heap[p], heap[c] = heap[c], heap[p]
                    c = p
                else:
                    break
    for t in range(take):
        j = heap[0]
        out_p[o + t] = items[heads[j]]
        heads[j] += 1
        if heads[j] == ends[j]:
            h -= 1
            heap[0] = heap[h]
        c = 0
        while True:
            left = 2 * c + 1
            if left >= h:
                break
            s = left
            if left + 1 < h and items[heads[heap[left + 1]]] < items[heads[heap[left]]]:
                s = left + 1
            if items[heads[heap[s]]] < items[heads[heap[c]]]:
                heap[s], heap[c] = heap[c], heap[s]
                c = s
            else:
                break


@jit
def _bitmap_merge(gs, take, offsets, items, out_p, o, bitmap):
    """As _heap_merge, through a bitmap over positions (all zero before and after): set a bit per item, read
    the words in order. Cheaper than the heap when the lists are long compared with the bitmap."""
    lo = bitmap.shape[0]
    hi = 0
    for j in range(gs.shape[0]):
        for x in range(offsets[gs[j]], offsets[gs[j] + 1]):
            p = items[x]
            w = p >> 6
            bitmap[w] |= np.uint64(1) << np.uint64(p & 63)
            lo = min(lo, w)
            hi = max(hi, w)
    t = 0
    for w in range(lo, hi + 1):
        x = bitmap[w]
        if x == 0:
            continue
        bitmap[w] = 0
        while x != 0 and t < take:
            low = x & (~x + np.uint64(1))
            out_p[o + t] = (w << 6) + popcount(low - np.uint64(1))
            t += 1
            x ^= low
        if t == take:
            for v in range(w + 1, hi + 1):
                bitmap[v] = 0
            break


@jit
def _merge_level(gs, total, take, offsets, items, out_p, o, bitmap):
    """The `take` smallest positions of groups gs (holding `total` items) into out_p[o:o+take], ascending
    (through the bitmap when one is given and it is cheaper than the heap)."""
    ng = gs.shape[0]
    if ng == 1:
        a = offsets[gs[0]]
        out_p[o : o + take] = items[a : a + take]
        return
    log2 = 1
    while (1 << log2) < ng:
        log2 += 1
    if bitmap.shape[0] > 0 and 2 * total + bitmap.shape[0] // 8 < 4 * take * log2:
        _bitmap_merge(gs, take, offsets, items, out_p, o, bitmap)
    else:
        _heap_merge(gs, take, offsets, items, out_p, o)


@jit
def _expand_topk(fd, fg, m, counts, offsets, items, k, nbits, out_d, out_p):
    """Groups found (distance fd, group fg; at least every group at or below the k-th distance among them) ->
    the top k items sorted by (distance, position) into out_d/out_p, padded with -1 (at most k items taken:
    the heap merge, no bitmap)."""
    bitmap = np.empty(0, np.uint64)
    hist = np.zeros(nbits + 2, np.int64)
    for i in range(m):
        hist[fd[i]] += counts[fg[i]]
    c = 0
    t = nbits + 1
    for d in range(nbits + 1):
        c += hist[d]
        if c >= k:
            t = d
            break
    o = 0
    level = np.empty(m, np.int64)
    for d in range(min(t, nbits) + 1):
        if hist[d] == 0:
            continue
        ng = 0
        for i in range(m):
            if fd[i] == d and counts[fg[i]] > 0:
                level[ng] = fg[i]
                ng += 1
        take = min(hist[d], k - o)
        _merge_level(level[:ng], hist[d], take, offsets, items, out_p, o, bitmap)
        out_d[o : o + take] = d
        o += take
        if o >= k:
            break
    for i in range(o, k):
        out_d[i] = -1
        out_p[i] = -1


@jit
def _expand_into(fd, fg, m, counts, offsets, items, r, bitmap, out_d, out_p, o):
    """Groups within distance r -> every item, sorted by (distance, position), written from out[o] on;
    returns the new end."""
    hist = np.zeros(r + 1, np.int64)
    for i in range(m):
        if fd[i] <= r:
            hist[fd[i]] += counts[fg[i]]
    level = np.empty(m, np.int64)
    for d in range(r + 1):
        if hist[d] == 0:
            continue
        ng = 0
        for i in range(m):
            if fd[i] == d and counts[fg[i]] > 0:
                level[ng] = fg[i]
                ng += 1
        _merge_level(level[:ng], hist[d], hist[d], offsets, items, out_p, o, bitmap)
        out_d[o : o + hist[d]] = d
        o += hist[d]
    return o


@jit
def _probe_topk(table, shift, counts, offsets, items, n, qs, k, nbits, rmax, out_d, out_p, resolved):
    """Per query: probe the Hamming ball radius by radius (0, 1, ... rmax) until the groups found hold k items;
    then the answer is certain and expanded into out rows. A query that finds nothing within radius 1 stops
    probing there (its neighbourhood is empty: a scan will answer it). resolved[i] says which were answered."""
    W = qs.shape[1]
    key = np.empty(W, np.uint64)
    idx = np.empty(max(rmax, 1), np.int64)
    fd = np.empty(64, np.int32)
    fg = np.empty(64, np.int64)
    for i in range(qs.shape[0]):
        m = 0
        total = 0
        resolved[i] = False
        for r in range(rmax + 1):
            before = m
            fd, fg, m = _ball_groups(table, W, shift, qs[i], nbits, r, key, idx, fd, fg, m, counts.shape[0])
            for j in range(before, m):
                total += counts[fg[j]]
            if total >= k:
                _expand_topk(fd, fg, m, counts, offsets, items, k, nbits, out_d[i], out_p[i])
                resolved[i] = True
                break
            if r >= 1 and total == 0:
                break


@jit
def _probe_groups(table, shift, counts, qs, nbits, r):
    """Every group within radius r of every query by probing the ball: (offsets (nq+1), distances, groups)."""
    W = qs.shape[1]
    key = np.empty(W, np.uint64)
    idx = np.empty(max(r, 1), np.int64)
    nq = qs.shape[0]
    off = np.zeros(nq + 1, np.int64)
    fd = np.empty(1024, np.int32)
    fg = np.empty(1024, np.int64)
    m = 0
    for i in range(nq):
        for rr in range(r + 1):
            fd, fg, m = _ball_groups(table, W, shift, qs[i], nbits, rr, key, idx, fd, fg, m, counts.shape[0])
        off[i + 1] = m
    return off, fd[:m].copy(), fg[:m].copy()


@jit
def _probe_count(table, shift, qs, nbits, r):
    """Groups found within radius r, summed over the queries (times the probes alone)."""
    W = qs.shape[1]
    key = np.empty(W, np.uint64)
    idx = np.empty(max(r, 1), np.int64)
    fd = np.empty(1024, np.int32)
    fg = np.empty(1024, np.int64)
    total = 0
    for i in range(qs.shape[0]):
        m = 0
        for rr in range(r + 1):
            fd, fg, m = _ball_groups(table, W, shift, qs[i], nbits, rr, key, idx, fd, fg, m, 1 << 40)
        total += m
    return total


@jit
def _emit_groups(scratch, count, b, s, counts, bd, bg, m):
    for j in range(count):
        if scratch[j] <= b and counts[s + j] > 0:
            bd[m] = scratch[j]
            bg[m] = s + j
            m += 1
    return m


@jit
def _collect_groups(keys, counts, qs, bound):
    """Every group within distance bound[i] of query i, walking the distinct codes once in cache blocks:
    (offsets (nq+1), distances, groups) grouped by query, each query's groups in group order."""
    d_groups, W = keys.shape
    flat = keys.reshape(d_groups * W)
    nq = qs.shape[0]
    bq = np.empty(1024, np.int64)
    bd = np.empty(1024, np.int32)
    bg = np.empty(1024, np.int64)
    m = 0
    scratch = np.empty(4096, np.int64)
    for s in range(0, d_groups, 4096):
        e = min(s + 4096, d_groups)
        for i in range(nq):
            b = bound[i]
            if _block_min(flat, s, e, qs[i], W) > b:
                continue
            _block_dist(flat, s, e, qs[i], W, scratch)
            bq = grow(bq, m, m + e - s)
            bd = grow(bd, m, m + e - s)
            bg = grow(bg, m, m + e - s)
            m0 = m
            m = _emit_groups(scratch, e - s, b, s, counts, bd, bg, m)
            bq[m0:m] = i
    off = np.zeros(nq + 1, np.int64)
    for x in range(m):
        off[bq[x] + 1] += 1
    for i in range(nq):
        off[i + 1] += off[i]
    fill = off[:-1].copy()
    od = np.empty(m, np.int32)
    og = np.empty(m, np.int64)
    for x in range(m):
        od[fill[bq[x]]] = bd[x]
        og[fill[bq[x]]] = bg[x]
        fill[bq[x]] += 1
    return off, od, og


@jit
def _group_threshold(keys, counts, qs, k, nbits):
    """Per query, the k-th smallest distance over the distinct codes weighted by their group sizes (nbits when
    fewer than k items): one pass in cache blocks, counting per distance only what can still be at or below
    the threshold found so far; a query stops once its exact match holds k items."""
    d_groups, W = keys.shape
    flat = keys.reshape(d_groups * W)
    nq = qs.shape[0]
    hist = np.zeros((nq, nbits + 2), np.int64)
    bound = np.full(nq, nbits, np.int64)
    total = np.zeros(nq, np.int64)
    scratch = np.empty(4096, np.int64)
    for s in range(0, d_groups, 4096):
        e = min(s + 4096, d_groups)
        live = 0
        for i in range(nq):
            b = bound[i]
            if b == 0 and total[i] >= k:
                continue
            live += 1
            if _block_min(flat, s, e, qs[i], W) > b:
                continue
            _block_dist(flat, s, e, qs[i], W, scratch)
            for j in range(e - s):
                if scratch[j] <= b:
                    hist[i, scratch[j]] += counts[s + j]
                    total[i] += counts[s + j]
            if total[i] >= k:
                c = 0
                for t in range(b + 1):
                    c += hist[i, t]
                    if c >= k:
                        bound[i] = t
                        break
        if live == 0:
            break
    return bound


@jit
def _scan_groups_topk(keys, counts, offsets, items, n, qs, k, nbits, out_d, out_p):
    """Top-k over the distinct codes: the threshold distance in one pass, the groups at or below it in a
    second, then their item lists merged."""
    bound = _group_threshold(keys, counts, qs, k, nbits)
    off, gd, gg = _collect_groups(keys, counts, qs, bound)
    for i in range(qs.shape[0]):
        a, b = off[i], off[i + 1]
        _expand_topk(gd[a:b], gg[a:b], b - a, counts, offsets, items, k, nbits, out_d[i], out_p[i])


@jit
def _expand_radius_batch(off, gd, gg, counts, offsets, items, n, r, skip):
    """The groups of each query (off/gd/gg) -> every item within r: (offsets (nq+1), distances, positions);
    queries with skip[i] get an empty answer (answered elsewhere). The answer's size is known from the
    group sizes, so it is written once, in place."""
    nq = off.shape[0] - 1
    res_off = np.zeros(nq + 1, np.int64)
    largest = 0
    for i in range(nq):
        total = 0
        if not skip[i]:
            for x in range(off[i], off[i + 1]):
                if gd[x] <= r:
                    total += counts[gg[x]]
        res_off[i + 1] = res_off[i] + total
        largest = max(largest, total)
    nwords = (n >> 6) + 1
    # a bitmap over positions merges long lists faster than a heap: made when some answer is large enough
    bitmap = np.zeros(nwords, np.uint64) if 16 * largest > nwords else np.empty(0, np.uint64)
    out_d = np.empty(res_off[nq], np.int32)
    out_p = np.empty(res_off[nq], np.int64)
    for i in range(nq):
        if skip[i]:
            continue
        a, b = off[i], off[i + 1]
        _expand_into(gd[a:b], gg[a:b], b - a, counts, offsets, items, r, bitmap, out_d, out_p, res_off[i])
    return res_off, out_d, out_p


# ---- the layer ------------------------------------------------------------------------------------------
def _split(nq: int, parts: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, nq, max(1, min(parts, nq)) + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _per_query(parts) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for offsets, d, p in parts:
        out += [(d[offsets[i] : offsets[i + 1]], p[offsets[i] : offsets[i + 1]]) for i in range(len(offsets) - 1)]
    return out


class DistinctCodes:
    """Distinct codes, their groups of positions and a hash table on the full code (see the module docstring).

    Not safe for concurrent writers; concurrent searches are safe (the lazy CSR rebuild is locked).
    """

    def __init__(self, codes: np.ndarray) -> None:
        if not AVAILABLE:
            raise RuntimeError("the distinct-code layer needs numba")
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        self.code_size = codes.shape[1]
        self.nbits = 8 * self.code_size
        self.W = -(-self.code_size // 8)
        self._lock = threading.Lock()
        self._reset(len(codes))
        self.add(codes)

    def _reset(self, n_hint: int) -> None:
        cap = _table_size(n_hint)
        self._table = np.zeros((cap, self.W + 1), np.uint64)
        self._shift = 64 - (cap.bit_length() - 1)
        self._keys = np.zeros((max(n_hint, 16), self.W), np.uint64)
        self._counts = np.zeros(max(n_hint, 16), np.int64)
        self._d = 0
        self._group_of = np.zeros(max(n_hint, 16), np.int64)
        self._n = 0
        self._csr: tuple[np.ndarray, np.ndarray] | None = None

    # ---- size --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    @property
    def groups(self) -> int:
        """Groups held (including groups emptied by removals until the next rebuild)."""
        return self._d

    def stats(self) -> dict[str, int]:
        counts = self._counts[: self._d]
        return {"distinct_codes": int(np.count_nonzero(counts)), "largest_group": int(counts.max(initial=0))}

    def memory_bytes(self) -> int:
        csr = self._csr
        return (self._table.nbytes + self._keys.nbytes + self._counts.nbytes + self._group_of.nbytes
                + (csr[0].nbytes + csr[1].nbytes if csr is not None else 0))

    # ---- changes -----------------------------------------------------------------------------------------
    def add(self, codes: np.ndarray) -> None:
        """Append codes (their positions follow the ones held)."""
        m = len(codes)
        if m == 0:
            return
        words = padded_words(codes)
        need_d = self._d + m
        if need_d > len(self._keys):
            cap = max(need_d, len(self._keys) + len(self._keys) // 2)
            self._keys = _grown(self._keys, cap)
            self._counts = _grown(self._counts, cap)
        if need_d > len(self._table) * _MAX_LOAD:  # worst case: every code new
            cap = _table_size(need_d)
            self._table = np.zeros((cap, self.W + 1), np.uint64)
            self._shift = 64 - (cap.bit_length() - 1)
            _rehash(self._table, self._shift, self._keys, self._d)
        if self._n + m > len(self._group_of):
            self._group_of = _grown(self._group_of, max(self._n + m, len(self._group_of) * 3 // 2))
        self._d = _add_codes(self._table, self._shift, self._keys, self._counts, self._d, words,
                             self._group_of[self._n : self._n + m])
        self._n += m
        self._csr = None
        # the table was sized for every code being new: shrink it when they were not
        if len(self._table) >= 2 * _table_size(self._d) and len(self._table) > 1024:
            self._resize_table()

    def _resize_table(self) -> None:
        cap = _table_size(self._d)
        self._table = np.zeros((cap, self.W + 1), np.uint64)
        self._shift = 64 - (cap.bit_length() - 1)
        _rehash(self._table, self._shift, self._keys, self._d)

    def compact(self, keep: np.ndarray, codes_after: np.ndarray) -> None:
        """Positions where keep is False are removed and the rest renumbered (as the code store does);
        `codes_after` is the compacted code store, used when the layer is rebuilt from scratch."""
        group_of = self._group_of[: self._n][keep]
        self._n = len(group_of)
        self._group_of = group_of.copy() if len(group_of) else np.zeros(16, np.int64)
        self._counts[: self._d] = np.bincount(group_of, minlength=self._d)[: self._d]
        self._csr = None
        if np.count_nonzero(self._counts[: self._d]) < self._d // 2:
            self._reset(len(codes_after))
            self.add(codes_after)

    def _lists(self) -> tuple[np.ndarray, np.ndarray]:
        csr = self._csr
        if csr is None:
            with self._lock:
                if self._csr is None:
                    self._csr = _csr(self._group_of[: self._n], self._d)
                csr = self._csr
        return csr

    # ---- queries -----------------------------------------------------------------------------------------
    def queries(self, queries: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(padded_words(queries))

    def probe_topk(self, qw: np.ndarray, k: int, rmax: int, parts: int = 1):
        """Top-k by probing the ball of each query up to radius rmax: (distances, positions, resolved) where
        rows are filled only for resolved queries (those whose ball held k items)."""
        offsets, items = self._lists()
        nq = len(qw)
        out_d = np.full((nq, k), -1, np.int32)
        out_p = np.full((nq, k), -1, np.int64)
        resolved = np.zeros(nq, np.bool_)
        table, shift, counts = self._table, self._shift, self._counts[: self._d]
        run_parallel([(lambda a=a, b=b: _probe_topk(table, shift, counts, offsets, items, self._n, qw[a:b], k, self.nbits,
                                                   rmax, out_d[a:b], out_p[a:b], resolved[a:b]))
                      for a, b in _split(nq, parts)])
        return out_d, out_p, resolved

    def scan_topk(self, qw: np.ndarray, k: int, parts: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k by a scan over the distinct codes, merging item lists at the threshold distance."""
        offsets, items = self._lists()
        nq = len(qw)
        out_d = np.full((nq, k), -1, np.int32)
        out_p = np.full((nq, k), -1, np.int64)
        keys, counts = self._keys[: self._d], self._counts[: self._d]
        run_parallel([(lambda a=a, b=b: _scan_groups_topk(keys, counts, offsets, items, self._n, qw[a:b], k, self.nbits,
                                                         out_d[a:b], out_p[a:b]))
                      for a, b in _split(nq, parts)])
        return out_d, out_p

    def probe_count(self, qw: np.ndarray, r: int) -> int:
        """Probe the radius-r balls of the queries and count the groups found (to time the probes)."""
        return int(_probe_count(self._table, self._shift, qw, self.nbits, min(r, self.nbits)))

    def find_groups(self, qw: np.ndarray, r: int, how: str = "hash", parts: int = 1):
        """The groups within radius r of each query, by probing the ball ("hash") or scanning the distinct
        codes ("distinct"; also for "hash" when the ball holds more codes than there are groups):
        (offsets (nq+1), distances, groups)."""
        r = min(r, self.nbits)
        if how == "hash" and ball_size(self.nbits, r) > max(self._d, 1):
            how = "distinct"
        counts = self._counts[: self._d]
        spans = _split(len(qw), parts)
        if how == "hash":
            table, shift = self._table, self._shift
            found = run_parallel([(lambda a=a, b=b: _probe_groups(table, shift, counts, qw[a:b], self.nbits, r))
                                  for a, b in spans])
        else:
            keys = self._keys[: self._d]
            found = run_parallel([(lambda a=a, b=b: _collect_groups(keys, counts, qw[a:b],
                                                                    np.full(b - a, r, np.int64)))
                                  for a, b in spans])
        return _concat_found(found)

    def expand_radius(self, off, gd, gg, r: int, parts: int = 1, skip: np.ndarray | None = None
                      ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Groups found -> every item within radius r per query, sorted by (distance, position)."""
        offsets, items = self._lists()
        counts = self._counts[: self._d]
        nq = len(off) - 1
        skip = np.zeros(nq, np.bool_) if skip is None else np.asarray(skip, np.bool_)
        r = min(r, self.nbits)
        return _per_query(run_parallel([
            (lambda a=a, b=b: _expand_radius_batch(off[a : b + 1] - off[a], gd[off[a] : off[b]], gg[off[a] : off[b]],
                                                  counts, offsets, items, self._n, r, skip[a:b]))
            for a, b in _split(nq, parts)]))

    def probe_radius(self, qw: np.ndarray, r: int, parts: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
        """Exact radius search by probing every code of the radius-r ball."""
        off, gd, gg = self.find_groups(qw, r, "hash", parts)
        return self.expand_radius(off, gd, gg, r, parts)

    def scan_radius(self, qw: np.ndarray, r: int, parts: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
        """Exact radius search by a scan over the distinct codes."""
        off, gd, gg = self.find_groups(qw, r, "distinct", parts)
        return self.expand_radius(off, gd, gg, r, parts)


def _concat_found(found):
    if len(found) == 1:
        return found[0]
    offs, ds, gs, base = [np.zeros(1, np.int64)], [], [], 0
    for off, d, g in found:
        offs.append(off[1:] + base)
        base += len(d)
        ds.append(d)
        gs.append(g)
    return np.concatenate(offs), np.concatenate(ds), np.concatenate(gs)


def _table_size(groups: int) -> int:
    """Slots of a hash table for this many groups: a power of two, at most 70% full."""
    cap = 16
    while cap * _MAX_LOAD < max(groups, 8):
        cap *= 2
    return cap


def _grown(a: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows,) + a.shape[1:], dtype=a.dtype)
    out[: len(a)] = a
    return out


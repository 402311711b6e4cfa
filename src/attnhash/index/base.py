"""The `Index` interface shared by every backend, and the in-process storage (ids, metadata) of the local ones.

Conventions (all backends, checked against the numpy reference by the tests):
- codes are packed uint8 (n, bits/8), see `attnhash.codes`;
- `search(q, k)` returns (distances int32 (nq, k), ids int64 (nq, k)) sorted by distance, ties broken by
  insertion order; when fewer than k items exist the rows are padded with distance -1 and id -1;
- `range_search(q, r)` returns, per query, (distances int32, ids int64) of every item at distance <= r,
  in the same (distance, insertion order) order: the same (distances, ids) order as `search`;
- ids are unique int64 >= 0, chosen by the caller or assigned as consecutive integers after the largest ever
  used; removal keeps the order of the remaining items.
"""

from __future__ import annotations

import copy
import json
import os
import threading
from abc import ABC, abstractmethod
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np

from attnhash.atomic import remove_stale_temps
from attnhash.codes import as_packed, check_bits, code_bytes
from attnhash.errors import ConflictError, IndexFileError, StorageError
from attnhash.index.lock import check_not_locked_elsewhere

__all__ = ["Index", "LocalIndex", "RangeResult", "PAD", "MAX_ID"]

PAD = -1  # id and distance used to pad top-k rows when the index holds fewer than k items
MAX_ID = 2**63 - 1  # ids are int64
RangeResult = list[tuple[np.ndarray, np.ndarray]]


def _short(fp: str | None) -> str:
    return "(none)" if not fp else (fp[:12] + "…" if len(fp) > 12 else fp)


class Index(ABC):
    """A Hamming-distance index over packed binary codes with int64 ids and per-item metadata."""

    backend: ClassVar[str] = "?"

    def __init__(self, bits: int, fingerprint: str | None = None, info: dict[str, Any] | None = None) -> None:
        self._bits = check_bits(bits)
        self._code_size = code_bytes(self._bits)
        self._fingerprint = fingerprint or None
        self.info: dict[str, Any] = dict(info or {})  # index-level facts: class_names, run_dir, source, ...
        self.path: str | None = None  # the file it was loaded from or last saved to

    # ---- properties -----------------------------------------------------------------------------------
    @property
    def bits(self) -> int:
        return self._bits

    @property
    def code_size(self) -> int:
        return self._code_size

    @property
    def fingerprint(self) -> str | None:
        """Fingerprint of the model that produced the codes (sha256 hex), or None when unknown."""
        return self._fingerprint

    @fingerprint.setter
    def fingerprint(self, value: str | None) -> None:
        self._fingerprint = value or None

    @abstractmethod
    def __len__(self) -> int: ...

    # ---- mutation -------------------------------------------------------------------------------------
    @abstractmethod
    def add(self, codes: np.ndarray, ids: Sequence[int] | np.ndarray | None = None,
            metadata: Sequence[dict[str, Any] | None] | None = None) -> np.ndarray:
        """Append codes (packed uint8 or {-1,+1}); returns the int64 ids given to them."""

    @abstractmethod
    def remove(self, ids: Iterable[int] | np.ndarray) -> int:
        """Remove the items with these ids (unknown ids are ignored); returns how many were removed."""

    # ---- queries --------------------------------------------------------------------------------------
    @abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by Hamming distance: (distances int32 (nq, k), ids int64 (nq, k))."""

    @abstractmethod
    def range_search(self, queries: np.ndarray, radius: int) -> RangeResult:
        """Every item within Hamming distance <= radius: a list of (distances, ids) per query."""

    @abstractmethod
    def metadata(self, ids: Iterable[int] | np.ndarray) -> list[dict[str, Any]]:
        """Per-item metadata dicts (path, labels, ...) for these ids; KeyError names an unknown id."""

    @abstractmethod
    def reconstruct(self, ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """Packed codes (n, bits/8) of these ids; KeyError names an unknown id."""

    @abstractmethod
    def contains(self, ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """Boolean mask: which of these ids are in the index."""

    @abstractmethod
    def all_ids(self) -> np.ndarray:
        """All ids in insertion order."""

    def __contains__(self, item_id: object) -> bool:
        try:
            return bool(self.contains(np.asarray([item_id], dtype=np.int64))[0])
        except (TypeError, ValueError):
            return False

    def transaction(self):
        """A block whose changes are undone if it raises (LocalIndex). A backend that cannot undo its changes
        says so instead of pretending."""
        raise NotImplementedError(f"the {self.backend} backend cannot undo changes (no transactions)")

    # ---- persistence ----------------------------------------------------------------------------------
    @abstractmethod
    def save(self, path: str) -> None:
        """Write the index to one file atomically (temporary file in the same folder, fsync, rename)."""

    @classmethod
    @abstractmethod
    def load(cls, path: str, mmap: bool = True, verify: bool = True, **kwargs: Any) -> Index:
        """Read an index file written by any backend's `save`."""

    # ---- helpers shared by all backends ---------------------------------------------------------------
    def _new_ids(self, ids, m: int, metadata) -> np.ndarray:
        """The ids of m items being added (given, or the next free ones), refused when they are negative,
        repeat, or are already in the index; also checks the metadata count."""
        if metadata is not None and len(metadata) != m:
            raise ValueError(f"got {len(metadata)} metadata entries for {m} codes")
        if ids is None:
            if self._next_id + m > MAX_ID:  # the next id must still fit in int64 afterwards
                raise ValueError(f"no ids left: the next id is {self._next_id}, {m} more would pass 2^63-1")
            return np.arange(self._next_id, self._next_id + m, dtype=np.int64)
        new_ids = _as_ids(ids)
        if m and new_ids.max() >= MAX_ID:
            raise ValueError(f"ids must be below 2^63-1 (the next id must fit in int64), got {new_ids.max()}")
        if len(new_ids) != m:
            raise ValueError(f"got {len(new_ids)} ids for {m} codes")
        if m and new_ids.min() < 0:
            raise ValueError("ids must be >= 0 (-1 pads search results)")
        if len(np.unique(new_ids)) != m:
            raise ValueError("ids given to add() repeat")
        low = new_ids[new_ids < self._next_id]  # ids at or above next_id cannot be present yet
        present = low[self.contains(low)] if len(low) else low
        if len(present):
            raise ValueError(f"ids already in the index: {present[:5].tolist()}")
        return new_ids

    def check_fingerprint(self, query_fingerprint: str | None, what: str = "the query model") -> None:
        """Refuse queries from a model other than the one that built the index (IndexFileError)."""
        if self._fingerprint and query_fingerprint and self._fingerprint != query_fingerprint:
            name = self.path or f"<{self.backend} index>"
            raise IndexFileError(
                f"index {name} was built by model with fingerprint {_short(self._fingerprint)}, "
                f"{what} is {_short(query_fingerprint)}; rebuild the index with this model or query with the "
                "model that built it"
            )

    def stats(self) -> dict[str, Any]:
        """A JSON-able summary (for `index info` and the service's /api/stats)."""
        return {
            "backend": self.backend,
            "count": len(self),
            "bits": self.bits,
            "fingerprint": self.fingerprint,
            "path": self.path,
            "info": self.info,
        }

    def _queries(self, queries: np.ndarray) -> np.ndarray:
        """Queries as C-contiguous packed uint8 (nq, code_size); a single 1-D code is one query."""
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q.reshape(1, -1)
        if q.dtype == np.uint8 and q.ndim == 2 and q.shape[1] == self._code_size:
            return q if q.flags.c_contiguous else np.ascontiguousarray(q)
        try:
            return as_packed(q, self._bits)
        except ValueError as err:
            raise ValueError(f"queries do not fit a {self._bits}-bit index: {err}") from None

    def _codes_in(self, codes: np.ndarray) -> np.ndarray:
        c = np.asarray(codes)
        if c.ndim == 1 and c.dtype == np.uint8 and c.size == self._code_size:
            c = c.reshape(1, -1)
        if c.dtype == np.uint8 and c.ndim == 2 and c.shape[1] == self._code_size:
            return np.ascontiguousarray(c)
        try:
            return as_packed(c, self._bits)
        except ValueError as err:
            raise ValueError(f"codes do not fit a {self._bits}-bit index: {err}") from None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} bits={self.bits} n={len(self)} fingerprint={_short(self.fingerprint)}>"


def _as_ids(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype == object and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in arr.flat):
        raise ValueError(f"ids must be integers from 0 to 2^63-1, got {max(arr.flat, key=abs)}")  # beyond 64 bits
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"ids must be integers, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and (arr > MAX_ID).any():
        raise ValueError(f"ids must be integers from 0 to 2^63-1, got {int(arr.max())}")
    return arr.astype(np.int64, copy=False).ravel()


class Column:
    """A growable array (1-D or 2-D) that starts as any array, possibly a read-only memory map.

    Appends copy into a private buffer grown by 1.5x (amortised O(1)); compaction keeps a boolean mask.
    """

    def __init__(self, data: np.ndarray) -> None:
        self._buf = data
        self._n = len(data)

    def __len__(self) -> int:
        return self._n

    @property
    def view(self) -> np.ndarray:
        return self._buf[: self._n]

    def extend(self, values: np.ndarray) -> None:
        m = len(values)
        if m == 0:
            return
        need = self._n + m
        if need > len(self._buf) or not self._buf.flags.writeable:
            cap = need if self._n == 0 else max(need, self._n + self._n // 2)
            buf = np.empty((cap,) + self._buf.shape[1:], dtype=self._buf.dtype)
            buf[: self._n] = self._buf[: self._n]
            self._buf = buf
        self._buf[self._n : need] = values
        self._n = need

    def compact(self, keep: np.ndarray) -> None:
        self._buf = np.ascontiguousarray(self.view[keep])
        self._n = len(self._buf)

    # Appends write past the end (or into a new buffer) and compaction makes a new buffer, so the first n
    # rows of a buffer never change once written: (buffer, n) is enough to undo either.
    def state(self) -> tuple[np.ndarray, int]:
        return self._buf, self._n

    def restore(self, state: tuple[np.ndarray, int]) -> None:
        self._buf, self._n = state


class MetadataStore:
    """Per-item metadata as compact JSON blobs: an offsets array (n+1) over a byte buffer.

    The buffer is a base segment (possibly memory-mapped from the index file) followed by appended bytes, so
    loading is O(1) and reading one item decodes only that item. Items without metadata cost nothing until
    the first item with metadata arrives (then an offsets array is made).

    Appended bytes are kept as immutable chunks, merged as they accumulate (two neighbours of similar size
    become one, so there are O(log n) chunks and each byte is copied O(log n) times). Immutable, because a
    save exports them to the writer: a bytearray exported by a failed save (its traceback still alive) could
    never be resized again, and every later add would fail half-way.
    """

    def __init__(self, n: int = 0, offsets: np.ndarray | None = None, blob: np.ndarray | None = None) -> None:
        self._n = n
        self._offsets = Column(offsets) if offsets is not None else None
        self._base = blob if blob is not None else np.zeros(0, dtype=np.uint8)
        self._chunks: list[bytes] = []
        self._ends: list[int] = []  # end of each chunk, counted from the end of the base segment

    def __len__(self) -> int:
        return self._n

    @property
    def empty(self) -> bool:
        return self._offsets is None

    @property
    def _extra_len(self) -> int:
        return self._ends[-1] if self._ends else 0

    @property
    def nbytes(self) -> int:
        return len(self._base) + self._extra_len

    def _bytes(self, start: int, end: int) -> bytes:
        b0 = len(self._base)
        if end <= b0:
            return self._base[start:end].tobytes()
        parts = []
        if start < b0:
            parts.append(self._base[start:].tobytes())
            start = b0
        s, e = start - b0, end - b0
        i = bisect_right(self._ends, s)  # the chunk that holds byte s
        while s < e:
            first = self._ends[i - 1] if i else 0
            take = self._chunks[i][s - first : min(e, self._ends[i]) - first]
            parts.append(take)
            s += len(take)
            i += 1
        return parts[0] if len(parts) == 1 else b"".join(parts)

    @staticmethod
    def encode(metas: Sequence[dict[str, Any] | None] | None) -> list[bytes]:
        """The JSON blobs of these items (b"" for none); raises before anything is stored."""
        return [b"" if not md else _json_bytes(md) for md in (metas or ())]

    def append(self, metas: Sequence[dict[str, Any] | None] | None, m: int,
               blobs: list[bytes] | None = None) -> None:
        if metas is not None and len(metas) != m:
            raise ValueError(f"got {len(metas)} metadata entries for {m} codes")
        if blobs is None:
            blobs = self.encode(metas)
        if self._offsets is None:
            if not any(blobs):
                self._n += m
                return
            self._offsets = Column(np.zeros(self._n + 1, dtype=np.uint64))
        if not blobs:
            blobs = [b""] * m
        lengths = np.fromiter((len(b) for b in blobs), dtype=np.uint64, count=m)
        end = int(self._offsets.view[-1])
        self._offsets.extend(end + np.cumsum(lengths, dtype=np.uint64))
        joined = b"".join(blobs)
        if joined:
            self._chunks.append(joined)
            self._ends.append(self._extra_len + len(joined))
            while len(self._chunks) > 1 and len(self._chunks[-2]) <= len(self._chunks[-1]):
                last = self._chunks.pop()
                self._ends.pop()
                self._chunks[-1] += last
                self._ends[-1] += len(last)
        self._n += m

    def get(self, positions: Iterable[int]) -> list[dict[str, Any]]:
        if self._offsets is None:
            return [{} for _ in positions]
        off = self._offsets.view
        out = []
        for p in positions:
            start, end = int(off[p]), int(off[p + 1])
            if not 0 <= start <= end <= self.nbytes:  # only an unverified, corrupted file gets here
                raise IndexFileError(f"index metadata of the item at position {int(p)} is corrupted (offsets "
                                     f"{start}..{end} outside its {self.nbytes} bytes)")
            raw = self._bytes(start, end)
            try:
                md = json.loads(raw) if raw else {}
            except ValueError:
                md = None
            if not isinstance(md, dict):
                raise IndexFileError(f"index metadata of the item at position {int(p)} is corrupted (not a JSON "
                                     "object)")
            out.append(md)
        return out

    def compact(self, keep: np.ndarray) -> None:
        """Keep only the items where `keep` is True, in order."""
        kept = np.flatnonzero(keep)
        self._n = len(kept)
        if self._offsets is None:
            return
        off = self._offsets.view
        lengths = (off[1:] - off[:-1])[kept]
        new_blob = bytearray()
        if len(kept):
            # copy runs of consecutive kept items in one slice each: O(removed) Python steps
            breaks = np.flatnonzero(np.diff(kept) != 1)
            starts = np.concatenate([[0], breaks + 1])
            ends = np.concatenate([breaks, [len(kept) - 1]])
            for a, b in zip(kept[starts], kept[ends]):
                new_blob += self._bytes(int(off[a]), int(off[b + 1]))
        new_off = np.zeros(len(kept) + 1, dtype=np.uint64)
        np.cumsum(lengths, out=new_off[1:])
        self._offsets = Column(new_off)
        self._base = np.frombuffer(bytes(new_blob), dtype=np.uint8)
        self._chunks, self._ends = [], []

    def offsets_array(self) -> np.ndarray | None:
        return None if self._offsets is None else self._offsets.view

    def blob_segments(self) -> list[memoryview | bytes]:
        """The byte buffer as segments to write one after another."""
        return [memoryview(np.ascontiguousarray(self._base)).cast("B"), *self._chunks]

    def state(self) -> tuple:
        """What `restore` needs to undo every later append or compaction (O(log n): references only)."""
        offsets = None if self._offsets is None else self._offsets.state()
        return self._n, offsets, self._base, tuple(self._chunks), tuple(self._ends)

    def restore(self, state: tuple) -> None:
        self._n, offsets, self._base, chunks, ends = state
        self._chunks, self._ends = list(chunks), list(ends)
        if offsets is None:
            self._offsets = None
        else:
            self._offsets = Column(offsets[0])
            self._offsets.restore(offsets)


def _json_bytes(md: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON of one item's metadata. A file name with bytes that are not UTF-8 (held by Python as
    lone surrogates) is written with JSON escapes, which read back to the same name."""
    try:
        return json.dumps(md, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(md, separators=(",", ":")).encode()


class IdMap:
    """id -> position lookup on sorted arrays (1e7 ids cost 160 MB here, built only when first needed)."""

    def __init__(self, ids: np.ndarray) -> None:
        self.order = np.argsort(ids, kind="stable").astype(np.int64)
        self.sorted = ids[self.order]
        if len(ids) > 1 and (self.sorted[1:] == self.sorted[:-1]).any():  # only a corrupted file gets here
            dup = self.sorted[1:][self.sorted[1:] == self.sorted[:-1]][:3].tolist()
            raise IndexFileError(f"index is corrupted: ids {dup} appear more than once")

    # appended() and compacted() replace the arrays, never write into them: (order, sorted) undoes both
    def state(self) -> tuple[np.ndarray, np.ndarray]:
        return self.order, self.sorted

    @classmethod
    def restored(cls, state: tuple[np.ndarray, np.ndarray]) -> IdMap:
        idmap = cls.__new__(cls)
        idmap.order, idmap.sorted = state
        return idmap

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Positions of `ids`, -1 where absent."""
        if len(self.sorted) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        j = np.searchsorted(self.sorted, ids)
        j = np.minimum(j, len(self.sorted) - 1)
        found = self.sorted[j] == ids
        return np.where(found, self.order[j], -1)

    def appended(self, new_ids: np.ndarray, first_position: int) -> bool:
        """Extend in place when every new id is larger than all present (the usual case); else False."""
        if len(new_ids) and len(self.sorted) and new_ids.min() <= self.sorted[-1]:
            return False
        o = np.argsort(new_ids, kind="stable")
        self.sorted = np.concatenate([self.sorted, new_ids[o]])
        self.order = np.concatenate([self.order, first_position + o.astype(np.int64)])
        return True

    def compacted(self, keep: np.ndarray) -> None:
        """Drop removed positions and renumber the rest (O(n), no sort)."""
        new_pos = np.cumsum(keep, dtype=np.int64) - 1
        k = keep[self.order]
        self.order = new_pos[self.order[k]]
        self.sorted = self.sorted[k]


class LocalIndex(Index):
    """Shared storage of the in-process backends: ids and metadata columns in insertion order.

    Backends keep the codes (`_store_codes`, `_compact_codes`, `_codes_view`) and answer queries by position
    (`_search_positions`, `_range_positions`); this class maps positions to ids.
    """

    def __init__(self, bits: int, fingerprint: str | None = None, info: dict[str, Any] | None = None) -> None:
        super().__init__(bits, fingerprint, info)
        self._ids = Column(np.zeros(0, dtype=np.int64))
        self._meta = MetadataStore()
        self._idmap: IdMap | None = None
        self._idmap_lock = threading.Lock()  # concurrent readers may all ask for the lazily built map
        self._next_id = 0
        self._transactions: list[_Snapshot] = []  # open transactions, innermost last
        self._file_state: tuple | None = None  # identity of the file at self.path when loaded or last saved

    # ---- backend hooks ----------------------------------------------------------------------------------
    @abstractmethod
    def _store_codes(self, codes: np.ndarray) -> None: ...

    @abstractmethod
    def _compact_codes(self, keep: np.ndarray) -> None: ...

    @abstractmethod
    def _codes_view(self) -> np.ndarray:
        """All codes (n, code_size) in insertion order, without copying where possible."""

    @abstractmethod
    def _search_positions(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    @abstractmethod
    def _range_positions(self, q: np.ndarray, radius: int) -> list[tuple[np.ndarray, np.ndarray]]: ...

    # ---- Index ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    @property
    def next_id(self) -> int:
        return self._next_id

    def all_ids(self) -> np.ndarray:
        return self._ids.view

    def _map(self) -> IdMap:
        idmap = self._idmap
        if idmap is None:
            with self._idmap_lock:
                if self._idmap is None:
                    try:
                        self._idmap = IdMap(self._ids.view)
                    except IndexFileError as err:
                        raise IndexFileError(str(err).replace("index is", f"index {self.path or ''} is", 1)) from None
                idmap = self._idmap
        return idmap

    def _positions(self, ids: Iterable[int] | np.ndarray, strict: bool = True) -> np.ndarray:
        arr = _as_ids(ids)
        pos = self._map().lookup(arr)
        if strict and (pos < 0).any():
            missing = arr[pos < 0][:5].tolist()
            raise KeyError(f"unknown id(s) {missing} in index {self.path or ''}".rstrip())
        return pos

    def add(self, codes: np.ndarray, ids: Sequence[int] | np.ndarray | None = None,
            metadata: Sequence[dict[str, Any] | None] | None = None) -> np.ndarray:
        c = self._codes_in(codes)
        m = len(c)
        new_ids = self._new_ids(ids, m, metadata)
        if m == 0:
            return new_ids
        blobs = MetadataStore.encode(metadata)  # a metadata value JSON cannot hold fails here, before any change
        with self.transaction():  # all or nothing, even on MemoryError half-way
            first = len(self._ids)
            self._store_codes(c)
            self._ids.extend(new_ids)
            self._meta.append(metadata, m, blobs)
            if self._idmap is not None and not self._idmap.appended(new_ids, first):
                self._idmap = None
            self._next_id = max(self._next_id, int(new_ids.max()) + 1)
        return new_ids

    def remove(self, ids: Iterable[int] | np.ndarray) -> int:
        pos = self._positions(ids, strict=False)
        pos = np.unique(pos[pos >= 0])
        if len(pos) == 0:
            return 0
        keep = np.ones(len(self), dtype=bool)
        keep[pos] = False
        with self.transaction():
            for snap in self._transactions:  # compaction rewrites the codes: keep what the snapshots need
                if snap.codes is None:
                    snap.codes = np.array(self._codes_view()[: snap.n])
            self._compact_codes(keep)
            self._ids.compact(keep)
            self._meta.compact(keep)
            if self._idmap is not None:
                self._idmap.compacted(keep)
        return len(pos)

    # ---- all-or-nothing changes -----------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[LocalIndex]:
        """Changes made inside the block are undone, exactly, if it raises: codes, ids, metadata, next id,
        info and fingerprint. Pair a change with its save to make both one step:

            with index.transaction():
                index.add(codes, metadata=metas)
                index.save(path)        # if this fails, the index in memory is as before the block

        Taking the snapshot costs references only; the first removal inside the block copies the codes it
        may have to put back (a removal rewrites them anyway). Not thread-safe: the caller serialises writers.
        """
        snap = self._snapshot()
        self._transactions.append(snap)
        try:
            yield self
        except BaseException:
            self._restore(snap)
            raise
        finally:
            self._transactions.remove(snap)

    def _snapshot(self) -> _Snapshot:
        idmap = self._idmap
        return _Snapshot(
            n=len(self._ids), ids=self._ids.state(), meta=self._meta.state(),
            idmap=None if idmap is None else idmap.state(), next_id=self._next_id,
            info=copy.deepcopy(self.info), fingerprint=self._fingerprint,
        )

    def _restore(self, snap: _Snapshot) -> None:
        now = len(self._codes_view())
        if snap.codes is not None:  # something was removed: put the old codes back whole
            self._compact_codes(np.zeros(now, dtype=bool))
            if snap.n:
                self._store_codes(snap.codes)
        elif now != snap.n:  # only appends happened: the first n codes are the old ones
            keep = np.zeros(now, dtype=bool)
            keep[: snap.n] = True
            self._compact_codes(keep)
        self._ids.restore(snap.ids)
        self._meta.restore(snap.meta)
        self._idmap = None if snap.idmap is None else IdMap.restored(snap.idmap)
        self._next_id = snap.next_id
        self.info = snap.info
        self._fingerprint = snap.fingerprint

    def contains(self, ids: Iterable[int] | np.ndarray) -> np.ndarray:
        return self._positions(ids, strict=False) >= 0

    def metadata(self, ids: Iterable[int] | np.ndarray) -> list[dict[str, Any]]:
        return self._meta.get(self._positions(ids))

    def reconstruct(self, ids: Iterable[int] | np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self._codes_view()[self._positions(ids)])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = int(k)
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        q = self._queries(queries)
        dist, pos = self._search_positions(q, k)
        ids = self._ids.view
        if k <= len(ids):
            return dist, ids[pos]
        # fewer items than k: the backend padded with position -1
        pad = pos < 0
        out = ids[np.where(pad, 0, pos)] if len(ids) else np.zeros(pos.shape, dtype=np.int64)
        out[pad] = PAD
        dist[pad] = PAD
        return dist, out

    def range_search(self, queries: np.ndarray, radius: int) -> RangeResult:
        radius = int(radius)
        if radius < 0:
            raise ValueError(f"radius must be >= 0, got {radius}")
        q = self._queries(queries)
        ids = self._ids.view
        return [(d, ids[p]) for d, p in self._range_positions(q, radius)]

    # ---- persistence --------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write the file atomically. Refused (nothing written) when another process holds the file's writer
        lock (IndexBusyError), or when saving over the file this index was loaded from (or last saved to) and
        that file has been replaced since (ConflictError): another writer's items would be lost. A failed
        write raises StorageError; the old file stays as it was."""
        from attnhash.index.fileformat import write_index_file

        path = str(path)
        check_not_locked_elsewhere(path)
        if self.path is not None and os.path.abspath(path) == os.path.abspath(self.path):
            now = _file_state(path)
            if now is not None and self._file_state is not None and now != self._file_state:
                raise ConflictError(f"index file {path} was replaced by another writer since this index was "
                                    "loaded; nothing was written (open it again and repeat the change)")
        try:
            write_index_file(
                path,
                bits=self.bits,
                fingerprint=self.fingerprint,
                next_id=self._next_id,
                info=self.info,
                codes=self._codes_view(),
                ids=self._ids.view,
                meta_offsets=self._meta.offsets_array(),
                meta_segments=self._meta.blob_segments(),
            )
        except OSError as err:
            raise StorageError(f"cannot write index file {path}: {err.strerror or err}; the file on disk is "
                               "unchanged") from None
        self.path = path
        self._file_state = _file_state(path)

    @classmethod
    def load(cls, path: str, mmap: bool = True, verify: bool = True, **kwargs: Any) -> LocalIndex:
        """Read an index file; temporary files that killed writers of it left behind are deleted first."""
        from attnhash.index.fileformat import read_index_file

        remove_stale_temps(path)
        state = _file_state(path)  # before reading: if the file is replaced meanwhile, a save refuses
        data = read_index_file(path, mmap=mmap, verify=verify)
        index = cls(data.bits, data.fingerprint, data.info, **kwargs)
        index._load_codes(data.codes)
        index._ids = Column(data.ids)
        index._meta = MetadataStore(len(data.ids), data.meta_offsets, data.meta_blob)
        index._next_id = data.next_id
        index.path = str(path)
        index._file_state = state
        return index

    def _load_codes(self, codes: np.ndarray) -> None:
        self._store_codes(codes)

    def memory_bytes(self) -> int:
        """Bytes held by ids, metadata and the backend's structures (estimate for memory-mapped parts)."""
        n = self._ids._buf.nbytes + self._meta.nbytes
        off = self._meta.offsets_array()
        return n + (off.nbytes if off is not None else 0)


class _Snapshot:
    """The state a transaction restores (see LocalIndex.transaction)."""

    __slots__ = ("n", "ids", "meta", "idmap", "next_id", "info", "fingerprint", "codes")

    def __init__(self, n, ids, meta, idmap, next_id, info, fingerprint) -> None:
        self.n, self.ids, self.meta, self.idmap = n, ids, meta, idmap
        self.next_id, self.info, self.fingerprint = next_id, info, fingerprint
        self.codes: np.ndarray | None = None  # the first n codes, copied before the first removal


def _file_state(path: str) -> tuple | None:
    """(device, inode, size, mtime): a save replaces the file, so any save by anyone changes it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def sort_range_hits(qidx: np.ndarray, dist: np.ndarray, pos: np.ndarray, nq: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Flat (query, distance, position) hits -> per-query (distances, positions) sorted by (distance, position)."""
    order = np.lexsort((pos, dist, qidx))
    pos, dist, qidx = pos[order], dist[order].astype(np.int32), qidx[order]
    bounds = np.searchsorted(qidx, np.arange(nq + 1))
    return [(dist[bounds[i] : bounds[i + 1]], pos[bounds[i] : bounds[i + 1]]) for i in range(nq)]

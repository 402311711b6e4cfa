"""The Milvus backend: the same Index interface on pymilvus (BINARY_VECTOR field, HAMMING metric, BIN_FLAT).

Embedded by default: `uri=None` starts milvus-lite (2.5.x; 3.x has no binary vectors) on a database file in a
temporary folder removed by `close()`; `uri="path/x.db"` keeps an embedded database on disk; a server or
cluster is reached with `uri="http://host:19530"` (and `token`). `MilvusIndex.connect(uri, collection)` (or
`open_index(uri, backend="milvus")`) attaches to a collection attnhash made, reading its code length, model
fingerprint and metadata from the state beside it. Changes are durable in the collection as they happen
(`persistent`): `save(path)` exports an index file, nothing needs saving.

Schema of the data collection: `id` INT64 primary key (the item id), `seq` INT64 (insertion order, used to
break distance ties like the other backends), `code` BINARY_VECTOR(bits), `meta` VARCHAR (item metadata as
JSON). A one-row companion collection `<name>_attnhash` stores the index-level state (bits, fingerprint,
info, next id, next seq), since milvus-lite cannot alter collection properties.

Exactness: Milvus caps a search at 16384 results per query. Top-k asks for k + 1 results: rows whose
(k+1)-th result lies beyond the k-th distance hold every item up to it and only need sorting by (distance,
seq); a row whose k-th distance ties with items left out gets a range search for exactly that distance, which
fetches them all (up to the cap) so the row holds the ties of lowest seq, as in the reference. Radius searches
that reach the cap are split per distance; one distance with more than 16384 items is refused with an error.
While every id added is larger than the ones before (the usual case: ids assigned by the index), insertion
order is id order, and searches sort by id without fetching `seq` from Milvus.
One writer at a time per collection (the id and seq counters live in the state row).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from attnhash.errors import AttnHashError, DataError, IndexFileError
from attnhash.index.base import PAD, Index, RangeResult, _as_ids
from attnhash.index.distinct import distinct_summary

__all__ = ["MilvusIndex", "MILVUS_MAX_TOPK"]

MILVUS_MAX_TOPK = 16384
_INSERT_BATCH = 20_000
_QUERY_BATCH = 1_000
_SEARCH_BATCH = 1_000


def _client(uri: str, token: str):
    with warnings.catch_warnings():  # milvus-lite 2.5 imports pkg_resources, which warns on import
        warnings.simplefilter("ignore")
        from pymilvus import MilvusClient

        try:
            return MilvusClient(uri=uri, token=token)
        except Exception as err:  # noqa: BLE001 - pymilvus raises many kinds; report one clear error
            raise AttnHashError(f"cannot connect to Milvus at {uri}: {err}") from err


class MilvusIndex(Index):
    """Hamming index stored in a Milvus collection (see module docstring)."""

    backend = "milvus"
    persistent = True  # every change is durable in the collection when the call returns

    def __init__(self, bits: int, fingerprint: str | None = None, info: dict[str, Any] | None = None, *,
                 uri: str | None = None, collection: str = "attnhash", token: str = "",
                 overwrite: bool = False, new: bool = False, _client_obj: Any = None) -> None:
        super().__init__(bits, fingerprint, info)
        self._tmpdir = None
        if uri is None:
            self._tmpdir = tempfile.mkdtemp(prefix="attnhash-milvus-")
            uri = os.path.join(self._tmpdir, "milvus.db")
        self.uri = uri
        self.collection = collection
        self._state_name = f"{collection}_attnhash"
        self._c = _client_obj if _client_obj is not None else _client(uri, token)
        self._next_id = 0
        self._next_seq = 0
        self._ids_increasing = True  # every id added so far larger than the ones before: seq order = id order
        if overwrite:
            for name in (collection, self._state_name):
                if self._c.has_collection(name):
                    self._c.drop_collection(name)
        if self._c.has_collection(collection):
            if new:
                raise DataError(f"Milvus collection {collection!r} exists at {uri}; pass --force to replace it")
            self._attach()
        else:
            self._create()
        self.path = f"{self.uri}#{self.collection}"

    @classmethod
    def connect(cls, uri: str, collection: str = "attnhash", token: str = "", fingerprint: str | None = None
                ) -> MilvusIndex:
        """Attach to a collection made by attnhash (its code length and model are read from its state)."""
        client = _client(uri, token)
        try:
            state_name = f"{collection}_attnhash"
            if not client.has_collection(collection) or not client.has_collection(state_name):
                raise DataError(f"no attnhash collection {collection!r} at Milvus {uri}; make one with "
                                f"`attnhash index build RUN --backend milvus --uri {uri} --collection {collection}`")
            rows = client.get(state_name, ids=[0], output_fields=["state"])
            if not rows:
                raise DataError(f"Milvus collection {collection!r} at {uri} has no attnhash state")
            bits = int(json.loads(rows[0]["state"])["bits"])
        except BaseException:
            client.close()
            raise
        return cls(bits, fingerprint, uri=uri, collection=collection, token=token, _client_obj=client)

    # ---- collections --------------------------------------------------------------------------------
    def _create(self) -> None:
        from pymilvus import DataType

        schema = self._c.create_schema(auto_id=False, enable_dynamic_field=False,
                                       description=f"attnhash {self.bits}-bit codes")
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("seq", DataType.INT64)
        schema.add_field("code", DataType.BINARY_VECTOR, dim=self.code_size * 8)  # whole bytes: padded codes
        schema.add_field("meta", DataType.VARCHAR, max_length=65535)
        params = self._c.prepare_index_params()
        params.add_index(field_name="code", index_type="BIN_FLAT", metric_type="HAMMING")
        self._c.create_collection(self.collection, schema=schema, index_params=params, consistency_level="Strong")

        state = self._c.create_schema(auto_id=False, enable_dynamic_field=False)
        state.add_field("key", DataType.INT64, is_primary=True)
        state.add_field("dummy", DataType.BINARY_VECTOR, dim=8)  # Milvus requires a vector field
        state.add_field("state", DataType.VARCHAR, max_length=65535)
        sparams = self._c.prepare_index_params()
        sparams.add_index(field_name="dummy", index_type="BIN_FLAT", metric_type="HAMMING")
        self._c.create_collection(self._state_name, schema=state, index_params=sparams, consistency_level="Strong")
        self._save_state()

    def _save_state(self) -> None:
        state = {"format": 1, "bits": self.bits, "fingerprint": self.fingerprint, "info": self.info,
                 "next_id": self._next_id, "next_seq": self._next_seq, "ids_increasing": self._ids_increasing}
        self._c.upsert(self._state_name, [{"key": 0, "dummy": b"\0", "state": json.dumps(state, default=str)}])

    def save_info(self) -> None:
        """Write the index-level state (fingerprint, info such as class names, counters) beside the codes."""
        self._save_state()

    def _attach(self) -> None:
        rows = self._c.get(self._state_name, ids=[0], output_fields=["state"]) \
            if self._c.has_collection(self._state_name) else []
        if not rows:
            raise AttnHashError(f"Milvus collection {self.collection!r} at {self.uri} was not made by attnhash "
                                f"(no {self._state_name!r} state); pass overwrite=True to replace it")
        state = json.loads(rows[0]["state"])
        if state["bits"] != self.bits:
            raise AttnHashError(f"Milvus collection {self.collection!r} holds {state['bits']}-bit codes, not {self.bits}")
        asked = self.fingerprint
        self._fingerprint = state.get("fingerprint") or asked
        self.path = f"{self.uri}#{self.collection}"
        self.check_fingerprint(asked, "the model asked for")  # a mismatch raises, naming both
        self.info = {**state.get("info", {}), **self.info}
        self._next_id = int(state["next_id"])
        self._next_seq = int(state["next_seq"])
        self._ids_increasing = bool(state.get("ids_increasing", False))

    def close(self) -> None:
        """Close the connection (and delete the temporary embedded database, if this index made one)."""
        try:
            self._c.close()
        finally:
            if self._tmpdir:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None

    def __enter__(self) -> MilvusIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- size / lookups -----------------------------------------------------------------------------
    def __len__(self) -> int:
        res = self._c.query(self.collection, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    @property
    def next_id(self) -> int:
        return self._next_id

    def _get(self, ids: np.ndarray, fields: list[str]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for s in range(0, len(ids), _QUERY_BATCH):
            chunk = [int(i) for i in ids[s : s + _QUERY_BATCH]]
            for row in self._c.get(self.collection, ids=chunk, output_fields=fields):
                out[int(row["id"])] = row
        return out

    def _require(self, ids: Iterable[int] | np.ndarray, fields: list[str]) -> tuple[np.ndarray, dict[int, dict]]:
        arr = _as_ids(ids)
        rows = self._get(arr, fields)
        missing = [int(i) for i in arr if int(i) not in rows]
        if missing:
            raise KeyError(f"unknown id(s) {missing[:5]} in Milvus collection {self.collection!r}")
        return arr, rows

    def contains(self, ids: Iterable[int] | np.ndarray) -> np.ndarray:
        arr = _as_ids(ids)
        rows = self._get(arr, ["id"])
        return np.array([int(i) in rows for i in arr], dtype=bool)

    def metadata(self, ids: Iterable[int] | np.ndarray) -> list[dict[str, Any]]:
        arr, rows = self._require(ids, ["meta"])
        return [json.loads(rows[int(i)]["meta"]) if rows[int(i)]["meta"] else {} for i in arr]

    def reconstruct(self, ids: Iterable[int] | np.ndarray) -> np.ndarray:
        arr, rows = self._require(ids, ["code"])
        out = np.zeros((len(arr), self.code_size), dtype=np.uint8)
        for j, i in enumerate(arr):
            out[j] = np.frombuffer(_code_bytes(rows[int(i)]["code"]), dtype=np.uint8)
        return out

    def _iter_rows(self, fields: list[str]):
        # milvus-lite has no MVCC timestamp service; pymilvus logs a harmless warning for every iterator
        log = logging.getLogger("pymilvus")
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            it = self._c.query_iterator(self.collection, batch_size=10_000, filter="", output_fields=fields)
        finally:
            log.setLevel(level)
        try:
            while True:
                batch = it.next()
                if not batch:
                    break
                yield from batch
        finally:
            it.close()

    def distinct_codes(self) -> dict[str, int]:
        """Distinct codes and the largest group of equal codes (reads every code once)."""
        codes = [_code_bytes(r["code"]) for r in self._iter_rows(["code"])]
        arr = np.frombuffer(b"".join(codes), dtype=np.uint8).reshape(len(codes), self.code_size)
        return distinct_summary(arr)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "uri": self.uri, "collection": self.collection}

    def all_ids(self) -> np.ndarray:
        rows = [(int(r["seq"]), int(r["id"])) for r in self._iter_rows(["seq"])]
        rows.sort()
        return np.array([i for _, i in rows], dtype=np.int64)

    # ---- mutation -----------------------------------------------------------------------------------
    def add(self, codes: np.ndarray, ids: Sequence[int] | np.ndarray | None = None,
            metadata: Sequence[dict[str, Any] | None] | None = None) -> np.ndarray:
        c = self._codes_in(codes)
        m = len(c)
        new_ids = self._new_ids(ids, m, metadata)
        if m == 0:
            return new_ids
        metas = [json.dumps(md, separators=(",", ":"), ensure_ascii=False) if md else ""
                 for md in (metadata or [None] * m)]
        if self._ids_increasing and (new_ids.min() < self._next_id or (m > 1 and (np.diff(new_ids) <= 0).any())):
            self._ids_increasing = False  # ids out of order from now on: ties need the seq field
        for s in range(0, m, _INSERT_BATCH):
            rows = [{"id": int(new_ids[j]), "seq": self._next_seq + j, "code": c[j].tobytes(), "meta": metas[j]}
                    for j in range(s, min(s + _INSERT_BATCH, m))]
            self._c.insert(self.collection, rows)
        self._next_seq += m
        self._next_id = max(self._next_id, int(new_ids.max()) + 1)
        self._save_state()
        return new_ids

    def remove(self, ids: Iterable[int] | np.ndarray) -> int:
        arr = np.unique(_as_ids(ids))
        present = arr[self.contains(arr)] if len(arr) else arr
        for s in range(0, len(present), _QUERY_BATCH):
            self._c.delete(self.collection, ids=[int(i) for i in present[s : s + _QUERY_BATCH]])
        return len(present)

    # ---- queries ------------------------------------------------------------------------------------
    def _raw_search(self, q: np.ndarray, limit: int, params: dict[str, Any] | None = None, where: str = ""
                    ) -> list[list[tuple[int, int, int]]]:
        """Per query: list of (distance, order key, id); the order key is seq, or the id itself while ids
        follow insertion order (then seq is not fetched, and the ids and distances are read as whole lists)."""
        out: list[list[tuple[int, int, int]]] = []
        search_params = {"metric_type": "HAMMING", "params": params or {}}
        with_seq = not self._ids_increasing
        fields = ["seq"] if with_seq else []
        for s in range(0, len(q), _SEARCH_BATCH):
            res = self._c.search(self.collection, data=[row.tobytes() for row in q[s : s + _SEARCH_BATCH]],
                                 anns_field="code", limit=limit, search_params=search_params, output_fields=fields,
                                 filter=where)
            for hits in res:
                if with_seq:
                    out.append([(int(h["distance"] + 0.5), int(h["entity"]["seq"]), int(h["id"])) for h in hits])
                elif hasattr(hits, "ids") and hasattr(hits, "distances"):  # pymilvus >= 2.4: the columns
                    ids = hits.ids
                    out.append(list(zip(np.rint(hits.distances).astype(np.int64).tolist(), ids, ids)))
                else:
                    out.append([(int(h["distance"] + 0.5), int(h["id"]), int(h["id"])) for h in hits])
        return out

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = int(k)
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        if k > MILVUS_MAX_TOPK:
            raise ValueError(f"the milvus backend returns at most {MILVUS_MAX_TOPK} results per query, asked k={k}")
        q = self._queries(queries)
        limit = min(k + 1, MILVUS_MAX_TOPK)  # one more: tells whether the k-th distance's ties were cut
        rows = [sorted(h) for h in self._raw_search(q, limit)]
        # boundary ties: the row must hold the items at the k-th distance inserted first. Those are at or
        # before the (k - closer)-th of the ones held (in insertion order), so only the items at that distance
        # up to there are fetched: a range search for exactly that distance, filtered on the order key (which
        # is cheap when Milvus itself returned the first-inserted ties, as milvus-lite does)
        key = "seq" if not self._ids_increasing else "id"
        by_dist: dict[int, list[tuple[int, int]]] = {}
        for i, hits in enumerate(rows):
            if (len(hits) > k and hits[k][0] == hits[k - 1][0]) or len(hits) == k == limit:
                dk = hits[k - 1][0]
                closer = sum(1 for h in hits if h[0] < dk)
                upto = sorted(h[1] for h in hits if h[0] == dk)[k - closer - 1]
                by_dist.setdefault(dk, []).append((i, upto))
            rows[i] = hits[:k]
        for dk, entries in by_dist.items():
            qs = [i for i, _ in entries]
            bound = max(u for _, u in entries)
            ties = self._raw_search(q[qs], MILVUS_MAX_TOPK, {"radius": dk + 1, "range_filter": dk},
                                    where=f"{key} <= {bound}")
            for (i, upto), at in zip(entries, ties):
                if len(at) >= MILVUS_MAX_TOPK:  # capped: ask again for this query alone, with its own bound
                    at = self._raw_search(q[i : i + 1], MILVUS_MAX_TOPK, {"radius": dk + 1, "range_filter": dk},
                                          where=f"{key} <= {upto}")[0]
                    if len(at) >= MILVUS_MAX_TOPK:
                        raise AttnHashError(f"more than {MILVUS_MAX_TOPK} items tie at Hamming distance {dk}: "
                                            "too many for one Milvus search; use a smaller k")
                closer = [h for h in rows[i] if h[0] < dk]
                rows[i] = closer + sorted(at)[: k - len(closer)]
        dist = np.full((len(q), k), PAD, dtype=np.int32)
        ids = np.full((len(q), k), PAD, dtype=np.int64)
        for i, hits in enumerate(rows):
            if hits:
                dist[i, : len(hits)] = [h[0] for h in hits]
                ids[i, : len(hits)] = [h[2] for h in hits]
        return dist, ids

    def range_search(self, queries: np.ndarray, radius: int) -> RangeResult:
        radius = int(radius)
        if radius < 0:
            raise ValueError(f"radius must be >= 0, got {radius}")
        q = self._queries(queries)
        rows = self._raw_search(q, MILVUS_MAX_TOPK, {"radius": radius + 1, "range_filter": 0})
        for i, hits in enumerate(rows):
            if len(hits) >= MILVUS_MAX_TOPK:  # capped: collect distance by distance
                hits = []
                for d in range(radius + 1):
                    at = self._raw_search(q[i : i + 1], MILVUS_MAX_TOPK, {"radius": d + 1, "range_filter": d})[0]
                    if len(at) >= MILVUS_MAX_TOPK:
                        raise AttnHashError(f"more than {MILVUS_MAX_TOPK} items at Hamming distance {d}: "
                                            "too many for one Milvus range search; use a smaller radius")
                    hits += at
                rows[i] = hits
        out = []
        for hits in rows:
            hits = sorted(hits)
            out.append((np.array([h[0] for h in hits], dtype=np.int32), np.array([h[2] for h in hits], dtype=np.int64)))
        return out

    # ---- persistence --------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Export the collection to an index file (the common format), in insertion order."""
        from attnhash.index.fileformat import write_index_file

        rows = sorted(((int(r["seq"]), int(r["id"]), _code_bytes(r["code"]), r["meta"])
                       for r in self._iter_rows(["seq", "code", "meta"])))
        n = len(rows)
        codes = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.uint8).reshape(n, self.code_size)
        ids = np.array([r[1] for r in rows], dtype=np.int64)
        blobs = [r[3].encode() for r in rows]
        has_meta = any(blobs)
        offsets = None
        if has_meta:
            offsets = np.zeros(n + 1, dtype=np.uint64)
            np.cumsum([len(b) for b in blobs], out=offsets[1:])
        write_index_file(path, bits=self.bits, fingerprint=self.fingerprint, next_id=self._next_id, info=self.info,
                         codes=codes, ids=ids, meta_offsets=offsets,
                         meta_segments=[b"".join(blobs)] if has_meta else [])
        self.path = str(path)

    @classmethod
    def load(cls, path: str, mmap: bool = True, verify: bool = True, **kwargs: Any) -> MilvusIndex:
        """Load an index file into a (replaced) Milvus collection; kwargs: uri, collection, token.

        A `path` that is not an attnhash index file (a milvus-lite database file, a server URI) with no `uri`
        given is where the collection lives: attach to it (kwargs: collection, token, fingerprint)."""
        from attnhash.index.fileformat import read_header, read_index_file

        if "uri" not in kwargs:
            try:
                read_header(path)
            except IndexFileError:
                if os.path.isfile(path) or "://" in str(path) or str(path).endswith(".db"):
                    known = {k: v for k, v in kwargs.items() if k in ("collection", "token", "fingerprint")}
                    return cls.connect(str(path), **known)
                raise
        data = read_index_file(path, mmap=mmap, verify=verify)
        kwargs.setdefault("overwrite", True)
        index = cls(data.bits, data.fingerprint, data.info, **kwargs)
        if len(index):
            raise IndexFileError(f"Milvus collection {index.collection!r} is not empty; pass overwrite=True")
        metas = None
        if data.meta_offsets is not None:
            off, blob = data.meta_offsets, data.meta_blob
            metas = [json.loads(blob[off[i] : off[i + 1]].tobytes()) if off[i + 1] > off[i] else None
                     for i in range(data.count)]
        index.add(np.asarray(data.codes), ids=np.asarray(data.ids), metadata=metas)
        index._next_id = max(index._next_id, data.next_id)
        index._save_state()
        index.path = str(path)
        return index


def _code_bytes(value: Any) -> bytes:
    """pymilvus returns a binary vector as bytes or as a one-element list of bytes."""
    if isinstance(value, list | tuple):
        value = value[0]
    return bytes(value)

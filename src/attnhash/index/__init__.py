"""Hamming-distance indexes over packed binary codes: one `Index` interface, three backends.

    from attnhash.index import create_index, open_index
    index = create_index("faiss", bits=64, fingerprint=encoder.fingerprint)
    index.add(codes, metadata=[{"path": p, "labels": [3]} for p in paths])
    distances, ids = index.search(query_codes, k=10)
    hits = index.range_search(query_codes, radius=2)       # [(distances, ids) per query]
    index.save("my.idx"); index = open_index("my.idx")

Backends: "faiss" (default, embedded, exact), "numpy" (the reference), "milvus" (pymilvus: embedded
milvus-lite by default, or any Milvus server by URI).
"""

from __future__ import annotations

from typing import Any

from attnhash.index.base import MAX_ID, PAD, Index, LocalIndex, RangeResult
from attnhash.index.fileformat import read_header, verify_file
from attnhash.registry import Registry

__all__ = ["Index", "LocalIndex", "RangeResult", "PAD", "MAX_ID", "BACKENDS", "create_index", "open_index", "read_header",
           "verify_file", "get_backend"]

# Imported on first use: pymilvus alone takes seconds to import.
BACKENDS: Registry = Registry("index backend")
BACKENDS.register("faiss", "attnhash.index.faiss_index:FaissIndex")
BACKENDS.register("numpy", "attnhash.index.numpy_index:NumpyIndex")
BACKENDS.register("milvus", "attnhash.index.milvus_index:MilvusIndex")


def get_backend(name: str) -> type[Index]:
    """The Index class registered under `name` (ConfigError naming the known backends otherwise)."""
    return BACKENDS.get(name)


def create_index(backend: str = "faiss", bits: int = 64, fingerprint: str | None = None,
                 info: dict[str, Any] | None = None, **kwargs: Any) -> Index:
    """A new empty index; backend options go in kwargs (milvus: uri, collection, token)."""
    return get_backend(backend)(bits, fingerprint=fingerprint, info=info, **kwargs)


def open_index(path: str, backend: str = "faiss", mmap: bool = True, verify: bool = True, **kwargs: Any) -> Index:
    """Load an index file into the given backend (the file format is the same for all backends)."""
    return get_backend(backend).load(str(path), mmap=mmap, verify=verify, **kwargs)

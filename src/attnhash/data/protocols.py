"""The field's evaluation protocols as seeded splits, persisted once to a JSON split file and reused.

A split is three sorted int64 index arrays into a source (query, train, database), the label columns the
protocol keeps, and the mAP@R cut. See DESIGN.md section 4.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..atomic import atomic_open
from ..errors import DataError
from ..registry import Registry
from .sources import ImageSource

__all__ = ["Split", "Protocol", "PROTOCOLS", "make_split", "load_or_create_split", "default_split_paths",
           "save_split", "load_split"]

_FORMAT = "attnhash-split"
_VERSION = 1


@dataclass
class Split:
    """Indices of a protocol split; query/train/database are sorted int64 arrays into the source."""

    protocol: str
    seed: int
    query: np.ndarray
    train: np.ndarray
    database: np.ndarray
    classes: np.ndarray | None = None  # label columns kept (nuswide21), else None = all
    topk: int | None = None  # mAP@R cut: None = ALL

    def sizes(self) -> dict[str, int]:
        return {"query": int(self.query.size), "train": int(self.train.size), "database": int(self.database.size)}


@dataclass(frozen=True)
class Protocol:
    """A named protocol: how to draw a split from a source, and its mAP@R cut."""

    name: str
    make: Callable[[ImageSource, np.random.Generator], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]]
    topk: int | None
    description: str


def _class_label(source: ImageSource, c: int) -> str:
    names = source.class_names
    return f"{names[c]!r} (column {c})" if names is not None and c < len(names) else f"column {c}"


def _per_class(n_query: int, n_train: int, train_in_database: bool, protocol: str):
    """cifar10-style: per class, n_query queries and n_train training items; the rest is database."""

    def make(source: ImageSource, rng: np.random.Generator):
        labels = source.labels
        per_item = labels.sum(axis=1)
        if not np.all(per_item == 1):
            i = int(np.flatnonzero(per_item != 1)[0])
            raise DataError(f"{source.name}: protocol {protocol} needs single-label data, but item {i} "
                            f"({source.describe(i)}) has {int(per_item[i])} labels")
        query, train, rest = [], [], []
        for c in range(labels.shape[1]):
            members = np.flatnonzero(labels[:, c])
            need = n_query + n_train
            if members.size < need:
                raise DataError(f"{source.name}: class {_class_label(source, c)} has {members.size} items, "
                                f"protocol {protocol} needs at least {need} ({n_query} query + {n_train} train)")
            perm = rng.permutation(members)
            query.append(perm[:n_query])
            train.append(perm[n_query:need])
            rest.append(perm[need:])
        q, t, r = (np.concatenate(x) for x in (query, train, rest))
        database = np.concatenate([t, r]) if train_in_database else r
        return q, t, database, None

    return make


def _nuswide(n_classes: int, n_query: int, n_train: int, protocol: str):
    """Keep the most frequent concepts; draw queries then training items class by class; database = non-query."""

    def make(source: ImageSource, rng: np.random.Generator):
        labels = source.labels
        c_all = labels.shape[1]
        if c_all < n_classes:
            raise DataError(f"{source.name}: protocol {protocol} needs at least {n_classes} label columns, "
                            f"the data has {c_all}")
        freq = labels.sum(axis=0, dtype=np.int64)
        order = np.lexsort((np.arange(c_all), -freq))  # most frequent first, ties by column index
        classes = np.sort(order[:n_classes]).astype(np.int64)
        kept = labels[:, classes].any(axis=1)
        def draw(role: str, count: int, available: np.ndarray) -> np.ndarray:
            """Per class in column order, `count` items having that label among those still available."""
            drawn = np.zeros(len(source), dtype=bool)
            for c in classes:
                candidates = np.flatnonzero(available & ~drawn & (labels[:, c] != 0))
                if candidates.size < count:
                    raise DataError(
                        f"{source.name}: class {_class_label(source, int(c))} has {candidates.size} images left "
                        f"to draw as {role}, protocol {protocol} needs {count} per class")
                drawn[rng.choice(candidates, size=count, replace=False)] = True
            return drawn

        is_query = draw("query", n_query, kept)
        is_train = draw("train", n_train, kept & ~is_query)
        database = np.flatnonzero(kept & ~is_query)
        return np.flatnonzero(is_query), np.flatnonzero(is_train), database, classes

    return make


def _from_groups(protocol: str):
    def make(source: ImageSource, rng: np.random.Generator):
        needed = ("test", "train", "database")
        missing = [g for g in needed if g not in source.groups]
        if missing:
            have = ", ".join(sorted(source.groups)) or "none"
            raise DataError(f"{source.name}: protocol {protocol} takes query/train/database from the data's own "
                            f"groups 'test', 'train', 'database' (HashNet lists, read_hashnet_lists); missing "
                            f"{', '.join(repr(m) for m in missing)} (groups present: {have})")
        g = source.groups
        return g["test"], g["train"], g["database"], None

    return make


PROTOCOLS: Registry = Registry("protocol", error=DataError)
for _protocol in (
    Protocol("cifar10", _per_class(100, 500, False, "cifar10"), None,
             "per class 100 query, 500 train, the rest database; mAP@ALL"),
    Protocol("cifar10-1", _per_class(100, 500, True, "cifar10-1"), None,
             "per class 100 query, 500 train; database = all but the queries; mAP@ALL"),
    Protocol("fmnist", _per_class(100, 500, False, "fmnist"), None,
             "the cifar10 protocol on Fashion-MNIST: 1,000 / 5,000 / 64,000; mAP@ALL"),
    Protocol("nuswide21", _nuswide(21, 100, 500, "nuswide21"), 5000,
             "21 most frequent concepts, per class 100 query and 500 train, database = all non-query; mAP@5000"),
    Protocol("imagenet100", _from_groups("imagenet100"), 1000,
             "HashNet lists: query = test, train = train, database = database; mAP@1000"),
):
    PROTOCOLS.register(_protocol.name, _protocol)


def make_split(source: ImageSource, protocol: str, seed: int = 0) -> Split:
    """Draw the protocol's split with np.random.default_rng(seed); the same seed gives the same split."""
    proto = PROTOCOLS.get(protocol)
    q, t, d, classes = proto.make(source, np.random.default_rng(seed))
    as_idx = lambda a: np.unique(np.asarray(a, dtype=np.int64))  # noqa: E731  (sorted, int64)
    return Split(protocol=proto.name, seed=int(seed), query=as_idx(q), train=as_idx(t), database=as_idx(d),
                 classes=None if classes is None else np.asarray(classes, dtype=np.int64), topk=proto.topk)


# --------------------------------------------------------------------------------------------------------------
# Persistence
# --------------------------------------------------------------------------------------------------------------


# Folders of system packages (e.g. Debian's dataset-fashion-mnist under /usr/share): never written to, even
# when running as root, since the package manager owns them.
_SYSTEM_PREFIXES = ("/usr/",)


def _writable_folder(folder: str) -> bool:
    return not os.path.abspath(folder).startswith(_SYSTEM_PREFIXES)


def _cache_dir() -> str:
    base = os.environ.get("ATTNHASH_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "attnhash")
    return os.path.join(base, "splits")


def default_split_paths(source: ImageSource, protocol: str, seed: int = 0) -> list[str]:
    """Where a split file is looked for, in order: beside the data (if it has a root), then the cache."""
    paths = []
    if source.root is not None:
        paths.append(os.path.join(source.root, f"attnhash-split-{protocol}-seed{seed}.json"))
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", source.name).strip("_.")[-80:] or "data"
    paths.append(os.path.join(_cache_dir(), f"{safe}-{source.fingerprint()[:12]}-{protocol}-seed{seed}.json"))
    return paths


def _split_json(split: Split, source: ImageSource) -> str:
    compact = lambda v: json.dumps(v, separators=(",", ":"))  # noqa: E731  (long index lists on one line)
    fields = {
        "format": _FORMAT, "version": _VERSION, "protocol": split.protocol, "seed": split.seed,
        "num_items": len(source), "fingerprint": source.fingerprint(), "source": source.name,
        "classes": None if split.classes is None else split.classes.tolist(), "topk": split.topk,
        "sizes": split.sizes(),
        "query": split.query.tolist(), "train": split.train.tolist(), "database": split.database.tolist(),
    }
    return "{\n" + ",\n".join(f"{json.dumps(k)}: {compact(v)}" for k, v in fields.items()) + "\n}\n"


def save_split(split: Split, source: ImageSource, path: str) -> None:
    """Write the split file atomically (readable by the rest of a team sharing the data)."""
    with atomic_open(path, "w") as f:
        f.write(_split_json(split, source))


def _index_array(doc: dict, key: str, n: int, path: str) -> np.ndarray:
    values = doc.get(key)
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise DataError(f"{path}: corrupt split file ('{key}' is not a list of integers); delete it to regenerate")
    arr = np.asarray(values, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise DataError(f"{path}: corrupt split file ('{key}' has indices outside 0..{n - 1}); delete it to regenerate")
    if arr.size > 1 and np.any(np.diff(arr) <= 0):
        raise DataError(f"{path}: corrupt split file ('{key}' is not sorted and unique); delete it to regenerate")
    return arr


def load_split(path: str, source: ImageSource, protocol: str | None = None, seed: int | None = None) -> Split:
    """Read a split file and check it belongs to this data (item count and fingerprint) and protocol/seed."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: split file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: corrupt split file ({_one_line(exc)}); delete it to regenerate") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise DataError(f"{path}: not an attnhash split file; delete it or pass another split path")
    if doc.get("version") != _VERSION:
        raise DataError(f"{path}: split file version {doc.get('version')!r}, this attnhash reads {_VERSION}")
    for key in ("protocol", "seed", "num_items", "fingerprint"):
        if key not in doc:
            raise DataError(f"{path}: corrupt split file (no '{key}'); delete it to regenerate")
    where = "; delete it to regenerate or pass another split path"
    if protocol is not None and doc["protocol"] != protocol:
        raise DataError(f"{path}: split file is for protocol {doc['protocol']!r}, asked for {protocol!r}{where}")
    if seed is not None and doc["seed"] != seed:
        raise DataError(f"{path}: split file is for seed {doc['seed']!r}, asked for seed {seed}{where}")
    if doc["num_items"] != len(source):
        raise DataError(f"{path}: split file was made for {doc['num_items']} items, the data "
                        f"({source.name}) has {len(source)}{where}")
    if doc["fingerprint"] != source.fingerprint():
        raise DataError(f"{path}: split file was made for other data (fingerprint {str(doc['fingerprint'])[:12]}, "
                        f"the data {source.name} has {source.fingerprint()[:12]}: its labels, paths or "
                        f"pixels changed){where}")
    n = len(source)
    classes = doc.get("classes")
    if classes is not None:
        classes = _index_array(doc, "classes", source.num_classes, path)
    topk = doc.get("topk")
    if topk is not None and (not isinstance(topk, int) or topk <= 0):
        raise DataError(f"{path}: corrupt split file (bad topk {topk!r}); delete it to regenerate")
    return Split(protocol=str(doc["protocol"]), seed=int(doc["seed"]), query=_index_array(doc, "query", n, path),
                 train=_index_array(doc, "train", n, path), database=_index_array(doc, "database", n, path),
                 classes=classes, topk=topk)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def load_or_create_split(source: ImageSource, protocol: str, seed: int = 0,
                         path: str | os.PathLike | None = None) -> tuple[Split, str]:
    """Reuse the split file if there is one (checking it still matches the data), else draw and write it once.

    ``path`` None: beside the data (``<root>/attnhash-split-<protocol>-seed<seed>.json``) when the data has
    a writable root, else ``$ATTNHASH_CACHE_DIR/splits/`` (default ~/.cache/attnhash/splits/). Returns the
    split and the file used. Folders of system packages (under /usr) count as not writable.
    """
    proto = PROTOCOLS.get(protocol)
    if path is not None:
        path = os.fspath(path)
        if os.path.exists(path):
            return load_split(path, source, proto.name, seed), path
        split = make_split(source, proto.name, seed)
        try:
            save_split(split, source, path)
        except OSError as exc:
            raise DataError(f"{path}: cannot write split file ({exc.strerror or exc})") from None
        return split, path
    candidates = default_split_paths(source, proto.name, seed)
    for candidate in candidates:
        if os.path.exists(candidate):
            return load_split(candidate, source, proto.name, seed), candidate
    split = make_split(source, proto.name, seed)
    errors = []
    for candidate in candidates:  # beside the data first; a read-only data folder falls back to the cache
        if candidate != candidates[-1] and not _writable_folder(os.path.dirname(candidate)):
            continue
        try:
            save_split(split, source, candidate)
            return split, candidate
        except OSError as exc:
            errors.append(f"{candidate}: {exc.strerror or exc}")
    raise DataError(f"cannot write the split file anywhere ({'; '.join(errors)}); set ATTNHASH_CACHE_DIR "
                    "or pass a split path")

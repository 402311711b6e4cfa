"""The field's evaluation protocols as seeded splits, persisted once to a JSON split file and reused.

A split is three sorted int64 index arrays into a source (query, train, database), the label columns the
protocol keeps, and the mAP@R cut. See DESIGN.md section 4.
"""

from __future__ import annotations

import hashlib
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
    params: dict | None = None  # the protocol's parameters as resolved (stratified: query, train, ...)

    def sizes(self) -> dict[str, int]:
        return {"query": int(self.query.size), "train": int(self.train.size), "database": int(self.database.size)}


@dataclass(frozen=True)
class Protocol:
    """A named protocol: how to draw a split from a source (given the protocol's parameters), its mAP@R cut."""

    name: str
    make: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]]
    topk: int | None
    description: str
    takes_params: bool = False  # make(source, rng, params) -> (..., resolved params) instead of make(source, rng)


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
    Protocol("stratified", None, None,
             "any data: per class, a fraction (or count) of query and train items, the rest database; unlabelled "
             "data is one class; the default for a dataset given by path", takes_params=True),
):
    PROTOCOLS.register(_protocol.name, _protocol)


def make_split(source: ImageSource, protocol: str, seed: int = 0, params: dict | None = None) -> Split:
    """Draw the protocol's split with np.random.default_rng(seed); the same seed gives the same split.
    `params` are the parameters of a protocol that takes them (stratified: query, train, train_in_database)."""
    proto = PROTOCOLS.get(protocol)
    rng = np.random.default_rng(seed)
    resolved = None
    if proto.takes_params:
        q, t, d, classes, resolved = _stratified(source, rng, {**STRATIFIED_DEFAULTS, **(params or {})})
    else:
        q, t, d, classes = proto.make(source, rng)
    as_idx = lambda a: np.unique(np.asarray(a, dtype=np.int64))  # noqa: E731  (sorted, int64)
    return Split(protocol=proto.name, seed=int(seed), query=as_idx(q), train=as_idx(t), database=as_idx(d),
                 classes=None if classes is None else np.asarray(classes, dtype=np.int64), topk=proto.topk,
                 params=resolved)


# --------------------------------------------------------------------------------------------------------------
# Stratified: any labelled (or unlabelled) data, from 2 images per class up
# --------------------------------------------------------------------------------------------------------------

STRATIFIED_DEFAULTS = {"query": 0.1, "train": 0.5, "train_in_database": "auto"}


def _amount(spec: float, n: int) -> int:
    """A fraction of n (spec < 1, at least 1) or a count (spec >= 1)."""
    return max(1, int(round(spec * n))) if spec < 1 else int(spec)


def _strata(source: ImageSource) -> tuple[list[np.ndarray], list[str]]:
    """Items grouped by class (single-label: the class; multi-label: the first label; unlabelled data: one
    group), with a name for each group."""
    labels = source.labels
    if labels.shape[1] == 0:
        return [np.arange(len(source))], ["all (unlabelled)"]
    key = np.where(labels.any(axis=1), labels.argmax(axis=1), -1)
    groups, names = [], []
    for c in np.unique(key):
        groups.append(np.flatnonzero(key == c))
        names.append("without a label" if c < 0 else _class_label(source, int(c)))
    return groups, names


def _stratified(source: ImageSource, rng: np.random.Generator, params: dict):
    query, train, tid = params["query"], params["train"], params["train_in_database"]
    for key, value in (("query", query), ("train", train)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise DataError(f"stratified split: data.split_{key} must be a fraction in (0, 1) or a count >= 1, "
                            f"got {value!r}")
    if tid not in ("auto", "yes", "no"):
        raise DataError(f"stratified split: data.train_in_database must be auto, yes or no, got {tid!r}")
    if query < 1 and train < 1 and query + train >= 1 and tid == "no":
        raise DataError(f"stratified split: query {query} + train {train} leave nothing for the database; lower "
                        "them or set data.train_in_database=yes")
    groups, names = _strata(source)
    small = [(len(g), name) for g, name in zip(groups, names) if len(g) < 2]
    if small:
        n, name = small[0]
        raise DataError(f"{source.name}: class {name} has {n} image; the stratified split needs at least 2 per "
                        "class (1 query + 1 train, the database then holding the training images): add images "
                        "to it or leave it out")
    # the database holds the training images when some class is too small for three disjoint parts
    holds_train = tid == "yes" or (tid == "auto" and min(len(g) for g in groups) < 3)
    parts = ([], [], [])
    for g, name in zip(groups, names):
        n = len(g)
        nq, nt = _amount(query, n), _amount(train, n)
        room = n - (0 if holds_train else 1)  # leave at least one database item of each class
        if query >= 1 or train >= 1:  # counts are asked for exactly
            if nq + nt > room:
                raise DataError(f"{source.name}: class {name} has {n} images, fewer than the {nq} query + {nt} "
                                f"train{'' if holds_train else ' + 1 database'} asked for; give fractions "
                                "(e.g. data.split_query=0.1) or smaller counts")
        else:  # fractions: shrink train, then query, to leave the class a database item
            while nq + nt > room and nt > 1:
                nt -= 1
            while nq + nt > room and nq > 1:
                nq -= 1
        perm = rng.permutation(g)
        parts[0].append(perm[:nq])
        parts[1].append(perm[nq:nq + nt])
        parts[2].append(perm[nq:] if holds_train else perm[nq + nt:])
    q, t, d = (np.concatenate(p) for p in parts)
    resolved = {"query": query, "train": train, "train_in_database": "yes" if holds_train else "no"}
    return q, t, d, None, resolved


# --------------------------------------------------------------------------------------------------------------
# Persistence
# --------------------------------------------------------------------------------------------------------------


def _cache_dir() -> str:
    base = os.environ.get("ATTNHASH_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "attnhash")
    return os.path.join(base, "splits")


def _params_tag(params: dict | None) -> str:
    if not params:
        return ""
    return "-" + "-".join(f"{k[0]}{v}" for k, v in sorted(params.items()))


def default_split_paths(source: ImageSource, protocol: str, seed: int = 0, params: dict | None = None) -> list[str]:
    """Where a split file is looked for, in order; a new one is written to the last, in the cache folder,
    never into the user's data folder. The cache file is named after where the data lives (its path or
    dataset name), so data that changed there is told apart from a new dataset: its split is refused, not
    silently drawn again. Split files of earlier versions (beside the data, or named by the data's
    fingerprint) are still read."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", source.name).strip("_.")[-80:] or "data"
    tag = f"{protocol}{_params_tag(params)}-seed{seed}"
    legacy = [os.path.join(_cache_dir(), f"{safe}-{source.fingerprint()[:12]}-{protocol}-seed{seed}.json")]
    if source.root is not None:
        legacy.insert(0, os.path.join(source.root, f"attnhash-split-{protocol}-seed{seed}.json"))
    where = source.spec or (source.name if os.path.isabs(source.name) else None) or source.root
    key = hashlib.sha256(where.encode("utf-8", "surrogateescape")).hexdigest()[:12] if where else \
        source.fingerprint()[:12]
    own = os.path.join(_cache_dir(), f"{safe}-{key}-{tag}.json")
    return (legacy if not params else []) + [own]


def _split_json(split: Split, source: ImageSource) -> str:
    compact = lambda v: json.dumps(v, separators=(",", ":"))  # noqa: E731  (long index lists on one line)
    fields = {
        "format": _FORMAT, "version": _VERSION, "protocol": split.protocol, "seed": split.seed,
        "num_items": len(source), "fingerprint": source.fingerprint(), "source": source.name,
        "classes": None if split.classes is None else split.classes.tolist(), "topk": split.topk,
        "params": split.params, "sizes": split.sizes(),
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


def load_split(path: str, source: ImageSource, protocol: str | None = None, seed: int | None = None,
               params: dict | None = None) -> Split:
    """Read a split file and check it belongs to this data (item count and fingerprint), protocol, seed and
    parameters (asked ones; "auto" settings match what they resolved to)."""
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
    saved = doc.get("params") or {}
    for key, value in (params or {}).items():
        if value != "auto" and saved.get(key) != value:
            raise DataError(f"{path}: split file has {key}={saved.get(key)!r}, asked for {value!r}{where}")
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
                 classes=classes, topk=topk, params=doc.get("params"))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def load_or_create_split(source: ImageSource, protocol: str, seed: int = 0,
                         path: str | os.PathLike | None = None, params: dict | None = None) -> tuple[Split, str]:
    """Reuse the split file if there is one (checking it still matches the data), else draw and write it once.

    ``path`` None: ``$ATTNHASH_CACHE_DIR/splits/`` (default ~/.cache/attnhash/splits/), never the data folder
    (see default_split_paths). ``params``: those of a protocol that takes them. Returns the split and the file.
    """
    proto = PROTOCOLS.get(protocol)
    params = {**STRATIFIED_DEFAULTS, **(params or {})} if proto.takes_params else None
    if path is not None:
        path = os.fspath(path)
        if os.path.exists(path):
            return load_split(path, source, proto.name, seed, params), path
        split = make_split(source, proto.name, seed, params)
        try:
            save_split(split, source, path)
        except OSError as exc:
            raise DataError(f"{path}: cannot write split file ({exc.strerror or exc})") from None
        return split, path
    candidates = default_split_paths(source, proto.name, seed, params)
    for candidate in candidates:
        if os.path.exists(candidate):
            return load_split(candidate, source, proto.name, seed, params), candidate
    split = make_split(source, proto.name, seed, params)
    target = candidates[-1]
    try:
        save_split(split, source, target)
    except OSError as exc:
        raise DataError(f"{target}: cannot write the split file ({exc.strerror or exc}); set ATTNHASH_CACHE_DIR "
                        "or pass a split path") from None
    return split, target

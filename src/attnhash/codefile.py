"""The two code files attnhash writes and reads (NumPy .npz, loaded without pickle):

- `CodeSet`: codes of a list of images, as `attnhash encode` writes them and `index build/add --codes`
  reads them: `codes` (packed uint8), `bits`, `fingerprint` of the model, and per item, where known,
  `paths`, `labels` (multi-hot) and `index` (positions in the source).
- `SplitCodes`: the query and database codes of a protocol split with their labels, for scoring:
  a run folder's evaluation cache (`codes.npz`) and the files `evaluate --codes` scores (made by any tool).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from attnhash.atomic import atomic_write
from attnhash.codes import as_packed
from attnhash.errors import DataError

__all__ = ["CodeSet", "SplitCodes"]


def _save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def _load_npz(path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DataError(f"{os.fspath(path)}: no such {what} file") from None
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{os.fspath(path)}: not a readable {what} file ({err})") from None


def _packed(path, key: str, values: np.ndarray, bits: int | None = None) -> np.ndarray:
    try:
        return as_packed(values, bits)
    except ValueError as err:
        raise DataError(f"{os.fspath(path)}: {key}: {err}") from None


@dataclass
class CodeSet:
    """Packed codes of n images, with what is known about each image."""

    codes: np.ndarray  # uint8 (n, bits/8)
    bits: int
    fingerprint: str | None = None  # sha256 of the checkpoint that made them
    paths: list[str] | None = None
    labels: np.ndarray | None = None  # (n, C) multi-hot
    index: np.ndarray | None = None  # positions in the source they came from
    class_names: list[str] | None = None  # the names of the label columns

    def __len__(self) -> int:
        return len(self.codes)

    def save(self, path: str | os.PathLike) -> None:
        arrays = {"codes": self.codes, "bits": np.array(self.bits)}
        if self.fingerprint:
            arrays["fingerprint"] = np.array(self.fingerprint)
        if self.paths is not None:
            arrays["paths"] = np.array(self.paths, dtype=str)
        if self.labels is not None:
            arrays["labels"] = self.labels
        if self.index is not None:
            arrays["index"] = self.index
        if self.class_names:
            arrays["class_names"] = np.array(self.class_names, dtype=str)
        _save_npz(path, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CodeSet":
        data = _load_npz(path, "encoded codes")
        if "codes" not in data:
            raise DataError(f"{os.fspath(path)}: no 'codes' array (expected the output of `attnhash encode`)")
        bits = int(data["bits"]) if "bits" in data else None
        codes = _packed(path, "codes", data["codes"], bits)
        n = len(codes)
        labels = data.get("labels")
        if labels is not None and labels.ndim == 1:  # class ids
            ids = labels.astype(np.int64)
            labels = np.zeros((n, int(ids.max()) + 1 if n else 0), dtype=np.uint8)
            labels[np.arange(n), ids] = 1
        for key, arr in (("paths", data.get("paths")), ("labels", labels), ("index", data.get("index"))):
            if arr is not None and len(arr) != n:
                raise DataError(f"{os.fspath(path)}: {len(arr)} {key} for {n} codes")
        return cls(codes=codes, bits=bits or codes.shape[1] * 8,
                   fingerprint=str(data["fingerprint"]) if "fingerprint" in data else None,
                   paths=[str(p) for p in data["paths"]] if "paths" in data else None,
                   labels=labels, index=data.get("index"),
                   class_names=[str(c) for c in data["class_names"]] if "class_names" in data else None)


@dataclass
class SplitCodes:
    """Query and database codes with their labels: everything the protocol metrics need."""

    query_codes: np.ndarray  # packed uint8
    db_codes: np.ndarray
    query_labels: np.ndarray  # (nq, C) multi-hot
    db_labels: np.ndarray
    bits: int | None = None
    topk: int | None = None  # the protocol's mAP@R cut (None: all)
    fingerprint: str | None = None
    query_index: np.ndarray | None = None
    db_index: np.ndarray | None = None
    extra: dict[str, float] = field(default_factory=dict)  # e.g. encode_images_per_s

    REQUIRED = ("query_codes", "db_codes", "query_labels", "db_labels")

    def save(self, path: str | os.PathLike) -> None:
        arrays = {k: getattr(self, k) for k in self.REQUIRED}
        arrays["topk"] = np.array(-1 if self.topk is None else self.topk)
        if self.bits is not None:
            arrays["bits"] = np.array(self.bits)
        if self.fingerprint:
            arrays["fingerprint"] = np.array(self.fingerprint)
        for key in ("query_index", "db_index"):
            if getattr(self, key) is not None:
                arrays[key] = getattr(self, key)
        arrays.update({k: np.array(v) for k, v in self.extra.items()})
        _save_npz(path, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SplitCodes":
        data = _load_npz(path, "codes")
        missing = [k for k in cls.REQUIRED if k not in data]
        if missing:
            raise DataError(f"{os.fspath(path)}: missing array(s) {', '.join(missing)} "
                            f"(has {', '.join(data) or 'none'})")
        bits = int(data["bits"]) if "bits" in data else None
        topk = int(data["topk"]) if "topk" in data else -1
        known = set(cls.REQUIRED) | {"bits", "topk", "fingerprint", "query_index", "db_index"}
        return cls(
            query_codes=_packed(path, "query_codes", data["query_codes"], bits),
            db_codes=_packed(path, "db_codes", data["db_codes"], bits),
            query_labels=data["query_labels"], db_labels=data["db_labels"], bits=bits,
            topk=None if topk < 0 else topk,
            fingerprint=str(data["fingerprint"]) if "fingerprint" in data else None,
            query_index=data.get("query_index"), db_index=data.get("db_index"),
            extra={k: float(v) for k, v in data.items() if k not in known and np.ndim(v) == 0},
        )

"""Retriever: build, add to, search and remove from an index with its model (see attnhash.retrieval)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from attnhash.codefile import CodeSet
from attnhash.data import ImageSource, Skipped
from attnhash.errors import CheckpointError, DataError, IndexFileError
from attnhash.index import Index, create_index, open_index
from attnhash.inference import Encoder
from attnhash.inference.onnx_engine import load_encoder
from attnhash.retrieval.rerank import reranked_search


def check_encoder(index: Index, encoder: Encoder) -> None:
    """IndexFileError unless the encoder makes codes of the index's length with the index's model."""
    if encoder.bits != index.bits:
        raise IndexFileError(f"index {index.path or ''} holds {index.bits}-bit codes, the model of "
                             f"{encoder.run_dir} makes {encoder.bits}-bit codes")
    index.check_fingerprint(encoder.fingerprint)


def check_index_info(index: Index) -> None:
    """IndexFileError when the index's facts contradict each other: a class list that is not a list of names,
    or a recorded model without its fingerprint (the model check would be skipped without a word)."""
    names = index.info.get("class_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise IndexFileError(f"index file {index.path or ''} is corrupted: its class names are not a list of names")
    if index.info.get("run_dir") and not index.fingerprint:
        raise IndexFileError(f"index file {index.path or ''} is corrupted: it records the run "
                             f"{index.info['run_dir']} but not the fingerprint of its model")


def source_metadata(source: ImageSource, indices: np.ndarray,
                    class_map: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Per-item metadata of an ImageSource: a re-openable reference (path) and the class numbers."""
    labels = np.asarray(source.labels)
    out = []
    for i in indices:
        i = int(i)
        try:
            ref = source.item_ref(i)
        except (DataError, NotImplementedError):
            ref = source.describe(i)
        cls = np.flatnonzero(labels[i]).tolist()
        if class_map is not None:
            cls = [int(class_map[c]) for c in cls]
        out.append({"path": ref, "labels": cls})
    return out


class Retriever:
    """An index and (optionally) the encoder of the model that built it; the encoder is checked against it."""

    def __init__(self, index: Index, encoder: Encoder | None = None) -> None:
        if encoder is not None:
            check_encoder(index, encoder)
        self.index = index
        self.encoder = encoder

    # ---- making and opening ------------------------------------------------------------------------
    @classmethod
    def create(cls, encoder: Encoder, backend: str = "faiss", source: Any = None,
               class_names: Sequence[str] | None = None, **backend_kwargs: Any) -> "Retriever":
        """A new empty index for the encoder's model, recording the run, the source (an ImageSource or a
        name) and the class names (more are added as items with new labels arrive)."""
        run_dir = encoder.run_dir
        info = {
            "run_dir": os.path.abspath(run_dir) if run_dir and os.path.exists(run_dir) else run_dir,
            "source": source if isinstance(source, str) or source is None
            else (getattr(source, "spec", None) or getattr(source, "name", None)),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "class_names": list(class_names or []),
        }
        index = create_index(backend, encoder.bits, fingerprint=encoder.fingerprint, info=info, **backend_kwargs)
        return cls(index, encoder)

    @classmethod
    def open(cls, path: str, run_dir: str | None = None, backend: str = "faiss", device: str = "auto",
             load_model: bool = True, engine: str = "torch", **open_kwargs: Any) -> "Retriever":
        """Open an index file with the model that built it (its recorded run folder unless `run_dir` is given).

        A writer opens the file only once it holds its lock (attnhash.index.lock.IndexLock)."""
        index = open_index(path, backend=backend, **open_kwargs)
        check_index_info(index)
        return cls(index, cls.load_encoder(index, run_dir, device, engine) if load_model else None)

    def transaction(self):
        """All-or-nothing changes to the index (and its class names): see LocalIndex.transaction."""
        return self.index.transaction()

    @staticmethod
    def load_encoder(index: Index, run_dir: str | None = None, device: str = "auto", engine: str = "torch"):
        """The encoder of the run that built `index` (or of `run_dir`), checked against the index; engine
        "onnx" runs the run's exported model.onnx instead (the same codes and fingerprint)."""
        run = run_dir or index.info.get("run_dir")
        if not run:
            raise CheckpointError(f"index {index.path or ''} does not record the run that built it; pass the run "
                                  "folder (--run RUN_DIR)")
        encoder = load_encoder(run, engine, device)
        check_encoder(index, encoder)
        return encoder

    def save(self, path: str | None = None) -> None:
        self.index.save(path or self.index.path)

    def _need_encoder(self) -> Encoder:
        if self.encoder is None:
            raise CheckpointError(f"index {self.index.path or ''}: no model loaded to encode images")
        return self.encoder

    # ---- labels -------------------------------------------------------------------------------------
    def resolve_labels(self, names_or_ids: Sequence[str | int], max_classes: int | None = None) -> list[int]:
        """Label names (added to the index's class list when new) or class numbers -> class numbers.

        `max_classes` caps the class list: a new name beyond it is a DataError (nothing is added)."""
        classes: list[str] = self.index.info.setdefault("class_names", [])
        new = {str(lab).strip() for lab in names_or_ids if isinstance(lab, str)} - set(classes) - {""}
        new = {n for n in new if not (n.isdigit())}
        if max_classes is not None and new and len(classes) + len(new) > max_classes:
            raise DataError(f"{len(new)} new label name(s) would take the index past {max_classes} class names "
                            f"(it holds {len(classes)})")
        out = []
        for lab in names_or_ids:
            if isinstance(lab, int | np.integer) or (isinstance(lab, str) and lab.strip().isdigit()
                                                      and lab.strip() not in classes):
                c = int(lab)
                if c < 0:
                    raise DataError(f"label {c}: class numbers are >= 0")
                out.append(c)
                continue
            name = str(lab).strip()
            if not name:
                continue
            if name not in classes:
                classes.append(name)
            out.append(classes.index(name))
        return sorted(set(out))

    def label_names(self, labels: Sequence[int]) -> list[str]:
        classes = self.index.info.get("class_names") or []
        return [classes[c] if 0 <= c < len(classes) else str(c) for c in labels]

    def _class_map(self, names: Sequence[str] | None) -> list[int] | None:
        """Map label columns named `names` onto the index's class list (extended with new names)."""
        if not names:
            return None
        return [self.resolve_labels([n])[0] for n in names]

    # ---- adding -------------------------------------------------------------------------------------
    def add_source(self, source: ImageSource, indices: np.ndarray | None = None, batch_size: int = 256,
                   progress: bool = True, skipped: Skipped | None = None) -> np.ndarray:
        """Encode and add the items of an ImageSource; returns their new ids. With `skipped`, unreadable images
        are listed there and left out (else the first one raises)."""
        encoder = self._need_encoder()
        idx = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
        cmap = self._class_map(getattr(source, "class_names", None))
        before = set() if skipped is None else skipped.indices()
        codes = encoder.encode_source(source, idx, batch_size=batch_size, progress=progress, skipped=skipped)
        if skipped is not None:
            bad = skipped.indices() - before
            idx = np.asarray([i for i in idx if int(i) not in bad], dtype=np.int64)
        return self.index.add(codes, metadata=source_metadata(source, idx, cmap))

    def add_codes(self, codes: CodeSet, what: str = "the codes") -> np.ndarray:
        """Add codes made elsewhere (an `attnhash encode` file), with their paths and labels."""
        if codes.bits != self.index.bits:
            raise IndexFileError(f"{what} hold {codes.bits}-bit codes, index {self.index.path or ''} holds "
                                 f"{self.index.bits}")
        if codes.fingerprint:
            if self.index.fingerprint is None and len(self.index) == 0:
                self.index.fingerprint = codes.fingerprint
            self.index.check_fingerprint(codes.fingerprint, f"the model of {what}")
        cmap = self._class_map(codes.class_names)
        metas = []
        for j in range(len(codes)):
            md: dict[str, Any] = {}
            if codes.paths is not None and codes.paths[j]:
                md["path"] = codes.paths[j]
            if codes.labels is not None:
                columns = np.flatnonzero(codes.labels[j]).tolist()
                md["labels"] = columns if cmap is None else [cmap[c] for c in columns]
            metas.append(md or None)
        return self.index.add(codes.codes, metadata=metas)

    # ---- searching ----------------------------------------------------------------------------------
    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        return self._need_encoder().encode_images(images)

    def search_answers(self, codes: np.ndarray, k: int | None = None, radius: int | None = None,
                       max_results: int | None = None, query_real: np.ndarray | None = None
                       ) -> list[dict[str, Any]]:
        """Top-k or radius search -> per query {"results": [{id, distance, path, labels, label_names}, ...],
        "total": how many items matched, "truncated": whether `max_results` cut the list}.

        query_real: the queries' real-valued outputs z; items at equal distance are then ranked by
        <tanh(z), b> (attnhash.retrieval.rerank) and each hit carries its score.
        Nothing larger than the index is allocated: k beyond the item count asks only for what exists."""
        if (k is None) == (radius is None):
            raise ValueError("give exactly one of k and radius")
        if k is not None and k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        q = np.asarray(codes)
        kk = None if k is None else min(int(k), len(self.index))
        if kk == 0:
            empty = (np.zeros(0, np.int32), np.zeros(0, np.int64), None)
            rows = [empty] * (1 if q.ndim == 1 else len(q))
        elif query_real is not None:
            rows = reranked_search(self.index, codes, query_real, k=kk, radius=radius)
        elif kk is not None:
            dist, ids = self.index.search(codes, kk)
            rows = [(d[i >= 0], i[i >= 0], None) for d, i in zip(dist, ids)]
        else:
            rows = [(d, i, None) for d, i in self.index.range_search(codes, radius)]
        out = []
        for d_row, ids_row, scores in rows:
            total = len(ids_row)
            if max_results is not None:
                d_row, ids_row = d_row[:max_results], ids_row[:max_results]
            metas = self.index.metadata(ids_row) if len(ids_row) else []
            hits = []
            for j, (i, d, md) in enumerate(zip(ids_row.tolist(), d_row.tolist(), metas)):
                labels = md.get("labels", [])
                hit = {"id": i, "distance": d, "path": md.get("path"), "labels": labels,
                       "label_names": self.label_names(labels)}
                if scores is not None:
                    hit["score"] = round(float(scores[j]), 6)
                hits.append(hit)
            out.append({"results": hits, "total": total, "truncated": total > len(hits)})
        return out

    def search_codes(self, codes: np.ndarray, k: int | None = None, radius: int | None = None,
                     max_results: int | None = None, query_real: np.ndarray | None = None
                     ) -> list[list[dict[str, Any]]]:
        """Top-k or radius search -> per query a list of {id, distance, path, labels, label_names} (and score,
        with query_real: see search_answers)."""
        return [a["results"] for a in self.search_answers(codes, k=k, radius=radius, max_results=max_results,
                                                          query_real=query_real)]

    def encode_images_for_search(self, images: Sequence[Any], rerank: bool = False
                                 ) -> tuple[np.ndarray, np.ndarray | None]:
        """Codes of query images, and their real-valued outputs when ranking ties by score (else None)."""
        encoder = self._need_encoder()
        if rerank:
            return encoder.encode_images_with_outputs(images)
        return encoder.encode_images(images), None

    def search_images(self, images: Sequence[Any], k: int | None = None, radius: int | None = None,
                      max_results: int | None = None, rerank: bool = False) -> list[list[dict[str, Any]]]:
        codes, real = self.encode_images_for_search(images, rerank)
        return self.search_codes(codes, k=k, radius=radius, max_results=max_results, query_real=real)

    def codes_of(self, ids: Sequence[int]) -> np.ndarray:
        """The stored codes of items (DataError naming an unknown id)."""
        try:
            return self.index.reconstruct(ids)
        except KeyError as err:
            raise DataError(f"{self.index.path or 'index'}: {err.args[0]}") from None

    # ---- removing -----------------------------------------------------------------------------------
    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        return self.index.remove(np.asarray(ids, dtype=np.int64))

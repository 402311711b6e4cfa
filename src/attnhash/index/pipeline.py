"""From a trained run and images to an index, and from query images to results (used by the CLI and service).

    encoder = load_encoder("runs/dpfah-fmnist-64")
    index = build_index(encoder, open_dataset("fmnist"))      # codes + ids + metadata + model fingerprint
    index.save("fmnist.idx")
    encoder = encoder_for_index(index)                          # the run recorded in the index, checked
    hits = search_images(index, encoder, [pil_image], k=10)    # [[{id, distance, path, labels}, ...]]
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from attnhash.errors import CheckpointError, DataError, IndexFileError
from attnhash.index import Index, create_index

__all__ = ["EncoderLike", "load_encoder", "encoder_for_index", "source_metadata", "build_index", "add_source",
           "add_codes_file", "load_query_image", "search_codes", "label_names", "resolve_labels"]


class EncoderLike(Protocol):
    """What the index side needs of attnhash.encoder.Encoder."""

    bits: int
    fingerprint: str
    image_size: int
    run_dir: str

    def encode_images(self, images: Sequence[Any], batch_size: int = 128) -> np.ndarray: ...

    def encode_source(self, source: Any, indices: Any = None, batch_size: int = 256, progress: bool = True) -> np.ndarray: ...


def load_encoder(run_dir: str, device: str = "auto") -> EncoderLike:
    """The encoder of a trained run folder (CheckpointError when missing or unusable)."""
    from attnhash.encoder import Encoder

    return Encoder.from_run(run_dir, device=device)


def encoder_for_index(index: Index, run_dir: str | None = None, device: str = "auto") -> EncoderLike:
    """Load the model that built `index` (its recorded run folder unless `run_dir` is given) and check it matches."""
    run = run_dir or index.info.get("run_dir")
    if not run:
        raise CheckpointError(f"index {index.path or ''} does not record the run that built it; pass the run folder "
                              "(--run RUN_DIR)")
    encoder = load_encoder(run, device=device)
    check_encoder(index, encoder)
    return encoder


def check_encoder(index: Index, encoder: EncoderLike) -> None:
    """IndexFileError unless the encoder makes codes of the index's length with the index's model."""
    if encoder.bits != index.bits:
        raise IndexFileError(f"index {index.path or ''} holds {index.bits}-bit codes, the model of "
                             f"{encoder.run_dir} makes {encoder.bits}-bit codes")
    index.check_fingerprint(encoder.fingerprint)


def resolve_labels(index: Index, names_or_ids: Sequence[str | int]) -> list[int]:
    """Label names (added to the index's class list when new) or class numbers -> class numbers."""
    classes: list[str] = index.info.setdefault("class_names", [])
    out = []
    for lab in names_or_ids:
        if isinstance(lab, int | np.integer) or (isinstance(lab, str) and lab.strip().isdigit() and lab.strip() not in classes):
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


def label_names(index: Index, labels: Sequence[int]) -> list[str]:
    classes = index.info.get("class_names") or []
    return [classes[c] if 0 <= c < len(classes) else str(c) for c in labels]


def source_metadata(source: Any, indices: np.ndarray, class_map: Sequence[int] | None = None) -> list[dict[str, Any]]:
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


def _class_map(index: Index, source: Any) -> list[int] | None:
    """Map the source's class columns onto the index's class list (extended with new names)."""
    names = getattr(source, "class_names", None)
    if not names:
        return None
    return [resolve_labels(index, [n])[0] for n in names]


def build_index(encoder: EncoderLike, source: Any, backend: str = "faiss", indices: np.ndarray | None = None,
                batch_size: int = 256, progress: bool = True, **backend_kwargs: Any) -> Index:
    """Encode the images of `source` and index them with their metadata and the model's fingerprint."""
    info = {
        "run_dir": os.path.abspath(encoder.run_dir) if encoder.run_dir and os.path.exists(encoder.run_dir) else encoder.run_dir,
        "source": getattr(source, "spec", None) or getattr(source, "name", None),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "class_names": [],
    }
    index = create_index(backend, encoder.bits, fingerprint=encoder.fingerprint, info=info, **backend_kwargs)
    add_source(index, encoder, source, indices=indices, batch_size=batch_size, progress=progress)
    return index


def add_source(index: Index, encoder: EncoderLike, source: Any, indices: np.ndarray | None = None,
               batch_size: int = 256, progress: bool = True) -> np.ndarray:
    """Encode and add the items of an ImageSource; returns their new ids."""
    check_encoder(index, encoder)
    idx = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
    cmap = _class_map(index, source)
    codes = encoder.encode_source(source, idx, batch_size=batch_size, progress=progress)
    return index.add(codes, metadata=source_metadata(source, idx, cmap))


def add_codes_file(index: Index, path: str) -> np.ndarray:
    """Add the codes of an `attnhash encode` .npz (codes, paths, labels, bits, fingerprint)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read encoded codes ({err})") from None
    if "codes" not in data:
        raise DataError(f"{path}: no 'codes' array (expected the output of `attnhash encode`)")
    if "bits" in data and int(data["bits"]) != index.bits:
        raise IndexFileError(f"{path} holds {int(data['bits'])}-bit codes, index {index.path or ''} holds {index.bits}")
    if "fingerprint" in data:
        fp = str(data["fingerprint"])
        if index.fingerprint is None and len(index) == 0:
            index.fingerprint = fp
        index.check_fingerprint(fp, f"the model of {path}")
    n = len(data["codes"])
    paths = [str(p) for p in data["paths"]] if "paths" in data else [None] * n
    labels = data.get("labels")
    metas = []
    for j in range(n):
        md: dict[str, Any] = {}
        if paths[j]:
            md["path"] = paths[j]
        if labels is not None:
            md["labels"] = np.flatnonzero(labels[j]).tolist() if labels.ndim == 2 else [int(labels[j])]
        metas.append(md or None)
    return index.add(data["codes"], metadata=metas)


def load_query_image(ref: str) -> np.ndarray:
    """A query image given as a file path or an item reference ("dataset:fmnist#12") -> HxWx3 uint8."""
    if ref.startswith("dataset:") and not os.path.exists(ref):
        from attnhash.data import open_item_ref  # the data layer (and torch) only when a dataset is named

        return open_item_ref(ref)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(ref) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{ref}: no such image file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{ref}: cannot read image ({str(err).strip() or type(err).__name__})") from None


def search_codes(index: Index, codes: np.ndarray, k: int | None = None, radius: int | None = None,
                 max_results: int | None = None) -> list[list[dict[str, Any]]]:
    """Top-k or radius search -> per query a list of {id, distance, path, labels, label_names}."""
    if (k is None) == (radius is None):
        raise ValueError("give exactly one of k and radius")
    if k is not None:
        dist, ids = index.search(codes, k)
        rows = [(i[i >= 0], d[i >= 0]) for d, i in zip(dist, ids)]
    else:
        rows = index.range_search(codes, radius)
    out = []
    for ids_row, d_row in rows:
        if max_results is not None:
            ids_row, d_row = ids_row[:max_results], d_row[:max_results]
        metas = index.metadata(ids_row) if len(ids_row) else []
        hits = []
        for i, d, md in zip(ids_row.tolist(), d_row.tolist(), metas):
            labels = md.get("labels", [])
            hits.append({"id": i, "distance": d, "path": md.get("path"), "labels": labels,
                         "label_names": label_names(index, labels)})
        out.append(hits)
    return out

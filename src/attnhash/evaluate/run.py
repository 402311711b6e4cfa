"""Evaluate a run on its protocol: encode the query and database sets, score them, save the results.

The codes are cached in the run folder (`codes.npz`, keyed by the checkpoint fingerprint), so plotting or
re-scoring with another R does not encode 60,000 images again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from attnhash.atomic import atomic_write, atomic_write_text
from attnhash.codes import as_packed
from attnhash.encoder import Encoder
from attnhash.errors import DataError
from attnhash.evaluate.metrics import RetrievalMetrics, evaluate_retrieval
from attnhash.rundata import RunData, prepare_data

CODES_NAME = "codes.npz"


def encode_split(run_dir: str | Path, encoder: Encoder | None = None, data: RunData | None = None,
                 progress: bool = True, device: str = "auto") -> dict:
    """Packed codes + labels of the run's query and database sets, from the cache when it is current."""
    run_dir = Path(run_dir)
    encoder = encoder or Encoder(run_dir, device=device)
    cache = run_dir / CODES_NAME
    if cache.exists():
        try:
            with np.load(cache) as z:
                if str(z["fingerprint"]) == encoder.fingerprint:
                    return {k: z[k] for k in z.files}
        except (OSError, KeyError, ValueError):
            pass  # an unreadable cache is simply rebuilt
    data = data or prepare_data(encoder.config.data)
    t0 = time.time()
    query = encoder.encode_source(data.source, data.query, progress=progress, use_stage_cache=True)
    database = encoder.encode_source(data.source, data.database, progress=progress, use_stage_cache=True)
    t2 = time.time()
    out = {
        "query_codes": query,
        "db_codes": database,
        "query_labels": data.labels[data.query],
        "db_labels": data.labels[data.database],
        "query_index": data.query,
        "db_index": data.database,
        "bits": np.array(encoder.bits),
        "topk": np.array(-1 if data.topk is None else data.topk),
        "fingerprint": np.array(encoder.fingerprint),
        "encode_images_per_s": np.array((len(data.query) + len(data.database)) / max(t2 - t0, 1e-9)),
    }
    atomic_write(cache, lambda tmp: _savez(tmp, out))
    return out


def _savez(path: str, arrays: dict) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def evaluate_run(run_dir: str | Path, topk: int | None = None, progress: bool = True, plots: bool = True,
                 device: str = "auto") -> tuple[RetrievalMetrics, dict]:
    """Score a run on its protocol; writes metrics.json (and plots/) into the run folder."""
    run_dir = Path(run_dir)
    encoder = Encoder(run_dir, device=device)
    codes = encode_split(run_dir, encoder, progress=progress)
    if topk is None:
        topk = encoder.config.eval.topk
    if topk is None:
        saved = int(codes["topk"])
        topk = None if saved < 0 else saved
    t0 = time.time()
    metrics = evaluate_retrieval(
        codes["query_codes"], codes["db_codes"], codes["query_labels"], codes["db_labels"],
        topk=topk, bits=encoder.bits, tie_aware=encoder.config.eval.tie_aware,
    )
    result = {
        "run": str(run_dir),
        "method": encoder.config.method.name,
        "ablate": list(encoder.config.method.ablate),
        "backbone": encoder.config.model.backbone,
        "dataset": encoder.config.data.dataset,
        "protocol": encoder.config.data.protocol,
        **metrics.to_dict(),
        "encode_images_per_s": round(float(codes["encode_images_per_s"]), 1),
        "metric_seconds": round(time.time() - t0, 2),
        "train_seconds": encoder.meta.get("train_seconds"),
        "train_images_per_s": encoder.meta.get("images_per_second"),
        "fingerprint": encoder.fingerprint,
        "code": encoder.meta.get("code"),
    }
    atomic_write_text(run_dir / "metrics.json", json.dumps(result, indent=2))
    if plots:
        from attnhash.evaluate.plots import plot_run

        plot_run(result, run_dir / "plots")
    return metrics, result


def load_codes_file(path: str | Path) -> dict:
    """Read a user's codes file for `evaluate --codes`: query_codes, db_codes, query_labels, db_labels."""
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: no such codes file") from None
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from None
    with z:
        missing = [k for k in ("query_codes", "db_codes", "query_labels", "db_labels") if k not in z.files]
        if missing:
            raise DataError(f"{path}: missing array(s) {', '.join(missing)} (has {', '.join(z.files) or 'none'})")
        out = {k: z[k] for k in z.files}
    for key in ("query_codes", "db_codes"):
        try:
            out[key] = as_packed(out[key])
        except ValueError as err:
            raise DataError(f"{path}: {key}: {err}") from None
    return out

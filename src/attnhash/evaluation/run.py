"""Evaluate a run on its protocol: encode the query and database sets, score them, save the results.

The codes are cached in the run folder (`codes.npz`, keyed by the checkpoint fingerprint), so plotting or
re-scoring with another R does not encode 60,000 images again.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from attnhash.codefile import SplitCodes
from attnhash.codes import pack_codes, sign
from attnhash.data import RunData, Skipped, prepare_data
from attnhash.errors import DataError
from attnhash.evaluation.plots import plot_run
from attnhash.inference import Encoder
from attnhash.metrics import RetrievalMetrics, evaluate_retrieval
from attnhash.runs import RunFolder


def encode_split(run_dir: str | Path, encoder: Encoder | None = None, data: RunData | None = None,
                 progress: bool = True, device: str = "auto") -> SplitCodes:
    """Packed codes + labels of the run's query and database sets, from the cache when it is current."""
    run = RunFolder(run_dir)
    encoder = encoder or Encoder(run, device=device)
    cached = run.load_codes(encoder.fingerprint)
    if cached is not None:
        return cached
    data = data or prepare_data(encoder.config.data)
    if not data.source.labelled:
        raise DataError(f"{data.source.name}: the data has no labels, so a run on it cannot be scored (relevance is "
                        "a shared label); encode, index and search it instead")
    skipped = None if encoder.config.data.strict else Skipped()
    t0 = time.time()
    query = encoder.encode_source(data.source, data.query, progress=progress, use_stage_cache=True, skipped=skipped)
    database = encoder.encode_source(data.source, data.database, progress=progress, use_stage_cache=True,
                                     skipped=skipped)
    seconds = time.time() - t0
    q_index, db_index = np.asarray(data.query), np.asarray(data.database)
    if skipped:
        bad = np.fromiter(skipped.indices(), dtype=np.int64)
        q_index, db_index = q_index[~np.isin(q_index, bad)], db_index[~np.isin(db_index, bad)]
        print(skipped.summary(run.write_skipped(skipped, "skipped_evaluation.tsv")), file=sys.stderr)
    codes = SplitCodes(
        query_codes=query, db_codes=database,
        query_labels=data.labels[q_index], db_labels=data.labels[db_index],
        bits=encoder.bits, topk=data.topk, fingerprint=encoder.fingerprint,
        query_index=q_index, db_index=db_index,
        extra={"encode_images_per_s": (len(data.query) + len(data.database)) / max(seconds, 1e-9)},
    )
    run.save_codes(codes)
    return codes


def query_outputs(encoder: Encoder, codes: SplitCodes, progress: bool = True) -> np.ndarray:
    """The real-valued outputs z of the run's query set (the ranking of ties by score needs them)."""
    data = prepare_data(encoder.config.data)
    z = encoder.encode_source_outputs(data.source, codes.query_index if codes.query_index is not None
                                      else data.query, progress=progress, use_stage_cache=True)
    if not np.array_equal(pack_codes(sign(z)), codes.query_codes):
        raise DataError(f"{encoder.run_dir}: the query outputs do not give the cached query codes; remove "
                           "codes.npz from the run folder and evaluate again")
    return z


def evaluate_run(run_dir: str | Path, topk: int | None = None, progress: bool = True, plots: bool = True,
                 device: str = "auto", rerank: bool = False) -> tuple[RetrievalMetrics, dict]:
    """Score a run on its protocol; writes metrics.json (and plots/) into the run folder.

    rerank: rank items at equal Hamming distance by <tanh(z_q), b_d>; the result is returned with
    "rerank": true and not saved (metrics.json keeps the protocol's ranking, ties by database index)."""
    run = RunFolder(run_dir)
    encoder = Encoder(run, device=device)
    codes = encode_split(run, encoder, progress=progress)
    if topk is None:
        topk = encoder.config.eval.topk
    if topk is None:
        topk = codes.topk
    real = query_outputs(encoder, codes, progress) if rerank else None
    t0 = time.time()
    metrics = evaluate_retrieval(
        codes.query_codes, codes.db_codes, codes.query_labels, codes.db_labels,
        topk=topk, bits=encoder.bits, tie_aware=encoder.config.eval.tie_aware, query_real=real,
    )
    cfg = encoder.config
    result = {
        "run": str(run_dir),
        "method": cfg.method.name,
        "ablate": list(cfg.method.ablate),
        "backbone": cfg.model.backbone,
        "dataset": cfg.data.dataset,
        "protocol": cfg.data.protocol,
        **metrics.to_dict(),
        "encode_images_per_s": round(float(codes.extra.get("encode_images_per_s", 0.0)), 1),
        "metric_seconds": round(time.time() - t0, 2),
        "train_seconds": encoder.meta.get("train_seconds"),
        "train_images_per_s": encoder.meta.get("images_per_second"),
        "fingerprint": encoder.fingerprint,
        "code": encoder.meta.get("code"),
        "rerank": rerank,
    }
    if rerank:
        return metrics, result
    run.save_metrics(result)
    if plots:
        plot_run(result, run.plots_dir)
    return metrics, result

"""Does ranking ties by <tanh(z_q), b_d> help? P@10, P@100, mAP@1000 and mAP@ALL with and without it.

    python benchmarks/rerank_effect.py runs/demo benchmarks/runs/fmnist/dpsh-64b ...

For each run folder: the protocol's query and database codes (the run's cached codes.npz, made if missing),
the queries' real-valued outputs z (encoded again; their signs must give the cached codes), then the metrics
of the plain ranking (Hamming distance, ties by database index) and of the ranking with ties ordered by the
asymmetric score. Nothing in the run folders is changed but the codes cache. Writes
benchmarks/results/rerank.md and rerank.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from attnhash.atomic import atomic_write_text
from attnhash.evaluation.run import encode_split, query_outputs
from attnhash.inference import Encoder
from attnhash.metrics import evaluate_retrieval

RESULTS = Path(__file__).with_name("results")


def measure(run: str) -> dict:
    encoder = Encoder(run)
    codes = encode_split(run, encoder, progress=False)
    t = time.perf_counter()
    real = query_outputs(encoder, codes, progress=False)
    encode_s = time.perf_counter() - t
    out = {"run": run, "method": encoder.config.method.name, "bits": encoder.bits,
           "queries": len(codes.query_codes), "database": len(codes.db_codes), "encode_queries_s": encode_s}
    for name, z in (("plain", None), ("rerank", real)):
        m_all = evaluate_retrieval(codes.query_codes, codes.db_codes, codes.query_labels, codes.db_labels,
                                   topk=None, query_real=z)
        m_1000 = evaluate_retrieval(codes.query_codes, codes.db_codes, codes.query_labels, codes.db_labels,
                                    topk=1000, pn_grid=(10,), tie_aware=False, query_real=z)
        out[name] = {"P@10": m_all.precision_at_n[10], "P@100": m_all.precision_at_n[100],
                     "mAP@1000": m_1000.mAP, "mAP@ALL": m_all.mAP, "mAP@ALL_tie_aware": m_all.mAP_tie_aware}
    out["gain"] = {k: out["rerank"][k] - out["plain"][k] for k in out["plain"]}
    return out


def write_report(rows: list[dict]) -> str:
    keys = ["P@10", "P@100", "mAP@1000", "mAP@ALL"]
    lines = ["# Ranking ties by <tanh(z_q), b_d>", "",
             "`python benchmarks/rerank_effect.py RUN...`: the fmnist protocol (1,000 queries, 64,000 database "
             "items); plain = Hamming distance, ties by database index; rerank = ties ordered by the asymmetric "
             "score of the query's real-valued outputs (equal codes stay in database order).", "",
             "| run | method | bits | " + " | ".join(f"{k} plain | {k} rerank" for k in keys) + " |",
             "|---|---|---:|" + "---:|" * (2 * len(keys))]
    for r in rows:
        cells = " | ".join(f"{r['plain'][k]:.4f} | {r['rerank'][k]:.4f} ({r['gain'][k]:+.4f})" for k in keys)
        lines.append(f"| {Path(r['run']).name} | {r['method']} | {r['bits']} | {cells} |")
    wins = {k: sum(r["gain"][k] > 0 for r in rows) for k in keys}
    lines += ["", "Runs where the rerank wins: " + ", ".join(f"{k} {wins[k]}/{len(rows)}" for k in keys) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders (trained on a protocol)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    rows = []
    for run in args.runs:
        row = measure(run)
        rows.append(row)
        print(f"{run}: " + ", ".join(f"{k} {row['plain'][k]:.4f} -> {row['rerank'][k]:.4f}" for k in row["plain"]),
              flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "rerank.json", json.dumps(rows, indent=2))
    report = write_report(rows)
    atomic_write_text(out / "rerank.md", report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

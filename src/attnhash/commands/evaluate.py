"""attnhash evaluate: mAP@R (deterministic and tie-aware), PR curve, P@N, P@H<=2 of a run or of a codes file."""

from __future__ import annotations

import json

from attnhash.errors import AttnHashError


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="score a run (or any codes file) with the field's retrieval metrics")
    p.add_argument("run", nargs="?", help="run folder")
    p.add_argument("--codes", help="score a .npz with query_codes, db_codes, query_labels, db_labels instead")
    p.add_argument("--topk", type=int, help="R of mAP@R (default: the protocol's own; 0 = all)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--rerank", action="store_true",
                   help="rank items at equal Hamming distance by <tanh(z_q), b_d> (the query's real-valued outputs; "
                        "a run only; printed, metrics.json keeps the protocol's ranking)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def print_summary(r: dict) -> None:
    top = "ALL" if r.get("topk") in (None, 0) else r["topk"]
    rerank = "  (ties ranked by <tanh(z_q), b_d>)" if r.get("rerank") else ""
    print(f"{r.get('method', 'codes')}  {r['bits']} bits  queries={r['num_queries']}  database={r['num_database']}"
          f"{rerank}")
    print(f"  mAP@{top:<6}        {r['mAP']:.4f}")
    print(f"  mAP@{top:<6} (ties)  {r['mAP_tie_aware']:.4f}")
    print(f"  P@H<=2            {r['precision_hamming2']:.4f}")
    pn = r["precision_at_n"]
    shown = [n for n in ("10", "100", "500", "1000") if n in pn]
    if shown:
        print("  " + "  ".join(f"P@{n}={pn[n]:.4f}" for n in shown))


def run(args) -> int:
    if bool(args.run) == bool(args.codes):
        raise AttnHashError("give either a run folder or --codes FILE.npz")
    if args.codes and args.rerank:
        raise AttnHashError("--rerank needs a run folder (the queries' real-valued outputs), not --codes")
    if args.codes:
        from attnhash.codefile import SplitCodes
        from attnhash.metrics import evaluate_retrieval

        z = SplitCodes.load(args.codes)
        try:
            m = evaluate_retrieval(z.query_codes, z.db_codes, z.query_labels, z.db_labels, topk=args.topk)
        except ValueError as err:
            raise AttnHashError(f"{args.codes}: {err}") from None
        result = {"method": "codes", **m.to_dict()}
    else:
        from attnhash.evaluation.run import evaluate_run

        topk = args.topk
        _, result = evaluate_run(args.run, topk=topk, progress=not args.json, plots=not args.no_plots,
                                 device=args.device, rerank=args.rerank)
    if args.json:
        print(json.dumps(result))
    else:
        print_summary(result)
    return 0

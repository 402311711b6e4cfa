"""attnhash serve INDEX: the HTTP API and the search web page over an index file."""

from __future__ import annotations

import argparse

from attnhash.commands.location import add_location_args, describe, open_location


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve an index: HTTP API + web page (search by image or id, add, remove)")
    p.add_argument("index", nargs="?", help="index file (milvus: the milvus-lite database file; left out with --uri)")
    p.add_argument("--run", help="run folder of the model (default: the one recorded in the index)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted request body")
    p.add_argument("--max-k", type=int, default=1000, help="largest k (and results per radius query)")
    add_location_args(p)
    p.add_argument("--rerank", action=argparse.BooleanOptionalAction, default=None,
                   help="rank image searches' results at equal distance by <tanh(z_q), b_d> unless a request says "
                        "otherwise (default: attnhash.retrieval.rerank.DEFAULT)")
    p.add_argument("--no-persist", action="store_true",
                   help="keep adds/removes in memory only (default: rewrite the index file atomically)")
    p.add_argument("--radius-tables", action="store_true",
                   help="build the search structures (the distinct-code layer) at start-up, in the background "
                        "(large indexes: otherwise the searches build it once they have cost as much; "
                        "~4 s and ~0.5 GB for 1e7 64-bit codes)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn log level (info logs every request)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnhash.serve import create_app, run_server

    path, backend, options = open_location(args, args.index)
    app = create_app(path, args.run, max_upload_mb=args.max_upload_mb, backend=backend,
                     persist=not args.no_persist, device=args.device, max_k=args.max_k,
                     radius_tables=args.radius_tables, index_options=options, rerank=args.rerank)
    svc = app.state.service
    model = svc.encoder.run_dir if svc.encoder is not None else f"none ({svc.encoder_error})"
    print(f"serving {describe(args, args.index)}: {len(svc.index)} items, {svc.index.bits}-bit codes, model {model}")
    print(f"web page: http://{args.host}:{args.port}/   API docs: http://{args.host}:{args.port}/docs")
    run_server(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0

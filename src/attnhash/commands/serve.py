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
    p.add_argument("--token-file", metavar="FILE",
                   help="enable writes (add/remove items) for requests with this token (Authorization: Bearer "
                        "<token>); default: the ATTNHASH_TOKEN environment variable; without either, writes are off")
    p.add_argument("--allowed-hosts", metavar="NAMES",
                   help="comma-separated Host names the service answers (against DNS rebinding; '*' for any); "
                        "default: localhost, 127.0.0.1, [::1] and --host")
    p.add_argument("--allowed-origins", metavar="ORIGINS", default="",
                   help="comma-separated origins (https://app.example) whose pages may write; default: none but "
                        "the service's own")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="if another writer holds the index, wait up to this long for it (default: fail at once)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted request body")
    p.add_argument("--max-k", type=int, default=1000, help="largest k (and results listed per radius query)")
    p.add_argument("--max-concurrent", type=int, default=16,
                   help="API requests served at once; up to 4x more wait up to 10 s, the rest get 503")
    p.add_argument("--pixel-budget-mp", type=float, default=100.0,
                   help="megapixels all requests together may hold decoded (1-4 bytes each); past it, uploads "
                        "wait, then get 503")
    p.add_argument("--uploads-max-mb", type=float, default=1024.0, help="size limit of the uploads folder")
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
    p.add_argument("--engine", choices=["torch", "onnx"], default="torch",
                   help="onnx: encode query images with the run's exported model.onnx (attnhash export --onnx)")
    p.set_defaults(func=run)


def allowed_hosts(names: str | None, host: str) -> list[str]:
    """The Host names to answer: the given ones, else the loopback names plus the address listened on."""
    from attnhash.serve.guard import LOOPBACK_HOSTS

    if names:
        return [n.strip() for n in names.split(",") if n.strip()]
    out = list(LOOPBACK_HOSTS)
    if host not in ("0.0.0.0", "::", ""):
        out.append(f"[{host}]" if ":" in host else host)
    return out


def run(args: argparse.Namespace) -> int:
    from attnhash.serve import create_app, run_server
    from attnhash.serve.guard import load_token
    from attnhash.serve.limits import ServiceLimits, return_large_frees_to_the_os

    return_large_frees_to_the_os()  # decoded uploads are large: give their memory back when done
    limits = ServiceLimits(max_k=args.max_k, max_upload_mb=args.max_upload_mb, max_active=args.max_concurrent,
                           max_waiting=4 * args.max_concurrent, global_pixels=int(args.pixel_budget_mp * 1e6),
                           uploads_max_mb=args.uploads_max_mb)
    token = load_token(args.token_file)
    path, backend, options = open_location(args, args.index)
    app = create_app(path, args.run, backend=backend, persist=not args.no_persist, device=args.device,
                     radius_tables=args.radius_tables, token=token, limits=limits, lock_wait=args.wait,
                     allowed_hosts=allowed_hosts(args.allowed_hosts, args.host),
                     allowed_origins=[o.strip() for o in args.allowed_origins.split(",") if o.strip()],
                     index_options=options, rerank=args.rerank, engine=args.engine)
    svc = app.state.service
    model = svc.encoder.run_dir if svc.encoder is not None else f"none ({svc.encoder_error})"
    writes = ("off (no token: set ATTNHASH_TOKEN or --token-file)" if token is None
              else "on, with the token" + ("" if not args.no_persist else ", in memory only"))
    print(f"serving {describe(args, args.index)}: {len(svc.index)} items, {svc.index.bits}-bit codes, model {model}; "
          f"writes {writes}")
    print(f"web page: http://{args.host}:{args.port}/   API docs: http://{args.host}:{args.port}/docs")
    run_server(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0

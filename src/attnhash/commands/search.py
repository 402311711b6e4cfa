"""attnhash search INDEX IMAGE... --k N | --radius R: query an index file with images (or with stored items)."""

from __future__ import annotations

import argparse
import json

from attnhash.commands.index import item_id
from attnhash.commands.location import add_location_args, open_location, shift_index_positional
from attnhash.errors import DataError


def register(sub) -> None:
    p = sub.add_parser("search", help="search an index with query images (Hamming top-k or radius)")
    p.add_argument("index", nargs="?",
                   help="index file (milvus: the milvus-lite database file; left out with --uri)")
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="query image files (or item references such as dataset:fmnist#12)")
    p.add_argument("--id", dest="ids", type=item_id, action="append", default=[],
                   help="also query with the code of this item of the index (repeatable)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--k", "-k", type=int, help="number of nearest items (default 10)")
    g.add_argument("--radius", "-r", type=int, help="every item within this Hamming distance")
    p.add_argument("--run", help="run folder of the model (default: the one recorded in the index)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--max-results", type=int, default=1000,
                   help="cap on results per query: the largest k, and where a radius answer is cut (it then says "
                        "how many matched)")
    p.add_argument("--rerank", action=argparse.BooleanOptionalAction, default=None,
                   help="rank image queries' results at equal distance by <tanh(z_q), b_d> "
                        "(default: attnhash.retrieval.rerank.DEFAULT)")
    add_location_args(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--engine", choices=["torch", "onnx"], default="torch",
                   help="onnx: encode the query images with the run's exported model.onnx (attnhash export --onnx)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnhash.data import open_item_ref
    from attnhash.retrieval import Retriever
    from attnhash.retrieval.rerank import DEFAULT as RERANK_DEFAULT

    shift_index_positional(args, "images")
    if not args.images and not args.ids:
        raise DataError("give query images, or --id ID of an item in the index")
    k = None if args.radius is not None else (args.k or 10)
    if k is not None and k <= 0:
        raise DataError(f"--k must be positive, got {k}")
    if args.max_results <= 0:
        raise DataError(f"--max-results must be positive, got {args.max_results}")
    if k is not None and k > args.max_results:
        raise DataError(f"--k {k} is more than --max-results {args.max_results}; raise --max-results to ask for more")
    if args.radius is not None and args.radius < 0:
        raise DataError(f"--radius must be >= 0, got {args.radius}")
    path, backend, options = open_location(args, args.index)
    retriever = Retriever.open(path, args.run, backend=backend, device=args.device, load_model=bool(args.images),
                               engine=args.engine, **options)
    rerank = RERANK_DEFAULT if args.rerank is None else args.rerank
    queries: list[str] = []
    answers = []
    if args.images:
        codes, real = retriever.encode_images_for_search([open_item_ref(ref) for ref in args.images], rerank)
        answers += retriever.search_answers(codes, k=k, radius=args.radius, max_results=args.max_results,
                                            query_real=real)
        queries += list(args.images)
    if args.ids:  # an item's stored code has no real-valued outputs: plain Hamming ranking
        answers += retriever.search_answers(retriever.codes_of(args.ids), k=k, radius=args.radius,
                                            max_results=args.max_results)
        queries += [f"id:{i}" for i in args.ids]
    if args.json:
        print(json.dumps([{"query": name, **answer} for name, answer in zip(queries, answers)], indent=2))
        return 0
    for name, answer in zip(queries, answers):
        hits = answer["results"]
        what = f"top {k}" if k is not None else f"radius {args.radius}"
        shown = (f"{answer['total']} results, the first {len(hits)} shown (--max-results)" if answer["truncated"]
                 else f"{len(hits)} results")
        print(f"query {name}  ({what}, {shown})")
        if not hits:
            continue
        wid = max(len(str(h["id"])) for h in hits)
        print(f"  {'rank':>4}  {'id':>{wid}}  {'dist':>4}  {'labels':<20}  path")
        for rank, h in enumerate(hits, 1):
            labels = ",".join(h["label_names"]) or "-"
            print(f"  {rank:>4}  {h['id']:>{wid}}  {h['distance']:>4}  {labels:<20}  {h['path'] or '-'}")
    return 0

"""attnhash search INDEX IMAGE... --k N | --radius R: query an index file with images (or with stored items)."""

from __future__ import annotations

import argparse
import json

import numpy as np

from attnhash.commands.index import item_id
from attnhash.errors import DataError


def register(sub) -> None:
    p = sub.add_parser("search", help="search an index with query images (Hamming top-k or radius)")
    p.add_argument("index", help="index file")
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
    p.add_argument("--backend", default="faiss", choices=["faiss", "numpy"])
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnhash.data import open_item_ref
    from attnhash.retrieval import Retriever

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
    retriever = Retriever.open(args.index, args.run, backend=args.backend, device=args.device,
                               load_model=bool(args.images))
    queries: list[str] = []
    codes = []
    if args.images:
        codes.append(retriever.encode_images([open_item_ref(ref) for ref in args.images]))
        queries += list(args.images)
    if args.ids:
        codes.append(retriever.codes_of(args.ids))
        queries += [f"id:{i}" for i in args.ids]
    q = np.concatenate(codes)
    answers = retriever.search_answers(q, k=k, radius=args.radius, max_results=args.max_results)
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

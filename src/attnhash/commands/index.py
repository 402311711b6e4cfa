"""attnhash index build|add|remove|info: make and maintain an index file."""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from attnhash.commands.location import (
    add_location_args,
    backend_of,
    describe,
    milvus_options,
    milvus_uri,
    open_location,
)
from attnhash.errors import DataError


def register(sub) -> None:
    p = sub.add_parser("index", help="build and maintain an index file (codes + ids + metadata + model fingerprint)")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION")
    isub.required = True

    b = isub.add_parser("build", help="encode images with a trained run and write a new index file")
    b.add_argument("run", help="run folder of the trained model")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="a list file, an image folder, a dataset name (fmnist, ...) or an .npz")
    src.add_argument("--codes", help="an .npz written by `attnhash encode` (codes, paths, labels)")
    b.add_argument("--root", help="root folder for the paths of a list file / where the dataset lives")
    b.add_argument("--out", "-o", help="index file to write (with --backend milvus: the milvus-lite database file, "
                                       "unless --uri names the database)")
    add_location_args(b)
    b.add_argument("--limit", type=int, help="index only the first N images")
    b.add_argument("--batch-size", type=int, default=256)
    b.add_argument("--device", default="auto")
    b.add_argument("--force", action="store_true", help="overwrite an existing index file")
    b.set_defaults(func=run_build)

    a = isub.add_parser("add", help="encode more images and add them to an index file")
    a.add_argument("index", nargs="?", help="index file (milvus: the milvus-lite file; left out with --uri)")
    add_location_args(a)
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="a list file, an image folder, a dataset name or an .npz")
    src.add_argument("--codes", help="an .npz written by `attnhash encode`")
    a.add_argument("--root")
    a.add_argument("--run", help="run folder (default: the one recorded in the index)")
    a.add_argument("--limit", type=int)
    a.add_argument("--batch-size", type=int, default=256)
    a.add_argument("--device", default="auto")
    a.set_defaults(func=run_add)

    r = isub.add_parser("remove", help="remove items by id")
    r.add_argument("index", nargs="?", help="index file (milvus: the milvus-lite file; left out with --uri)")
    r.add_argument("ids", nargs="*", type=int, help="ids to remove")
    add_location_args(r)
    r.add_argument("--ids-file", help="a text file with one id per line")
    r.set_defaults(func=run_remove)

    i = isub.add_parser("info", help="describe an index file and check its integrity")
    i.add_argument("index", nargs="?", help="index file (milvus: the milvus-lite file; left out with --uri)")
    add_location_args(i)
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--no-verify", action="store_true", help="skip the payload checksums (very large files)")
    i.set_defaults(func=run_info)


def _open_source(args):
    from attnhash.data import open_dataset

    source = open_dataset(args.images, args.root)
    indices = np.arange(len(source) if args.limit is None else min(args.limit, len(source)))
    return source, indices


def run_build(args: argparse.Namespace) -> int:
    from attnhash.codefile import CodeSet
    from attnhash.inference import Encoder
    from attnhash.retrieval import Retriever

    backend = backend_of(args)
    options: dict = {}
    if backend == "milvus":
        if args.out and args.uri:
            raise DataError("give --out (a milvus-lite database file) or --uri, not both")
        options = {**milvus_options(args), "uri": milvus_uri(args, args.out), "overwrite": args.force, "new": True}
    elif not args.out:
        raise DataError("give the index file to write (--out)")
    elif os.path.exists(args.out) and not args.force:
        raise DataError(f"{args.out} exists; pass --force to overwrite it")
    encoder = Encoder(args.run, device=args.device)
    if args.codes:
        retriever = Retriever.create(encoder, backend=backend, source=args.codes, class_names=encoder.class_names,
                                     **options)
        retriever.add_codes(CodeSet.load(args.codes), args.codes)
    else:
        source, indices = _open_source(args)
        retriever = Retriever.create(encoder, backend=backend, source=source, **options)
        retriever.add_source(source, indices=indices, batch_size=args.batch_size, progress=sys.stderr.isatty())
    index = retriever.index
    if backend == "milvus":
        index.save_info()
        print(f"{len(index)} items, {index.bits}-bit codes -> {describe(args, args.out)}")
    else:
        retriever.save(args.out)
        print(f"{len(index)} items, {index.bits}-bit codes -> {args.out}")
    return 0


def _save(index, path: str | None) -> None:
    """Write an index file back; a Milvus collection is already up to date (its metadata is written)."""
    if getattr(index, "persistent", False):
        index.save_info()
    else:
        index.save(path)


def run_add(args: argparse.Namespace) -> int:
    from attnhash.codefile import CodeSet
    from attnhash.retrieval import Retriever

    path, backend, options = open_location(args, args.index)
    retriever = Retriever.open(path, args.run, backend=backend, device=args.device, load_model=not args.codes,
                               **options)
    if args.codes:
        new = retriever.add_codes(CodeSet.load(args.codes), args.codes)
    else:
        source, indices = _open_source(args)
        new = retriever.add_source(source, indices=indices, batch_size=args.batch_size, progress=sys.stderr.isatty())
    index = retriever.index
    _save(index, path)
    span = f" (ids {new[0]}..{new[-1]})" if len(new) else ""
    print(f"added {len(new)} items{span}; {describe(args, args.index)} now holds {len(index)}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from attnhash.index import open_index

    if args.uri and args.index is not None:  # no INDEX with --uri: the first number was an id
        args.ids, args.index = [int(args.index), *args.ids], None
    ids = list(args.ids)
    if args.ids_file:
        try:
            with open(args.ids_file) as f:
                ids += [int(line) for line in f if line.strip()]
        except (OSError, ValueError) as err:
            raise DataError(f"{args.ids_file}: cannot read ids ({err})") from None
    if not ids:
        raise DataError("no ids given")
    path, backend, options = open_location(args, args.index)
    index = open_index(path, backend=backend, **options)
    removed = index.remove(np.asarray(ids, dtype=np.int64))
    if removed and not getattr(index, "persistent", False):
        index.save(path)
    print(f"removed {removed} of {len(set(ids))} ids; {describe(args, args.index)} now holds {len(index)}")
    return 0 if removed == len(set(ids)) else 1


def run_info(args: argparse.Namespace) -> int:
    from attnhash.index import open_index, read_header

    path, backend, options = open_location(args, args.index)
    if backend == "milvus":
        index = open_index(path, backend=backend, **options)
        where = {"uri": index.uri, "collection": index.collection}
    else:
        head = read_header(path)
        index = open_index(path, backend=backend, verify=not args.no_verify)
        where = {"path": path, "format_version": head["version"], "file_bytes": head["size"]}
    info = {
        **where,
        "backend": backend,
        "count": len(index),
        "bits": index.bits,
        "next_id": int(index.next_id),
        "fingerprint": index.fingerprint,
        "verified": not args.no_verify and backend != "milvus",
        **index.distinct_codes(),
        **{k: v for k, v in index.info.items() if k != "class_names"},
        "classes": len(index.info.get("class_names") or []),
        "class_names": index.info.get("class_names") or [],
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if key == "class_names":
            value = ", ".join(value) if value else "-"
        print(f"{key:<{width}}  {value}")
    return 0

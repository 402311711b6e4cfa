"""attnhash index build|add|remove|info: make and maintain an index file."""

from __future__ import annotations

import argparse
import contextlib
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

_WAIT_HELP = ("if another writer holds the index (a service, another `index` command), wait up to this many "
              "seconds for it (default: fail at once, naming it)")


def item_id(text: str) -> int:
    """An argparse type: an item id, 0 to 2^63-1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an item id: {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"item ids run from 0 to 2^63-1, got {text}")
    return value


def register(sub) -> None:
    p = sub.add_parser("index", help="build and maintain an index file (codes + ids + metadata + model fingerprint)")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION")
    isub.required = True

    b = isub.add_parser("build", help="encode images with a trained run and write a new index file")
    b.add_argument("run", help="run folder of the trained model")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="a list file, an image folder, a dataset name (fmnist, ...) or an .npz")
    src.add_argument("--codes", nargs="+", metavar="NPZ",
                     help=".npz files written by `attnhash encode` (codes, paths, labels), added in the order given "
                          "(the shares of a sharded encoding)")
    b.add_argument("--engine", choices=["torch", "onnx"], default="torch",
                   help="torch: the run's checkpoint; onnx: its exported model.onnx (the same codes and fingerprint)")
    b.add_argument("--root", help="root folder for the paths of a list file / where the dataset lives")
    b.add_argument("--out", "-o", help="index file to write (with --backend milvus: the milvus-lite database file, "
                                       "unless --uri names the database)")
    add_location_args(b)
    b.add_argument("--limit", type=int, help="index only the first N images")
    b.add_argument("--batch-size", type=int, default=256)
    b.add_argument("--device", default="auto")
    b.add_argument("--force", action="store_true", help="overwrite an existing index file")
    b.add_argument("--strict", action="store_true",
                   help="stop at the first unreadable image (default: skip it, list it in <index>.skipped.tsv)")
    b.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help=_WAIT_HELP)
    b.set_defaults(func=run_build)

    a = isub.add_parser("add", help="encode more images and add them to an index file")
    a.add_argument("index", nargs="?", help="index file (milvus: the milvus-lite file; left out with --uri)")
    add_location_args(a)
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="a list file, an image folder, a dataset name or an .npz")
    src.add_argument("--codes", nargs="+", metavar="NPZ", help=".npz files written by `attnhash encode`, in order")
    a.add_argument("--root")
    a.add_argument("--run", help="run folder (default: the one recorded in the index)")
    a.add_argument("--limit", type=int)
    a.add_argument("--batch-size", type=int, default=256)
    a.add_argument("--device", default="auto")
    a.add_argument("--strict", action="store_true",
                   help="stop at the first unreadable image (default: skip it, list it in <index>.skipped.tsv)")
    a.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help=_WAIT_HELP)
    a.set_defaults(func=run_add)

    r = isub.add_parser("remove", help="remove items by id")
    r.add_argument("index", nargs="?", help="index file (milvus: the milvus-lite file; left out with --uri)")
    r.add_argument("ids", nargs="*", type=item_id, help="ids to remove")
    add_location_args(r)
    r.add_argument("--ids-file", help="a text file with one id per line")
    r.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help=_WAIT_HELP)
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


def _writer_lock(path: str | None, args: argparse.Namespace):
    """The index file's writer lock, held from before it is read until after it is saved (one writer at a time).
    A Milvus collection keeps its own consistency: no lock file beside it."""
    from attnhash.index.lock import IndexLock

    if backend_of(args) == "milvus":
        return contextlib.nullcontext()
    return IndexLock(path, f"attnhash index {args.index_command} {path}", wait=args.wait)


def run_build(args: argparse.Namespace) -> int:
    from attnhash.inference.distributed import Distributed

    if backend_of(args) != "milvus":
        if not args.out:
            raise DataError("give the index file to write (--out)")
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if not Distributed.from_env().is_main:  # under torchrun only the first process writes the index
        return _build(args)
    with _writer_lock(args.out, args):
        return _build(args)


def _build(args: argparse.Namespace) -> int:
    from attnhash.codefile import CodeSet
    from attnhash.data import Skipped
    from attnhash.inference.distributed import Distributed
    from attnhash.inference.encode import encode_code_set, shard_of
    from attnhash.inference.onnx_engine import load_encoder
    from attnhash.retrieval import Retriever

    backend = backend_of(args)
    options: dict = {}
    if backend == "milvus":
        if args.out and args.uri:
            raise DataError("give --out (a milvus-lite database file) or --uri, not both")
        options = {**milvus_options(args), "uri": milvus_uri(args, args.out), "overwrite": args.force, "new": True}
    elif os.path.exists(args.out) and not args.force:
        raise DataError(f"{args.out} exists; pass --force to overwrite it")
    encoder = load_encoder(args.run, args.engine, args.device)
    dist = Distributed.from_env()
    parts: list[str] = []
    if args.images and dist.active:
        # torchrun: every process encodes its share into a file of its own; the first merges them in order
        if backend == "milvus" and not args.out:
            raise DataError("under torchrun give --out (a milvus-lite file) or build from --codes files")
        source, indices = _open_source(args)
        part = f"{args.out}.part{dist.rank}-of-{dist.world_size}.npz"
        skipped = None if args.strict else Skipped()
        encode_code_set(encoder, source, shard_of(indices, dist.rank, dist.world_size), skipped,
                        batch_size=args.batch_size).save(part)
        _report_skipped(skipped, part)
        dist.barrier()
        if not dist.is_main:
            return 0
        parts = [f"{args.out}.part{r}-of-{dist.world_size}.npz" for r in range(dist.world_size)]
    if args.codes or parts:
        files = args.codes or parts
        retriever = Retriever.create(encoder, backend=backend, source=args.images or ",".join(files),
                                     class_names=encoder.class_names, **options)
        for path in files:  # one file at a time: the whole set of images is never held at once
            retriever.add_codes(CodeSet.load(path), path)
    else:
        source, indices = _open_source(args)
        retriever = Retriever.create(encoder, backend=backend, source=source, **options)
        skipped = None if args.strict else Skipped()
        retriever.add_source(source, indices=indices, batch_size=args.batch_size, progress=True,
                             skipped=skipped)
        _report_skipped(skipped, args.out or "milvus")
    index = retriever.index
    if backend == "milvus":
        index.save_info()
    else:
        retriever.save(args.out)
    for part in parts:
        os.unlink(part)
    print(f"{len(index)} items, {index.bits}-bit codes -> {describe(args, args.out)}")
    return 0


def _report_skipped(skipped, output: str) -> None:
    """Write the list of unreadable images beside `output` and say so (one line)."""
    from attnhash.data import report_path

    if skipped:
        report = skipped.write(report_path(output))
        print(skipped.summary(report), file=sys.stderr)


def _save(retriever, path: str | None) -> None:
    """Write an index file back; a Milvus collection is already up to date (its metadata is written)."""
    if getattr(retriever.index, "persistent", False):
        retriever.index.save_info()
    else:
        retriever.save(path)


def run_add(args: argparse.Namespace) -> int:
    with _writer_lock(args.index, args):
        return _add(args)


def _add(args: argparse.Namespace) -> int:
    from attnhash.codefile import CodeSet
    from attnhash.data import Skipped
    from attnhash.retrieval import Retriever

    path, backend, options = open_location(args, args.index)
    retriever = Retriever.open(path, args.run, backend=backend, device=args.device, load_model=not args.codes,
                               **options)
    if args.codes:
        new = np.concatenate([retriever.add_codes(CodeSet.load(p), p) for p in args.codes])
    else:
        source, indices = _open_source(args)
        skipped = None if args.strict else Skipped()
        new = retriever.add_source(source, indices=indices, batch_size=args.batch_size, progress=True,
                                   skipped=skipped)
        _report_skipped(skipped, path if backend != "milvus" else "milvus")
    _save(retriever, path)
    span = f" (ids {new[0]}..{new[-1]})" if len(new) else ""
    print(f"added {len(new)} items{span}; {describe(args, args.index)} now holds {len(retriever.index)}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    if args.uri and args.index is not None:  # no INDEX with --uri: the first number was an id
        args.ids, args.index = [item_id(args.index), *args.ids], None
    ids = list(args.ids)
    if args.ids_file:
        try:
            with open(args.ids_file) as f:
                ids += [item_id(line.strip()) for line in f if line.strip()]
        except (OSError, argparse.ArgumentTypeError) as err:
            raise DataError(f"{args.ids_file}: cannot read ids ({err})") from None
    if not ids:
        raise DataError("no ids given")
    with _writer_lock(args.index, args):
        return _remove(args, ids)


def _remove(args: argparse.Namespace, ids: list[int]) -> int:
    from attnhash.index import open_index

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

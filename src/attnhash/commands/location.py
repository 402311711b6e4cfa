"""Where an index lives, for the commands that open one: an index file (faiss, numpy) or a Milvus collection.

    --backend milvus [--uri URI] [--collection NAME] [--milvus-token TOKEN]

With --backend milvus the INDEX argument is a milvus-lite database file (an embedded Milvus, created when
building), or --uri names the database: a milvus-lite file or a server/cluster URI (http://host:19530), and
then INDEX is left out. --uri alone implies --backend milvus. The collection keeps the model fingerprint and
the index's metadata (run folder, class names) beside the codes, so search and serve need nothing else.
"""

from __future__ import annotations

import argparse
from typing import Any

from attnhash.errors import DataError

BACKENDS = ("faiss", "numpy", "milvus")


def add_location_args(p: argparse.ArgumentParser, default_backend: str = "faiss") -> None:
    g = p.add_argument_group("index location")
    g.add_argument("--backend", choices=BACKENDS, default=None,
                   help=f"index backend (default: {default_backend}; milvus when --uri is given)")
    g.add_argument("--uri", help="Milvus database: a milvus-lite file (path.db) or a server URI (http://host:19530); "
                                 "implies --backend milvus, and INDEX is then left out")
    g.add_argument("--collection", default="attnhash", help="Milvus collection (default: attnhash)")
    g.add_argument("--milvus-token", default="", help="Milvus credentials (user:password or an API key)")


def backend_of(args: argparse.Namespace, default: str = "faiss") -> str:
    backend = args.backend or ("milvus" if args.uri else default)
    if args.uri and backend != "milvus":
        raise DataError(f"--uri names a Milvus database; it does not go with --backend {backend}")
    return backend


def milvus_uri(args: argparse.Namespace, index_arg: str | None) -> str:
    """The Milvus database of the command: --uri, else the INDEX argument (a milvus-lite file)."""
    uri = args.uri or index_arg
    if not uri:
        raise DataError("give the milvus-lite database file (INDEX) or --uri URI")
    return str(uri)


def milvus_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"collection": args.collection, "token": args.milvus_token}


def shift_index_positional(args: argparse.Namespace, rest: str) -> None:
    """With --uri there is no INDEX argument: the first positional argparse took as INDEX belongs to `rest`."""
    if args.uri and args.index is not None:
        setattr(args, rest, [args.index, *getattr(args, rest)])
        args.index = None


def describe(args: argparse.Namespace, index_arg: str | None) -> str:
    """How to name the index in messages: the file, or the collection and its database."""
    if backend_of(args) == "milvus":
        return f"Milvus collection {args.collection!r} at {milvus_uri(args, index_arg)}"
    return str(index_arg)


def open_location(args: argparse.Namespace, index_arg: str | None, **open_kwargs: Any) -> tuple[str, str, dict]:
    """(path for Retriever.open / open_index, backend, extra kwargs)."""
    backend = backend_of(args)
    if backend == "milvus":
        return milvus_uri(args, index_arg), backend, {**milvus_options(args), **open_kwargs}
    if not index_arg:
        raise DataError("give the index file (INDEX)")
    return str(index_arg), backend, dict(open_kwargs)

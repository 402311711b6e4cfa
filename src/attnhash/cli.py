"""The `attnhash` command line: one sub-command module per command group under attnhash.commands.

Each command module registers its parser here and imports what it needs (torch, FAISS, ...) inside its `run`,
so `attnhash --help` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from attnhash.errors import AttnHashError
from attnhash.version import __version__

# Each module defines `register(subparsers)`, which adds its sub-command(s) and sets `func` on them.
COMMAND_MODULES = [
    "attnhash.commands.train",
    "attnhash.commands.encode",
    "attnhash.commands.evaluate",
    "attnhash.commands.index",
    "attnhash.commands.search",
    "attnhash.commands.serve",
    "attnhash.commands.demo",
    "attnhash.commands.experiment",
    "attnhash.commands.report",
    "attnhash.commands.methods",
    "attnhash.commands.explain",
    "attnhash.commands.export",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnhash",
        description="Deep hashing with attention for image retrieval: train, encode, index, search, evaluate, serve.",
    )
    parser.add_argument("--version", action="version", version=f"attnhash {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 are printed as their own bytes
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AttnHashError as err:
        print(f"attnhash {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

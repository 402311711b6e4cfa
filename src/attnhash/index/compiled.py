"""numba, when it can be imported: the `jit` decorator of the index kernels and a hardware popcount.

numba is a dependency, but the index must keep working where it cannot be imported (an exotic platform, a
NumPy it does not support yet): `AVAILABLE` says which, and the callers keep a NumPy or FAISS path.
Compiled functions are cached on disk (numba's cache=True: the first compile of a kernel costs seconds,
later processes load it in milliseconds) and release the GIL, so the index runs them on its own threads.

`popcount` lowers to LLVM's ctpop: with AVX-512 VPOPCNTDQ (or AVX2) the loops over codes vectorise, 8 codes
per instruction. numba has no popcount of its own, hence the small intrinsic.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = ["AVAILABLE", "REASON", "jit", "popcount", "threads", "set_threads"]

try:  # pragma: no branch
    from llvmlite import ir
    from numba import njit, types
    from numba.extending import intrinsic

    AVAILABLE = os.environ.get("ATTNHASH_NO_NUMBA", "") in ("", "0")
    REASON = "" if AVAILABLE else "disabled by ATTNHASH_NO_NUMBA"
except ImportError as err:  # pragma: no cover - exercised where numba is missing
    AVAILABLE = False
    REASON = f"numba cannot be imported ({err})"


if AVAILABLE:

    def jit(fn: Callable) -> Callable:
        """Compile `fn` without the GIL, cached on disk."""
        return njit(nogil=True, cache=True)(fn)

    @intrinsic
    def popcount(typingctx, x):
        """Number of set bits of an unsigned integer, as int64 (LLVM ctpop)."""
        if not isinstance(x, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            value = builder.ctpop(args[0])
            width = args[0].type.width
            if width < 64:
                return builder.zext(value, ir.IntType(64))
            return value

        return types.int64(x), codegen

else:  # pragma: no cover

    def jit(fn: Callable) -> Callable:
        return fn

    def popcount(x: Any) -> int:
        return int(x).bit_count()


_threads: int | None = None


def threads() -> int:
    """Threads a search may use: the CPUs this process may run on (ATTNHASH_THREADS overrides)."""
    if _threads is not None:
        return _threads
    env = os.environ.get("ATTNHASH_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def set_threads(n: int | None) -> None:
    """Use n threads per search (None: as many as CPUs)."""
    global _threads
    _threads = None if n is None else max(1, int(n))

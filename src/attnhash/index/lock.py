"""One writer per index file: an advisory lock on a sidecar file `<index>.lock`.

The index file is replaced by a rename on every save, so a lock on the index file itself would be lost at the
first save; the lock is taken on a sidecar file that is never replaced or deleted (deleting it would let a
second writer lock a fresh file while the first still holds the old one). flock(2) locks belong to the open
file: the kernel drops them when the holder exits, even on kill -9, so a dead writer never leaves the index
locked. While held, the sidecar names its holder (PID, command, since when) for the "in use by" message.

Who locks: every process that changes the file (`attnhash index build|add|remove`, a service that accepts
writes, for its whole life). A writer must (re)load the index only once it holds the lock: what it loaded
before may already be stale. Readers do not lock: every save is atomic, so they see the old file or the new.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from attnhash.atomic import remove_stale_temps
from attnhash.errors import ConflictError, StorageError

try:
    import fcntl
except ImportError:  # not a POSIX system
    fcntl = None  # type: ignore[assignment]

__all__ = ["IndexLock", "IndexBusyError", "lock_path", "lock_holder", "check_not_locked_elsewhere"]

_POLL_S = (0.02, 0.25)  # first and longest pause between tries while waiting
_HELD: dict[str, int] = {}  # lock files this process holds (real path -> how many IndexLocks hold it)


class IndexBusyError(ConflictError):
    """The index file is being changed by another writer."""


def lock_path(index_path: str | os.PathLike) -> str:
    return os.fspath(index_path) + ".lock"


def lock_holder(index_path: str | os.PathLike) -> dict[str, Any] | None:
    """What the lock file says about its holder ({pid, command, since}), or None when it says nothing."""
    try:
        with open(lock_path(index_path), encoding="utf-8") as f:
            holder = json.loads(f.read() or "null")
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def check_not_locked_elsewhere(index_path: str | os.PathLike) -> None:
    """IndexBusyError when another process (or another IndexLock) holds the index's lock and this process
    does not: a save that skipped the lock would erase that writer's work. A probe, not a lock: a writer
    that means to keep the file takes IndexLock."""
    if fcntl is None:
        return
    path = lock_path(index_path)
    if os.path.realpath(path) in _HELD:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file: nobody has ever locked this index
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise IndexBusyError(f"index {os.fspath(index_path)} is in use by {_describe(lock_holder(index_path))}; "
                             "nothing was written (take the index's lock to write it: attnhash.index.lock."
                             "IndexLock)") from None
    finally:
        os.close(fd)  # drops the probe's shared lock


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder or "pid" not in holder:
        return "another process"
    text = f"PID {holder['pid']}"
    if holder.get("command"):
        text += f" ({holder['command']})"
    if holder.get("since"):
        text += f" since {holder['since']}"
    return text


class IndexLock:
    """The writer's lock on an index file: `with IndexLock(path, "attnhash index add", wait=10): ...`.

    `acquire(wait)` tries for up to `wait` seconds (0: once) and raises IndexBusyError naming the holder.
    Once held, temporary files that killed writers of this index left behind are deleted.
    """

    def __init__(self, index_path: str | os.PathLike, command: str | None = None, wait: float = 0.0) -> None:
        self.index_path = os.fspath(index_path)
        self.path = lock_path(self.index_path)
        self.command = command or " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]])[:200]
        self.wait = wait
        self.removed_temps: list[str] = []
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:
            try:  # a lock file made by another user: flock works on a read-only descriptor too
                return os.open(self.path, os.O_RDONLY)
            except OSError:
                pass
            raise StorageError(f"cannot create the lock file {self.path} of index {self.index_path}: permission "
                               "denied (writing the index needs a writable folder)") from None
        except OSError as err:
            raise StorageError(f"cannot create the lock file {self.path} of index {self.index_path}: "
                               f"{err.strerror or err}") from None

    def acquire(self, wait: float | None = None) -> IndexLock:
        if self._fd is not None:
            return self
        if fcntl is None:
            raise StorageError("index locks need a POSIX system (fcntl.flock)")
        wait = self.wait if wait is None else wait
        deadline = time.monotonic() + max(0.0, wait)
        pause = _POLL_S[0]
        fd = self._open()
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        waited = f" after waiting {wait:g} s" if wait > 0 else ""
                        raise IndexBusyError(
                            f"index {self.index_path} is in use by {_describe(lock_holder(self.index_path))}"
                            f"{waited}; only one writer at a time (--wait SECONDS waits for it)") from None
                    time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                    pause = min(2 * pause, _POLL_S[1])
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        real = os.path.realpath(self.path)
        _HELD[real] = _HELD.get(real, 0) + 1
        holder = {"pid": os.getpid(), "command": self.command, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        except OSError:
            pass  # a read-only lock file: the lock holds, only the holder's name is missing
        self.removed_temps = remove_stale_temps(self.index_path)
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        real = os.path.realpath(self.path)
        if _HELD.get(real, 0) <= 1:
            _HELD.pop(real, None)
        else:
            _HELD[real] -= 1
        try:
            os.ftruncate(fd, 0)  # before unlocking: a stale name must never describe the next holder
        except OSError:
            pass
        os.close(fd)  # closing the last descriptor of the open file drops the lock

    def __enter__(self) -> IndexLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<IndexLock {self.path} {'held' if self.held else 'not held'}>"

"""Atomic file writes: a temporary file beside the target, fsynced, then renamed over it, so a reader or a
crash sees the old file or the new one, never half of one.

Every file attnhash writes that someone else may read (checkpoints, split files, index files, codes, metrics,
results) goes through here. The temporary file is created with the usual permissions (0666 less the umask),
not tempfile's 0600: split files, indexes and benchmark results are shared by a team.
"""

from __future__ import annotations

import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator


def _temp_name(path: str | Path, pid: int) -> str:
    return f".{os.path.basename(path)}.{pid}-{secrets.token_hex(4)}.tmp"


def _new_temp(path: str | Path) -> tuple[int, str]:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, _temp_name(path, os.getpid()))
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp  # O_EXCL: the name is ours


def _discard(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def _commit(tmp: str, path: str | Path) -> None:
    os.replace(tmp, path)
    try:  # make the rename itself durable; not possible on every platform or filesystem
        dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """A file opened for writing whose content replaces `path` when the block ends without an exception."""
    fd, tmp = _new_temp(path)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _commit(tmp, path)
    except BaseException:
        _discard(tmp)
        raise


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """For writers that take a file name (safetensors, numpy): write(tmp_path), fsync, rename over `path`."""
    fd, tmp = _new_temp(path)
    usual_mode = os.fstat(fd).st_mode & 0o777
    os.close(fd)
    try:
        write(tmp)
        # some writers make their own file (safetensors' save_file creates it 0600): restore the usual mode
        if os.stat(tmp).st_mode & 0o777 != usual_mode:
            os.chmod(tmp, usual_mode)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _commit(tmp, path)
    except BaseException:
        _discard(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temps(path: str | Path) -> list[str]:
    """Delete the temporary files that writers of `path` killed mid-write left behind; returns their names.

    A temporary file names its writer's PID; it is stale when that process is gone (a live writer's file, in
    this process or another, is left alone). Files that cannot be listed or deleted are skipped: a reader in a
    read-only folder can still call this.
    """
    folder = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(r"\." + re.escape(os.path.basename(path)) + r"\.(\d+)-[0-9a-f]{8}\.tmp")
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = pattern.fullmatch(name)
        if m is None or _alive(int(m.group(1))):
            continue
        try:
            os.unlink(os.path.join(folder, name))
            removed.append(name)
        except OSError:
            pass
    return removed

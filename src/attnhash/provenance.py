"""Which code made a run: the package version and, in a git checkout, the commit (marked dirty when the
package's sources differ from it). Recorded with every run, so a benchmark row can be traced to its code;
a grid reuses a finished run by its config alone, and this is how a stale row is found."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from attnhash.version import __version__


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """e.g. "0.1.0+g1f35725" or "0.1.0+g1f35725.dirty"; just the version outside a git checkout."""
    package = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "."))
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}" + (".dirty" if dirty else "")

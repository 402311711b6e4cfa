"""Images that could not be read: counted, listed beside the output, never a reason to lose the rest.

Readers, `encode`, `index build/add` and training skip an unreadable image (a truncated file, a non-image
with an image extension, a file removed since it was listed) and go on; `--strict` stops at the first one
instead. The list is written as a tab-separated file (path, reason) beside what the command made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..atomic import atomic_open


@dataclass
class Skipped:
    """The unreadable items of one job: (position in the source, its path or name, the reason)."""

    items: list[tuple[int, str, str]] = field(default_factory=list)

    def add(self, index: int, where: str, reason: str) -> None:
        self.items.append((int(index), where, reason))

    def __len__(self) -> int:
        return len(self.items)

    def indices(self) -> set[int]:
        return {i for i, _, _ in self.items}

    def write(self, path: str | os.PathLike) -> str:
        """Write `path` (TSV: path, reason); non-UTF-8 file names are written back as their original bytes."""
        with atomic_open(path, "w") as f:
            f.reconfigure(errors="surrogateescape")
            f.write("path\treason\n")
            for _, where, reason in self.items:
                f.write(f"{where}\t{reason.replace(chr(9), ' ')}\n")
        return os.fspath(path)

    def summary(self, report: str | None = None) -> str:
        if not self.items:
            return ""
        first = self.items[0][2]
        where = f"; listed in {report}" if report else ""
        return f"skipped {len(self.items)} unreadable image(s) (first: {first}){where}"


def report_path(output: str | os.PathLike) -> str:
    """Where the list of skipped images of a job that wrote `output` goes: beside it."""
    output = os.fspath(output)
    return os.path.join(output, "skipped.tsv") if os.path.isdir(output) else output + ".skipped.tsv"

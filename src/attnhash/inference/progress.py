"""Progress of a long encoding: a bar on a terminal, and a line with images/s every few seconds otherwise, so
it shows in logs too (a batch job's stderr, a service's journal)."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


class Progress:
    """Counts images; `update(n)` after each batch, `close()` at the end (prints the closing line)."""

    def __init__(self, total: int, desc: str = "encode", enabled: bool = True, every: float = 10.0, stream=None):
        self.total, self.desc, self.every = total, desc, every
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.done = 0
        self.t0 = self.last = time.perf_counter()
        self.bar = tqdm(total=total, desc=desc, unit="img", leave=False, file=self.stream) \
            if self.enabled and self.stream.isatty() else None

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.perf_counter() - self.last >= self.every:
            self.last = time.perf_counter()
            self._line()

    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.t0, 1e-9)

    def _line(self, final: bool = False) -> None:
        what = f"{self.desc}: {self.done:,}/{self.total:,} images, {self.rate():,.0f} images/s"
        if final:
            what += f", {time.perf_counter() - self.t0:.1f} s"
        print(what, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.enabled:
            self._line(final=True)

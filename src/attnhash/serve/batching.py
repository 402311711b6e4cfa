"""Micro-batching: requests that arrive while the model is busy are encoded together in its next pass."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np


class _Pending:
    __slots__ = ("images", "codes", "error", "done")

    def __init__(self, images: list[np.ndarray]) -> None:
        self.images = images
        self.codes: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = False


class MicroBatcher:
    """Runs the encoder one batch at a time, batching the requests that queue up meanwhile.

    No extra thread: a request that finds the model idle encodes everything queued (up to `max_batch`
    images) in one forward pass and hands each requester its rows; the others wait. Under load the
    forward passes grow instead of queueing one image each, which is what lets 16 clients share one model.
    """

    def __init__(self, encode: Any, max_batch: int = 32) -> None:
        self._encode = encode
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._busy = False
        self.batches = 0

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        me = _Pending(images)
        with self._cond:
            self._queue.append(me)
        while True:
            with self._cond:
                while not me.done and self._busy:
                    self._cond.wait()
                if me.done:
                    return self._result(me)
                # the model is idle and this request is still queued: run a batch from the queue's head
                self._busy = True
                batch, count = [], 0
                while self._queue and (not batch or count + len(self._queue[0].images) <= self.max_batch):
                    batch.append(self._queue.pop(0))
                    count += len(batch[-1].images)
            try:
                codes = self._encode([im for p in batch for im in p.images])
                start = 0
                for p in batch:
                    p.codes = codes[start : start + len(p.images)]
                    start += len(p.images)
            except BaseException as err:  # every request of this batch gets the error
                for p in batch:
                    p.error = err
            finally:
                with self._cond:
                    for p in batch:
                        p.done = True
                    self._busy = False
                    self.batches += 1
                    self._cond.notify_all()

    @staticmethod
    def _result(p: _Pending) -> np.ndarray:
        if p.error is not None:
            raise p.error
        assert p.codes is not None
        return p.codes

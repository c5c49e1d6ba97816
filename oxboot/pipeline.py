"""A bounded, ordered hand-off to a worker thread.

The hot work (SHA-256 in the C core, zlib, file writes) releases the GIL,
so a few threads overlap reading, hashing, compressing and writing.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
_STOP = object()


class Worker(Generic[T]):
    """Runs `fn` on every item put, in order, on its own thread.

    An exception in `fn` stops the worker and is re-raised by the next
    :meth:`put` or by :meth:`join`; items after it are dropped.
    """

    def __init__(self, fn: Callable[[T], None], depth: int = 4, name: str = "worker") -> None:
        self._fn = fn
        self._q: queue.Queue[object] = queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _STOP:
                return
            if self._error is None:
                try:
                    self._fn(item)  # type: ignore[arg-type]
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    self._error = e

    def check(self) -> None:
        """Re-raise the worker's error, if it has failed."""
        if self._error is not None:
            raise self._error

    def put(self, item: T) -> None:
        self.check()
        self._q.put(item)

    def join(self) -> None:
        """Wait for every item; re-raise the worker's error, if any."""
        self._q.put(_STOP)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop without waiting for queued work to matter (after an error)."""
        self._error = self._error or RuntimeError("aborted")
        try:
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass
        self._q.put(_STOP)
        self._thread.join()

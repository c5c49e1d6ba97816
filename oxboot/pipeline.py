"""A bounded, ordered hand-off to a worker thread.

The hot work (SHA-256 in the C core, zlib, file writes) releases the GIL,
so a few threads overlap reading, hashing, compressing and writing.
"""

from __future__ import annotations

import mmap
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
                except BaseException as e:  # handed to the caller
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


class Inline(Generic[T]):
    """A :class:`Worker` that runs `fn` on the calling thread, in turn: what
    ``--threads 1`` asks for (no thread beside the caller's)."""

    def __init__(self, fn: Callable[[T], None]) -> None:
        self._fn = fn

    def check(self) -> None:
        pass

    def put(self, item: T) -> None:
        self._fn(item)

    def join(self) -> None:
        pass

    def abort(self) -> None:
        pass


def worker(fn: Callable[[T], None], threads: int | None, depth: int,
           name: str) -> Worker[T] | Inline[T]:
    """`fn` on a thread of its own, or inline when one thread is all
    `threads` allows."""
    return Inline(fn) if threads == 1 else Worker(fn, depth=depth, name=name)


class BufferPool:
    """A few large output buffers, handed out and given back, so that blocks
    of a decoded image are neither re-allocated nor re-faulted each time.
    Anonymous mappings: memory is only used for what pieces actually fill."""

    def __init__(self, count: int = 4, size: int = 16 << 20,
                 check: Callable[[], None] | None = None) -> None:
        self.size = size
        self._check = check
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        for _ in range(count):
            self._free.put(mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE))

    def take(self) -> mmap.mmap:
        """A free buffer; while waiting, `check` (say, that the consumer is
        still alive: one that failed gives nothing back) may raise."""
        while True:
            try:
                return self._free.get(timeout=0.05 if self._check else None)
            except queue.Empty:
                assert self._check is not None
                self._check()

    def try_take(self) -> mmap.mmap | None:
        """A free buffer if there is one now, else None."""
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return None

    def close(self) -> None:
        """Unmap the buffers given back so far, now: the pool and its
        consumer refer to each other, and a long-running process (the boot
        server verifies each image it loads) would otherwise keep them until
        the cyclic garbage collector happens to run."""
        while True:
            try:
                buf = self._free.get_nowait()
            except queue.Empty:
                return
            try:
                buf.close()
            except BufferError:  # still exported somewhere: the collector's then
                pass

    def give(self, block: bytes | memoryview) -> None:
        """Give back the buffer under `block` (a no-op for other blocks)."""
        if isinstance(block, memoryview) and isinstance(block.obj, mmap.mmap):
            buf = block.obj
            block.release()
            self._free.put(buf)

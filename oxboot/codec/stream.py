"""What the codecs read from and write to: a sink for encoded bytes, and a
reader limited to the data region."""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

#: Where an encoder hands its output, in order.
Sink = Callable[[bytes | memoryview], None]


class LimitedReader:
    """A read-only file view of exactly `size` bytes of `f`."""

    def __init__(self, f: BinaryIO, size: int, on_read: Callable[[int], None] | None) -> None:
        self._f = f
        self._left = size
        self._on_read = on_read

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n) if n else b""
        self._left -= len(data)
        if self._on_read is not None:
            self._on_read(len(data))
        return data

    @property
    def left(self) -> int:
        return self._left

"""Compression codecs for the data region: none, zlib (parallel) and zstd.

:mod:`.deflate` makes one ordinary zlib stream on every core (pigz-style),
:mod:`.inflate` reads it back piece by piece on every core (or streams what
cannot be cut), :mod:`.zstd` is the zstd extension, :mod:`.stream` what they
read from and write to. Here: picking an encoder, and decoding any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import BinaryIO, Protocol

from oxboot.codec.deflate import BLOCK, ISAL_FAST_LEVEL, ParallelZlib, zlib_header
from oxboot.codec.inflate import (
    AHEAD_GIVE_UP,
    INFLATE_STEP,
    PIECE_OUT,
    StreamInflater,
    inflate_pieces,
)
from oxboot.codec.stream import LimitedReader, Sink
from oxboot.codec.zstd import Zstd, unzstd, zstd_frame_size
from oxboot.format import Codec, ImageError
from oxboot.levels import (  # the levels are part of codec's API too
    DEFAULT_ZLIB_LEVEL,
    DEFAULT_ZSTD_LEVEL,
    ZLIB_LEVELS,
    ZSTD_LEVELS,
    default_threads,
)
from oxboot.pipeline import BufferPool

__all__ = [
    "AHEAD_GIVE_UP", "BLOCK", "DEFAULT_ZLIB_LEVEL", "DEFAULT_ZSTD_LEVEL", "INFLATE_STEP",
    "ISAL_FAST_LEVEL", "PIECE_OUT", "ZLIB_LEVELS", "ZSTD_LEVELS", "BufferPool", "Encoder",
    "ParallelZlib", "Sink", "Store", "Zstd", "decode", "default_threads", "make_encoder",
    "zlib_header", "zstd_frame_size",
]


class Encoder(Protocol):
    """Takes raw blocks in order, hands encoded bytes to its sink in order."""

    def feed(self, block: bytes | memoryview) -> None: ...
    def finish(self) -> None: ...
    def close(self) -> None: ...


class Store:
    """The identity codec: data is stored as it is."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def feed(self, block: bytes | memoryview) -> None:
        self._sink(block)

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


def make_encoder(codec: Codec, sink: Sink, *, level: int | None = None,
                 threads: int | None = None, size: int | None = None) -> Encoder:
    if codec is Codec.ZLIB:
        return ParallelZlib(sink, DEFAULT_ZLIB_LEVEL if level is None else level, threads)
    if codec is Codec.ZSTD:
        return Zstd(sink, DEFAULT_ZSTD_LEVEL if level is None else level, threads, size)
    return Store(sink)


def decode(codec: Codec, f: BinaryIO, data_size: int, image_size: int,
           on_read: Callable[[int], None] | None = None,
           step: int = INFLATE_STEP,
           pool: BufferPool | None = None,
           threads: int | None = None) -> Generator[bytes | memoryview, None, None]:
    """Yield the raw image from `data_size` bytes of `f`, in bounded blocks.

    With a `pool`, zlib data is inflated by libdeflate into the pool's
    buffers: the consumer must hand every block back with ``pool.give``
    once done with it (blocks stay valid until then), and pieces are
    inflated ahead on `threads` threads (default: every core). Close the
    generator when stopping early: that waits for them.

    Raises ImageError when the stream is corrupt, ends early, holds more
    than `image_size` bytes or is followed by stray bytes.
    """
    if codec is Codec.ZSTD:
        # The decoder cannot tell where its frame ended, so check first that
        # the data is exactly one whole frame: no more, no less.
        start = f.tell()
        size = zstd_frame_size(f, data_size)
        if size != data_size:
            raise ImageError(f"zstd frame is {size} bytes but data size is {data_size}")
        f.seek(start)
    src = LimitedReader(f, data_size, on_read)
    if codec is Codec.ZLIB and pool is not None:
        yield from inflate_pieces(src, image_size, step, pool, threads)
    elif codec is Codec.ZLIB:
        yield from StreamInflater(image_size, step, zlib_header=True).run(b"", src)
    elif codec is Codec.ZSTD:
        yield from unzstd(src, image_size, step)
    else:
        while chunk := src.read(step):
            yield chunk

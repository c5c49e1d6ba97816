"""Compression codecs for the data region: none, zlib (parallel) and zstd.

zlib output is always **one ordinary zlib stream**, because the OS inflates
it with plain zlib. To use every core anyway it follows pigz: the input is
cut into chunks compressed independently (by libdeflate, in the C core:
``ox_deflate_chunk``), each ended like a zlib sync flush so that the raw
deflate pieces concatenate into one valid stream. An empty final block,
then the Adler-32 of the whole input, close the stream. Chunks get no
preset dictionary: with 4 MiB chunks the lost 32 KiB of context at each cut
costs under 0.05% (bench/codec_survey.md).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, Protocol

from oxboot._native import ffi, lib
from oxboot.format import Codec, ImageError

#: Fastest zlib level whose output stays within 0.5% of the original
#: mkimage's (miniz level 9), i.e. <= 1.0091 x stdlib zlib level 9, on the
#: 1 GiB benchmark image (bench/codec_survey.md, 4 MiB chunks, 2 cores):
#: level 5 = 279,074,636 B, x1.0036 of zlib-9's 278,066,851 B, 203 MB/s;
#: level 4 = x1.0203 (over budget, 233 MB/s); level 6 = x0.9977, 176 MB/s.
DEFAULT_ZLIB_LEVEL = 5
DEFAULT_ZSTD_LEVEL = 6
#: zlib levels as the user gives them (see _LIBDEFLATE_LEVEL).
ZLIB_LEVELS = range(1, 10)
ZSTD_LEVELS = range(1, 20)
#: Input chunk each compressor thread takes: large enough that the cuts
#: cost well under 0.1% of ratio (4 MiB: +0.035% against one libdeflate
#: stream at level 5 or 6 on the 1 GiB image; 2 MiB: +0.07%, 1 MiB: +0.14%),
#: small enough to keep all cores busy. Speed does not depend on it.
BLOCK = 4 << 20
#: Output size bound while inflating: memory stays flat for any image.
INFLATE_STEP = 4 << 20

Sink = Callable[[bytes | memoryview], None]


def default_threads() -> int:
    """Every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _deflate_module():  # noqa: ANN202 - a module object
    # zlib-ng inflates about twice as fast as zlib; fall back to the
    # standard library where the wheel is not available.
    try:
        from zlib_ng import zlib_ng
    except ImportError:  # pragma: no cover - depends on the platform
        return zlib
    return zlib_ng


def zlib_header(level: int) -> bytes:
    """The 2-byte RFC 1950 header zlib writes for `level`."""
    cmf = 0x78  # deflate, 32 KiB window
    flevel = 0 if level < 2 else 1 if level < 6 else 2 if level == 6 else 3
    flg = flevel << 6
    flg += 31 - ((cmf << 8) + flg) % 31
    return bytes((cmf, flg))


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


#: --level -> libdeflate level. Straight through: on the benchmark data
#: libdeflate level N (chunked) is both smaller and faster than stdlib zlib
#: level N at every N = 1..9 (bench/codec_survey.md), so the numbers keep
#: their zlib meaning. libdeflate's 10..12 (near-optimal parsing: -3% vs
#: zlib-9 at 9..17 MB/s per core) are not offered.
_LIBDEFLATE_LEVEL = {level: level for level in ZLIB_LEVELS}

_ALLOC = ffi.new_allocator(should_clear_after_alloc=False)


def _deflate_chunk(level: int, chunk: bytes) -> bytes:
    """Raw deflate of `chunk`, not final, ending byte-aligned like a zlib
    sync flush (... 00 00 ff ff). Runs without the GIL."""
    cap = lib.ox_deflate_bound(len(chunk))
    out = _ALLOC("uint8_t[]", cap)
    n = lib.ox_deflate_chunk(level, ffi.from_buffer(chunk), len(chunk), out, cap)
    if n < 0:  # cannot be for room: out of memory, or libdeflate misbehaved
        raise RuntimeError(f"libdeflate could not compress a {len(chunk)}-byte chunk")
    return ffi.buffer(out, n)[:]


def _adler32(data: bytes | bytearray | memoryview, value: int = 1) -> int:
    """Adler-32 of `data` continuing from `value` (libdeflate's, vectorised)."""
    view = memoryview(data)
    if not view.nbytes:
        return value
    return lib.ox_adler32(value, ffi.from_buffer(view), view.nbytes)


class ParallelZlib:
    """pigz-style parallel zlib: one valid stream, every core busy.

    The input is re-cut into BLOCK-sized chunks, so the output depends only
    on the bytes and the level: not on the thread count nor on how the
    caller splits its feeds.
    """

    def __init__(self, sink: Sink, level: int = DEFAULT_ZLIB_LEVEL,
                 threads: int | None = None, block: int = BLOCK) -> None:
        if level not in ZLIB_LEVELS:
            raise ImageError(f"zlib level must be 1..9, not {level}")
        if block < 1:
            raise ValueError(f"block must be positive, not {block}")
        self._sink = sink
        self._level = _LIBDEFLATE_LEVEL[level]
        self._block = block
        self._threads = max(1, threads or default_threads())
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="deflate")
        self._pending: deque[Future[bytes]] = deque()
        self._buf = bytearray()
        self._adler = 1
        self._sink(zlib_header(level))

    def _submit(self, chunk: bytes) -> None:
        self._pending.append(self._pool.submit(_deflate_chunk, self._level, chunk))
        # Bounded memory: at most two chunks queued per thread.
        while len(self._pending) > 2 * self._threads:
            self._sink(self._pending.popleft().result())

    def feed(self, block: bytes | memoryview) -> None:
        view = memoryview(block).cast("B")
        if not view.nbytes:
            return
        self._adler = _adler32(view, self._adler)
        size = self._block
        if not self._buf and view.nbytes == size:
            self._submit(bytes(view))  # the common case: one copy, none kept
            return
        self._buf += view
        start = 0
        while len(self._buf) - start >= size:
            self._submit(bytes(self._buf[start:start + size]))
            start += size
        del self._buf[:start]

    def finish(self) -> None:
        if self._buf:
            self._submit(bytes(self._buf))
            self._buf.clear()
        while self._pending:
            self._sink(self._pending.popleft().result())
        # An empty final fixed-Huffman block (BFINAL=1), then Adler-32.
        self._sink(b"\x03\x00" + struct.pack(">I", self._adler))

    def close(self) -> None:
        for fut in self._pending:
            fut.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)


class Zstd:
    """One zstd frame (oxboot extension), multi-threaded by libzstd."""

    def __init__(self, sink: Sink, level: int = DEFAULT_ZSTD_LEVEL,
                 threads: int | None = None, size: int | None = None) -> None:
        import zstandard

        if level not in ZSTD_LEVELS:
            raise ImageError(f"zstd level must be 1..19, not {level}")
        self._sink = sink
        threads = max(1, threads or default_threads())
        comp = zstandard.ZstdCompressor(
            level=level, threads=threads if threads > 1 else 0,
            write_content_size=size is not None, write_checksum=True,
        )
        self._obj = comp.compressobj(size=size if size is not None else -1)

    def feed(self, block: bytes | memoryview) -> None:
        out = self._obj.compress(block)
        if out:
            self._sink(out)

    def finish(self) -> None:
        self._sink(self._obj.flush())

    def close(self) -> None:
        pass


def make_encoder(codec: Codec, sink: Sink, *, level: int | None = None,
                 threads: int | None = None, size: int | None = None) -> Encoder:
    if codec is Codec.ZLIB:
        return ParallelZlib(sink, DEFAULT_ZLIB_LEVEL if level is None else level, threads)
    if codec is Codec.ZSTD:
        return Zstd(sink, DEFAULT_ZSTD_LEVEL if level is None else level, threads, size)
    return Store(sink)


# ---- decoding -----------------------------------------------------------


class _Limited:
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


def decode(codec: Codec, f: BinaryIO, data_size: int, image_size: int,
           on_read: Callable[[int], None] | None = None,
           step: int = INFLATE_STEP) -> Iterator[bytes]:
    """Yield the raw image from `data_size` bytes of `f`, in bounded blocks.

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
    src = _Limited(f, data_size, on_read)
    if codec is Codec.ZLIB:
        yield from _inflate(src, image_size, step)
    elif codec is Codec.ZSTD:
        yield from _unzstd(src, image_size, step)
    else:
        while chunk := src.read(step):
            yield chunk


def _inflate(src: _Limited, image_size: int, step: int) -> Iterator[bytes]:
    d = _deflate_module().decompressobj()
    produced = 0
    try:
        while not d.eof:
            data = d.unconsumed_tail or src.read(1 << 20)
            if not data:
                raise ImageError("corrupt deflate stream (it ends early)")
            out = d.decompress(data, step)
            produced += len(out)
            if produced > image_size:
                raise ImageError(f"compressed data holds more than the image size of {image_size}")
            if out:
                yield out
    except zlib.error as e:
        raise ImageError(f"corrupt deflate stream ({e})") from None
    except Exception as e:  # zlib_ng raises its own error type
        if type(e).__name__ == "error":
            raise ImageError(f"corrupt deflate stream ({e})") from None
        raise
    if d.unused_data or src.left:
        raise ImageError("stray bytes after the end of the deflate stream")


def _unzstd(src: _Limited, image_size: int, step: int) -> Iterator[bytes]:
    import zstandard

    produced = 0
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=False)
        while chunk := reader.read(step):
            produced += len(chunk)
            if produced > image_size:
                raise ImageError(f"compressed data holds more than the image size of {image_size}")
            yield chunk
    except zstandard.ZstdError as e:
        raise ImageError(f"corrupt zstd stream ({e})") from None


_ZSTD_MAGIC = 0xFD2FB528


def zstd_frame_size(f: BinaryIO, limit: int) -> int:
    """Length of the zstd frame starting at f's position, found by walking
    the block headers (RFC 8878, 3.1.1) without decompressing; reads a few
    bytes per 128 KiB block. Raises ImageError if it is not a complete frame
    within `limit` bytes."""
    import zstandard

    head = f.read(18)
    if len(head) < 6 or int.from_bytes(head[:4], "little") != _ZSTD_MAGIC:
        raise ImageError("data is not a zstd frame")
    try:
        pos = zstandard.frame_header_size(head)
    except zstandard.ZstdError as e:
        raise ImageError(f"corrupt zstd frame header ({e})") from None
    has_checksum = bool(head[4] & 0x04)
    base = f.tell() - len(head)
    while True:
        if pos + 3 > limit:
            raise ImageError("zstd frame ends early")
        f.seek(base + pos)
        raw = f.read(3)
        if len(raw) < 3:
            raise ImageError("zstd frame ends early")
        word = int.from_bytes(raw, "little")
        last, kind, size = word & 1, (word >> 1) & 3, word >> 3
        if kind == 3:
            raise ImageError("corrupt zstd frame (reserved block type)")
        pos += 3 + (1 if kind == 1 else size)
        if last:
            break
    pos += 4 if has_checksum else 0
    if pos > limit:
        raise ImageError("zstd frame ends early")
    return pos

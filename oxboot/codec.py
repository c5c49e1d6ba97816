"""Compression codecs for the data region: none, zlib (parallel) and zstd.

zlib output is always **one ordinary zlib stream**, because the OS inflates
it with plain zlib. To use every core anyway it follows pigz: the input is
cut into chunks compressed independently (by libdeflate, in the C core:
``ox_deflate_chunk``), each ended like a zlib sync flush so that the raw
deflate pieces concatenate into one valid stream. An empty final block,
then the Adler-32 of the whole input, close the stream. Chunks get no
preset dictionary: with 4 MiB chunks the lost 32 KiB of context at each cut
costs under 0.05% (bench/codec_survey.md).

Reading, the same cuts speed things up: a stream is inflated piece by piece
(cut after each sync flush) by libdeflate, which only takes whole buffers
but is about 1.5x as fast as zlib-ng's streaming inflate, and since the
chunks need no dictionary, several pieces at once on every core; anything
else (the original mkimage's single stream, a piece too large) is streamed.
"""

from __future__ import annotations

import mmap
import struct
import threading
import zlib
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from types import ModuleType
from typing import BinaryIO, Protocol

from oxboot._native import ffi, lib
from oxboot.format import Codec, ImageError
from oxboot.levels import (  # the levels are part of codec's API too
    DEFAULT_ZLIB_LEVEL,
    DEFAULT_ZSTD_LEVEL,
    ZLIB_LEVELS,
    ZSTD_LEVELS,
    default_threads,
)
from oxboot.pipeline import BufferPool

#: Input chunk each compressor thread takes: large enough that the cuts
#: cost well under 0.1% of ratio (4 MiB: +0.035% against one libdeflate
#: stream at level 5 or 6 on the 1 GiB image; 2 MiB: +0.07%, 1 MiB: +0.14%),
#: small enough to keep all cores busy. Speed does not depend on it.
BLOCK = 4 << 20
#: Output size bound while inflating: memory stays flat for any image.
INFLATE_STEP = 4 << 20

Sink = Callable[[bytes | memoryview], None]


def _deflate_module() -> ModuleType:
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
#: level N at every N = 2..9 (bench/codec_survey.md), so the numbers keep
#: their zlib meaning. libdeflate's 10..12 (near-optimal parsing: -3% vs
#: zlib-9 at 9..17 MB/s per core) are not offered.
_LIBDEFLATE_LEVEL = {level: level for level in ZLIB_LEVELS}
#: --level 1, the fast level, is ISA-L's level 2 instead: on 256 MiB of the
#: benchmark data, per core, 741 MB/s at +10.5% vs zlib-9 (libdeflate-1:
#: ~150 MB/s at +7.0%; ISA-L 1: 774 MB/s, +11.8%; ISA-L 3: 467 MB/s, +9.4%).
ISAL_FAST_LEVEL = 1
_ISAL_LEVEL = 2

_ALLOC = ffi.new_allocator(should_clear_after_alloc=False)


def _isal_chunk(chunk: bytes) -> bytes:
    """As _deflate_chunk, with ISA-L (the fast level): a raw deflate stream
    of non-final blocks closed by a sync flush. Runs without the GIL."""
    from isal import isal_zlib

    c = isal_zlib.compressobj(_ISAL_LEVEL, isal_zlib.DEFLATED, -15)
    return c.compress(chunk) + c.flush(isal_zlib.Z_SYNC_FLUSH)


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
        self._isal = level == ISAL_FAST_LEVEL
        self._block = block
        self._threads = max(1, threads or default_threads())
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="deflate")
        self._pending: deque[Future[bytes]] = deque()
        self._buf = bytearray()
        self._adler = 1
        self._sink(zlib_header(level))

    def _submit(self, chunk: bytes) -> None:
        if self._isal:
            self._pending.append(self._pool.submit(_isal_chunk, chunk))
        else:
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
    src = _Limited(f, data_size, on_read)
    if codec is Codec.ZLIB and pool is not None:
        yield from _inflate_pieces(src, image_size, step, pool, threads)
    elif codec is Codec.ZLIB:
        yield from _Inflater(image_size, step, zlib_header=True).run(b"", src)
    elif codec is Codec.ZSTD:
        yield from _unzstd(src, image_size, step)
    else:
        while chunk := src.read(step):
            yield chunk


#: Pieces are cut after sync-flush markers (00 00 ff ff, the LEN/NLEN of an
#: empty stored block: the next block starts on a byte boundary), which the
#: C core finds (ox_find_sync). A piece holds at least PIECE_MIN compressed
#: bytes (shorter runs are merged) and at most PIECE_MAX (a stream without
#: markers, e.g. the original mkimage's, is streamed).
PIECE_MIN = 4 << 10
PIECE_MAX = 8 << 20
#: Output room per piece: oxboot's own pieces hold 4 MiB (BLOCK); one that
#: needs more is streamed instead, as is the rest of its stream.
PIECE_OUT = 16 << 20
#: Markers a piece may run past (each a failed attempt) before streaming.
PIECE_RETRIES = 4
#: Pieces that needed their dictionary after which nothing is inflated
#: ahead (a pigz-style stream: every attempt without one would fail).
AHEAD_GIVE_UP = 2
_DICT: int = lib.OX_INFLATE_MAX_DICT  # deflate's window: the dictionary a piece gets


class _Cutter:
    """Cuts a raw deflate stream into candidate pieces, each ending just
    after a sync-flush marker at least PIECE_MIN in (or the rest of the
    stream, trailer included, as the final piece)."""

    def __init__(self, src: _Limited) -> None:
        self.src = src
        self.buf = bytearray()  # read, not yet cut
        self.stuck = False  # no marker within PIECE_MAX: the rest is streamed
        self.done = False  # the final piece has been cut

    def next(self) -> tuple[bytes, bool] | None:
        """(the next piece, whether it is the final one), or None when there
        is none (then ``buf`` and the source hold the rest)."""
        if self.stuck or self.done:
            return None
        buf, src = self.buf, self.src
        searched = 0
        while True:
            pos = lib.ox_find_sync(ffi.from_buffer(buf), len(buf), max(searched, PIECE_MIN - 4))
            if pos >= 0:
                cut = pos + 4
                break
            searched = max(len(buf) - 3, 0)
            if not src.left or len(buf) > PIECE_MAX:
                cut = -1
                break
            buf += src.read(1 << 20)
        if (len(buf) if cut < 0 else cut) > PIECE_MAX:
            self.stuck = True
            return None
        if cut < 0:
            self.done = True
            piece = bytes(buf)
            buf.clear()
            return piece, True
        piece = bytes(buf[:cut])
        del buf[:cut]
        return piece, False


class _Piece:
    """A piece cut from the stream, its output buffer, and its inflate
    without a dictionary running ahead on another thread (if any)."""

    __slots__ = ("data", "final", "out", "ahead")

    def __init__(self, data: bytes, final: bool, out: mmap.mmap,
                 ahead: Future[tuple[int, int, int]] | None) -> None:
        self.data = data
        self.final = final
        self.out = out
        self.ahead = ahead

    def settle(self, pool: BufferPool) -> None:
        """Wait for the inflate ahead (it writes into ``out``), then give
        the buffer back."""
        if self.ahead is not None:
            futures_wait([self.ahead])
        pool.give(memoryview(self.out))


class _PieceInflater:
    """libdeflate in one call per piece, with a work area per thread."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __call__(self, zdict: bytes, data: bytes, final: bool, out: mmap.mmap) -> tuple[int, int]:
        """(output length or an OX_INFLATE_* error, input bytes used)."""
        work = getattr(self._local, "work", None)
        if work is None:
            work = self._local.work = ffi.new("uint8_t[]",
                                              lib.ox_inflate_work_size(_DICT, PIECE_MAX + 4))
        used = ffi.new("size_t *")
        n = lib.ox_inflate_piece(zdict, len(zdict), data, len(data), final, work, len(work),
                                 ffi.from_buffer(out), len(out), used)
        return n, used[0]

    def ahead(self, data: bytes, final: bool, out: mmap.mmap) -> tuple[int, int, int]:
        """Without a dictionary, on a thread of its own: (output length or
        error, input bytes used, the output's own Adler-32)."""
        n, used = self(b"", data, final, out)
        return n, used, lib.ox_adler32(1, ffi.from_buffer(out), n) if n > 0 else 1


def _inflate_pieces(src: _Limited, image_size: int, step: int, pool: BufferPool,
                    threads: int | None = None) -> Iterator[bytes | memoryview]:
    """zlib data, inflated with libdeflate piece by piece.

    The stream is cut after sync-flush markers (pigz-style streams, oxboot's
    own, have one every few MiB). Each piece is inflated in one call with
    the 32 KiB before it as its dictionary (``ox_inflate_piece``), and the
    Adler-32 is checked at the end. Anything unexpected (no markers, a
    marker that was only data, a piece that does not fit, corrupt data)
    hands the rest of the stream, from the start of that piece, to the
    streaming inflater, which then decodes it or reports the error.

    With more than one thread, the next pieces are inflated ahead, in
    parallel, without a dictionary. oxboot compresses its chunks without
    one, so this nearly always succeeds, and then it is exact: libdeflate
    refuses a match reaching back before a piece's start, and a piece is
    only taken once the one before it has been taken and ended exactly at
    its start, so it starts on a real block boundary. Where it fails (a
    pigz-style stream whose pieces do refer back, a marker that was data),
    the piece is inflated again here with its dictionary; after a couple of
    such streams' pieces, nothing more is inflated ahead.
    """
    head = src.read(2)
    if len(head) < 2 or not _plain_zlib_header(head):
        yield from _Inflater(image_size, step, zlib_header=True).run(head, src)
        return
    threads = default_threads() if threads is None else max(1, threads)
    inflate = _PieceInflater()
    cutter = _Cutter(src)
    ahead_pool = ThreadPoolExecutor(threads, thread_name_prefix="inflate") if threads > 1 \
        else None
    window: deque[_Piece] = deque()  # cut, not yet taken; the first is next
    dict_misses = 0  # pieces that needed their dictionary: not worth inflating ahead
    zdict = b""
    adler = 1
    produced = 0
    rest = b""  # what the streaming inflater gets, if it comes to that

    def cut(block: bool) -> bool:
        """Cut one more piece into the window; False if there is none, or
        no buffer to be had without waiting (unless `block`)."""
        if cutter.stuck or cutter.done:
            return False
        out = pool.take() if block else pool.try_take()
        if out is None:
            return False
        got = cutter.next()
        if got is None:
            pool.give(memoryview(out))
            return False
        data, final = got
        job = None
        if ahead_pool is not None and dict_misses < AHEAD_GIVE_UP:
            job = ahead_pool.submit(inflate.ahead, data, final, out)
        window.append(_Piece(data, final, out, job))
        return True

    try:
        while True:
            if not window and not cut(block=True):
                break  # stuck: stream the rest
            while ahead_pool is not None and len(window) <= threads and cut(block=False):
                pass
            piece = window.popleft()
            off = 0
            n = used = lib.OX_INFLATE_ERROR
            piece_adler = None
            if piece.ahead is not None:
                n, used, piece_adler = piece.ahead.result()
            if not _piece_fits(n, used, piece, produced, image_size):
                piece_adler = None
                # Again, here, with the dictionary; a marker that was data
                # joins the piece to the next, up to PIECE_RETRIES times.
                for retry in range(PIECE_RETRIES + 1):
                    off = len(zdict)
                    n, used = inflate(zdict, piece.data, piece.final, piece.out)
                    if _piece_fits(n, used, piece, produced, image_size):
                        if retry == 0 and piece.ahead is not None:
                            dict_misses += 1
                        break
                    if n != lib.OX_INFLATE_ERROR or piece.final or retry == PIECE_RETRIES:
                        n = -1
                        break
                    if window:
                        following = window.popleft()
                        following.settle(pool)
                        got: tuple[bytes, bool] | None = (following.data, following.final)
                    else:
                        got = cutter.next()
                    if got is None:
                        n = -1
                        break
                    piece.data += got[0]
                    piece.final = got[1]
                    if len(piece.data) > PIECE_MAX:
                        n = -1
                        break
                if n < 0:
                    rest = piece.data
                    pool.give(memoryview(piece.out))
                    break  # the streaming inflater decides
            view = memoryview(piece.out)[off:off + n]
            if piece_adler is None:
                adler = lib.ox_adler32(adler, ffi.from_buffer(view), n)
            else:
                adler = lib.ox_adler32_combine(adler, piece_adler, n)
            produced += n
            if n >= _DICT:
                zdict = bytes(view[n - _DICT:])
            else:
                zdict = (zdict + bytes(view))[-_DICT:]
            if piece.final:
                if int.from_bytes(piece.data[used:], "big") != adler:
                    pool.give(view)
                    raise ImageError("corrupt deflate stream (incorrect data check)")
            if n:
                yield view
            else:
                pool.give(view)
            if piece.final:
                return
        # The streaming inflater takes over: every piece not yet taken, the
        # bytes read but not cut, and the rest of the source.
        while window:
            following = window.popleft()
            following.settle(pool)
            rest += following.data
        rest += bytes(cutter.buf)
    finally:
        while window:
            window.popleft().settle(pool)
        if ahead_pool is not None:
            ahead_pool.shutdown(wait=True)
    inflater = _Inflater(image_size, step, zlib_header=False, zdict=zdict, adler=adler,
                         produced=produced)
    yield from inflater.run(rest, src)


def _piece_fits(n: int, used: int, piece: _Piece, produced: int, image_size: int) -> bool:
    """Whether an inflated piece can be taken: no error, within the image,
    and a final piece followed by exactly its 4-byte trailer."""
    return n >= 0 and produced + n <= image_size and \
        (not piece.final or used + 4 == len(piece.data))


def _plain_zlib_header(head: bytes) -> bool:
    cmf, flg = head[0], head[1]
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0 and not flg & 0x20


class _Inflater:
    """Streaming inflate (zlib-ng), from the start of a zlib stream or, raw,
    from a block boundary inside one with the preceding 32 KiB as its
    dictionary (then the Adler-32 so far is carried in and checked here)."""

    def __init__(self, limit: int, step: int, *, zlib_header: bool, zdict: bytes = b"",
                 adler: int = 1, produced: int = 0) -> None:
        self.limit = limit
        self.produced = produced
        self.step = step
        self.raw = not zlib_header
        self.adler = adler
        module = _deflate_module()
        self.error: type[Exception] = module.error  # zlib-ng has its own
        if self.raw:
            self.d = module.decompressobj(-15, zdict=zdict) if zdict else \
                module.decompressobj(-15)
        else:
            self.d = module.decompressobj()

    def run(self, first: bytes, src: _Limited) -> Iterator[bytes]:
        d = self.d
        produced = self.produced
        pending = first
        try:
            while not d.eof:
                data = d.unconsumed_tail or pending or src.read(1 << 20)
                pending = b""
                if not data:
                    raise ImageError("corrupt deflate stream (it ends early)")
                out = d.decompress(data, self.step)
                produced += len(out)
                if produced > self.limit:
                    raise ImageError("compressed data holds more than the image size of "
                                     f"{self.limit}")
                if out:
                    if self.raw:
                        self.adler = zlib.adler32(out, self.adler)
                    yield out
        except self.error as e:
            raise ImageError(f"corrupt deflate stream ({e})") from None
        rest = d.unused_data + pending
        if self.raw:
            # The Adler-32 trailer is ours to check after a raw inflate.
            while len(rest) < 4 and src.left:
                rest += src.read(4 - len(rest))
            if len(rest) < 4:
                raise ImageError("corrupt deflate stream (it ends early)")
            if int.from_bytes(rest[:4], "big") != self.adler:
                raise ImageError("corrupt deflate stream (incorrect data check)")
            rest = rest[4:]
        if rest or src.left:
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

"""zlib encoding, pigz-style: one ordinary zlib stream made on every core.

The OS inflates the data region with plain zlib, so the output is always
one valid zlib stream. To use every core anyway the input is cut into
chunks compressed independently (by libdeflate in the C core, or ISA-L at
the fast level), each ended like a zlib sync flush so that the raw deflate
pieces concatenate into one valid stream. An empty final block, then the
Adler-32 of the whole input, close the stream. Chunks get no preset
dictionary: with 4 MiB chunks the lost 32 KiB of context at each cut costs
under 0.05% (bench/codec_survey.md).
"""

from __future__ import annotations

import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from threading import Lock

from oxboot._native import adler32, deflate_chunk
from oxboot.codec.stream import Sink
from oxboot.format import ImageError
from oxboot.levels import DEFAULT_ZLIB_LEVEL, ZLIB_LEVELS, default_threads

#: Input chunk each compressor thread takes: large enough that the cuts
#: cost well under 0.1% of ratio (4 MiB: +0.035% against one libdeflate
#: stream at level 5 or 6 on the 1 GiB image; 2 MiB: +0.07%, 1 MiB: +0.14%),
#: small enough to keep all cores busy. Speed does not depend on it.
BLOCK = 4 << 20


def zlib_header(level: int) -> bytes:
    """The 2-byte RFC 1950 header zlib writes for `level`."""
    cmf = 0x78  # deflate, 32 KiB window
    flevel = 0 if level < 2 else 1 if level < 6 else 2 if level == 6 else 3
    flg = flevel << 6
    flg += 31 - ((cmf << 8) + flg) % 31
    return bytes((cmf, flg))


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




def _isal_chunk(chunk: bytes) -> bytes:
    """As _deflate_chunk, with ISA-L (the fast level): a raw deflate stream
    of non-final blocks closed by a sync flush. Runs without the GIL."""
    from isal import isal_zlib

    c = isal_zlib.compressobj(_ISAL_LEVEL, isal_zlib.DEFLATED, -15)
    return c.compress(chunk) + c.flush(isal_zlib.Z_SYNC_FLUSH)


def _deflate_chunk(level: int, chunk: bytes) -> bytes:
    """Raw deflate of `chunk`, not final, ending byte-aligned like a zlib
    sync flush (... 00 00 ff ff). Runs without the GIL."""
    return deflate_chunk(level, chunk)


#: Most of a trimmed pool (Helios's recovery image: a few hundred MB of
#: files, then zeros to 2000 MB) is zero chunks, and a chunk is compressed
#: without a dictionary, so every all-zero chunk of one size and level
#: compresses to the same bytes: they are made once per process and reused
#: (6 ms of libdeflate level 5 per 4 MiB chunk, 2.7 core-seconds for the
#: recovery shape, against a 0.2 ms comparison). The output is unchanged.
_zero_chunks: dict[tuple[bool, int, int], bytes] = {}
_zero_lock = Lock()


def _zeros(size: int) -> bytes:
    """`size` zero bytes to compare chunks with; the block size's copy is
    kept (a large bytes() is calloc'd: its pages stay the kernel's shared
    zero page, no memory of the process's own)."""
    return _ZEROS if len(_ZEROS) == size else bytes(size)


_ZEROS = bytes(BLOCK)
#: Reused zero chunks queued behind chunks being compressed, at most: a
#: reference each, but not without bound.
MAX_QUEUED = 4096


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
        #: The chunks in order: being compressed (a future, what the memory
        #: bound counts), or reused zero chunks (their bytes, shared).
        self._pending: deque[Future[bytes] | bytes] = deque()
        self._busy = 0
        self.reused_zero_chunks = 0
        self._chunk = bytearray(block)
        self._fill = 0
        self._adler = 1
        self._sink(zlib_header(level))

    def _compress(self, chunk: bytes) -> Future[bytes]:
        if self._isal:
            return self._pool.submit(_isal_chunk, chunk)
        return self._pool.submit(_deflate_chunk, self._level, chunk)

    def _zero_chunk(self, size: int) -> bytes:
        key = (self._isal, self._level, size)
        with _zero_lock:
            data = _zero_chunks.get(key)
            if data is None:
                data = _zero_chunks[key] = self._compress(_zeros(size)).result()
        self.reused_zero_chunks += 1
        return data

    def _submit(self, chunk: bytes | bytearray) -> None:
        """Queue `chunk` (a bytearray is copied: the caller reuses it)."""
        # memcmp stops at the first non-zero byte: other chunks cost nothing.
        if chunk[:1] == b"\0" and chunk == _zeros(len(chunk)):
            self._pending.append(self._zero_chunk(len(chunk)))
        else:
            self._pending.append(self._compress(bytes(chunk)))
            self._busy += 1
        # Bounded memory: at most two chunks being compressed per thread
        # (and at most MAX_QUEUED reused ones waiting behind them).
        while self._busy > 2 * self._threads or len(self._pending) > MAX_QUEUED:
            self._sink_oldest()

    def _sink_oldest(self) -> None:
        item = self._pending.popleft()
        if isinstance(item, bytes):
            self._sink(item)
        else:
            self._busy -= 1
            self._sink(item.result())

    def feed(self, block: bytes | memoryview) -> None:
        view = memoryview(block).cast("B")
        if not view.nbytes:
            return
        self._adler = adler32(view, self._adler)
        size = self._block
        if not self._fill and view.nbytes == size:
            self._submit(bytes(view))  # the caller's chunks: one copy, none kept
            return
        # Otherwise gathered into one chunk-sized buffer (copied once), which
        # is compared with zeros before a copy of it is handed over.
        while view.nbytes:
            take = min(size - self._fill, view.nbytes)
            self._chunk[self._fill:self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == size:
                self._submit(self._chunk)
                self._fill = 0

    def finish(self) -> None:
        if self._fill:
            self._submit(self._chunk[:self._fill])
            self._fill = 0
        while self._pending:
            self._sink_oldest()
        # An empty final fixed-Huffman block (BFINAL=1), then Adler-32.
        self._sink(b"\x03\x00" + struct.pack(">I", self._adler))

    def close(self) -> None:
        for item in self._pending:
            if isinstance(item, Future):
                item.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

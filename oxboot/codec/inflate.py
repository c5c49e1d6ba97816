"""zlib decoding: piece by piece with libdeflate where the stream allows,
streamed with zlib(-ng) where it does not.

A stream made by oxboot (or pigz) is cut after its sync-flush markers and
each piece inflated by libdeflate in one call, which only takes whole
buffers but is about 1.5x as fast as zlib-ng's streaming inflate; since
oxboot's chunks need no dictionary, several pieces are inflated at once on
every core, and a run of repeated pieces (zeros) is inflated only at its
start. Anything else (the original mkimage's single stream, a piece
too large, corrupt data) goes to the streaming inflater, which then decodes
it or reports the error.
"""

from __future__ import annotations

import mmap
import threading
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from types import ModuleType

from oxboot._native import (
    INFLATE_ERROR,
    INFLATE_MAX_DICT,
    InflateWork,
    adler32,
    adler32_combine,
    find_sync,
)
from oxboot.codec.stream import LimitedReader
from oxboot.format import ImageError
from oxboot.levels import default_threads
from oxboot.pipeline import BufferPool

#: Output size bound while inflating: memory stays flat for any image.
INFLATE_STEP = 4 << 20


def _deflate_module() -> ModuleType:
    # zlib-ng inflates about twice as fast as zlib; fall back to the
    # standard library where the wheel is not available.
    try:
        from zlib_ng import zlib_ng
    except ImportError:  # pragma: no cover - depends on the platform
        return zlib
    return zlib_ng


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


_DICT = INFLATE_MAX_DICT  # deflate's window: the dictionary a piece gets


class _Cutter:
    """Cuts a raw deflate stream into candidate pieces, each ending just
    after a sync-flush marker at least PIECE_MIN in (or the rest of the
    stream, trailer included, as the final piece)."""

    def __init__(self, src: LimitedReader) -> None:
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
            pos = find_sync(buf, max(searched, PIECE_MIN - 4))
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
        with memoryview(buf) as view:  # one copy, not two (buf[:cut] is one)
            piece = bytes(view[:cut])
        del buf[:cut]
        return piece, False


class _Alone:
    """What a piece inflated without a dictionary came to. That depends on
    its bytes alone (libdeflate refuses a match reaching back before them),
    so a later piece of the same bytes comes to the same: output, input
    used and Adler-32."""

    __slots__ = ("data", "final", "n", "used", "adler", "out")

    def __init__(self, data: bytes, final: bool, n: int, used: int, adler: int) -> None:
        self.data = data
        self.final = final
        self.n = n
        self.used = used
        self.adler = adler
        self.out: bytes | None = None  # a copy of the output, once the piece repeats

    def same(self, data: bytes, final: bool) -> bool:
        # bytes == compares the lengths first, then memcmp: a piece of
        # another size costs nothing, one of the same size a few KiB.
        return self.final == final and self.data == data


class _Memo:
    """The last distinct piece taken that inflated without a dictionary,
    and, from its second occurrence on, a copy of its output, which its
    later repeats are given instead of being inflated again: a recovery
    image is mostly 4 MiB chunks of zeros, each the same ~4 KiB piece.

    One piece and one copy (at most PIECE_MAX + PIECE_OUT bytes), so memory
    stays flat; the copy is immutable bytes, never a pool buffer, so the
    consumer may hold it as long as it likes. Used on one thread only."""

    def __init__(self) -> None:
        self.last: _Alone | None = None

    def find(self, data: bytes, final: bool) -> _Alone | None:
        """The output for a piece of these bytes, if it is kept."""
        last = self.last
        return last if last is not None and last.out is not None and \
            last.same(data, final) else None

    def taken(self, data: bytes, final: bool, n: int, used: int, adler: int,
              view: memoryview) -> None:
        """A piece that inflated without a dictionary into `view` was taken."""
        last = self.last
        if last is None or not last.same(data, final):
            self.last = _Alone(data, final, n, used, adler)
        elif last.out is None:
            last.out = bytes(view)  # it repeats: worth keeping


class _Piece:
    """A piece cut from the stream, its output buffer, and its inflate
    without a dictionary running ahead on another thread (if any), or the
    output of an earlier piece of the same bytes (`reuse`)."""

    __slots__ = ("data", "final", "out", "ahead", "reuse")

    def __init__(self, data: bytes, final: bool, out: mmap.mmap,
                 ahead: Future[tuple[int, int, int]] | None,
                 reuse: _Alone | None = None) -> None:
        self.data = data
        self.final = final
        self.out = out
        self.ahead = ahead
        self.reuse = reuse

    def ready(self) -> bool:
        """Whether it can be taken without waiting (unless it must be
        inflated again)."""
        return self.reuse is not None or self.ahead is not None and self.ahead.done()

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
            work = self._local.work = InflateWork(PIECE_MAX + 4)
        return work.inflate_piece(zdict, data, final, out)

    def ahead(self, data: bytes, final: bool, out: mmap.mmap) -> tuple[int, int, int]:
        """Without a dictionary, on a thread of its own: (output length or
        error, input bytes used, the output's own Adler-32)."""
        n, used = self(b"", data, final, out)
        return n, used, adler32(memoryview(out)[:n]) if n > 0 else 1


def inflate_pieces(src: LimitedReader, image_size: int, step: int, pool: BufferPool,
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
    such streams' pieces, nothing more is inflated ahead. With one thread,
    the same attempt without a dictionary is made here, in turn.

    A piece of the same bytes as the last one that inflated without a
    dictionary comes to the same output (see :class:`_Memo`): once two
    have been taken, the pieces cut after that are not inflated again but
    given a copy of that output, and only its Adler-32 is combined in.
    """
    head = src.read(2)
    if len(head) < 2 or not _plain_zlib_header(head):
        yield from StreamInflater(image_size, step, zlib_header=True).run(head, src)
        return
    threads = default_threads() if threads is None else max(1, threads)
    inflate = _PieceInflater()
    cutter = _Cutter(src)
    ahead_pool = ThreadPoolExecutor(threads, thread_name_prefix="inflate") if threads > 1 \
        else None
    window: deque[_Piece] = deque()  # cut, not yet taken; the first is next
    memo = _Memo()
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
        reuse = memo.find(data, final)
        job = None
        if reuse is None and ahead_pool is not None and dict_misses < AHEAD_GIVE_UP:
            job = ahead_pool.submit(inflate.ahead, data, final, out)
        window.append(_Piece(data, final, out, job, reuse))
        return True

    try:
        while True:
            if not window and not cut(block=True):
                break  # stuck: stream the rest
            # Keep the inflating threads fed, but hand on a piece that is
            # ready first: the hash, waiting for it, is the critical path.
            while ahead_pool is not None and len(window) <= threads and \
                    not window[0].ready() and cut(block=False):
                pass
            piece = window.popleft()
            off = 0
            n = used = INFLATE_ERROR
            piece_adler = None  # known if it inflated without a dictionary
            alone = False  # whether that was tried
            if piece.reuse is not None:
                n, used, piece_adler = piece.reuse.n, piece.reuse.used, piece.reuse.adler
            elif piece.ahead is not None:
                n, used, piece_adler = piece.ahead.result()
                alone = True
            elif ahead_pool is None and dict_misses < AHEAD_GIVE_UP:
                # One thread: the same first attempt, here, so that repeats
                # are found; as cheap as with the dictionary for oxboot's
                # pieces, and given up on as above for pigz's.
                n, used, piece_adler = inflate.ahead(piece.data, piece.final, piece.out)
                alone = True
            if not _piece_fits(n, used, piece, produced, image_size):
                piece_adler = None
                piece.reuse = None
                # Again, here, with the dictionary; a marker that was data
                # joins the piece to the next, up to PIECE_RETRIES times.
                for retry in range(PIECE_RETRIES + 1):
                    off = len(zdict)
                    n, used = inflate(zdict, piece.data, piece.final, piece.out)
                    if _piece_fits(n, used, piece, produced, image_size):
                        if retry == 0 and alone:
                            dict_misses += 1
                        break
                    if n != INFLATE_ERROR or piece.final or retry == PIECE_RETRIES:
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
            if piece.reuse is not None:
                assert piece.reuse.out is not None
                view = memoryview(piece.reuse.out)  # not a pool buffer: give() ignores it
                pool.give(memoryview(piece.out))
            else:
                view = memoryview(piece.out)[off:off + n]
            if piece_adler is None:
                adler = adler32(view, adler)
            else:
                adler = adler32_combine(adler, piece_adler, n)
                if piece.reuse is None:
                    memo.taken(piece.data, piece.final, n, used, piece_adler, view)
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
    inflater = StreamInflater(image_size, step, zlib_header=False, zdict=zdict, adler=adler,
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


class StreamInflater:
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

    def run(self, first: bytes, src: LimitedReader) -> Iterator[bytes]:
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

"""Inflating zlib images piece by piece with libdeflate (csrc/deflate.c:
ox_inflate_piece, ox_find_sync; oxboot.codec.decode with a BufferPool).

What matters: the fast path yields exactly what the streaming inflater
(zlib-ng) yields, for every stream: oxboot's own, pigz-style streams whose
pieces refer back across the cuts, streams without markers, streams in
which 00 00 ff ff occurs as data, and corrupt ones (an error either way,
never different bytes). The C calls get exact-size buffers (CBuf), so the
sanitizer run catches any stray access.
"""

from __future__ import annotations

import functools
import io
import random
import threading
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.cbuf import CBuf
from support.data import MIB, encode, mixed, rand

from oxboot import codec
from oxboot._native import ffi, lib
from oxboot.codec import BLOCK, BufferPool, decode
from oxboot.codec import inflate as codec_inflate
from oxboot.format import Codec, ImageError

SYNC = b"\x00\x00\xff\xff"


def decode_all(stream: bytes, image_size: int, pool: BufferPool | None,
               threads: int = 3) -> tuple[bytes, int]:
    """(the decoded bytes, how many blocks came from the pool)."""
    out = []
    pooled = 0
    for block in decode(Codec.ZLIB, io.BytesIO(stream), len(stream), image_size, pool=pool,
                        threads=threads):
        out.append(bytes(block))
        if isinstance(block, memoryview):
            pooled += 1
        if pool is not None:
            pool.give(block)
    return b"".join(out), pooled


def outcome(stream: bytes, image_size: int, pool: BufferPool | None,
            threads: int = 3) -> tuple[str, bytes]:
    try:
        return "ok", decode_all(stream, image_size, pool, threads)[0]
    except ImageError:
        return "error", b""


def pigz_style(data: bytes, flush_every: int, level: int = 6) -> bytes:
    """One zlib stream sync-flushed every `flush_every` bytes, as pigz does,
    but with no reset in between: pieces refer back across the cuts."""
    c = zlib.compressobj(level)
    out = [c.compress(data[i:i + flush_every]) + c.flush(zlib.Z_SYNC_FLUSH)
           for i in range(0, len(data), flush_every)]
    return b"".join(out) + c.flush()


@pytest.fixture(scope="module")
def pool() -> BufferPool:
    return BufferPool()


# ---- whole streams: the fast path and the streaming inflater agree ---------------------


@pytest.fixture(params=[1, 2, 3], ids=lambda n: f"threads{n}")
def threads(request: pytest.FixtureRequest) -> int:
    """Pieces inflated one by one (1), or ahead on 2 or 3 threads."""
    return request.param


@pytest.mark.parametrize("size", [0, 1, 5000, MIB, 4 * MIB, 9 * MIB + 7])
def test_oxboot_streams_take_the_fast_path(pool: BufferPool, size: int, threads: int) -> None:
    data = mixed(size, seed=size)
    stream = encode(data, block=MIB)  # a marker after every MiB of input
    got, pooled = decode_all(stream, size, pool, threads)
    assert got == data
    assert pooled >= size // MIB  # every whole chunk came through libdeflate
    assert decode_all(stream, size, None)[0] == data


@pytest.mark.parametrize("flush_every", [1000, 40_000, 300_000])
def test_pieces_that_refer_back_across_cuts(pool: BufferPool, flush_every: int,
                                            threads: int) -> None:
    rng = random.Random(flush_every)
    # Repetitive text: matches reach back into the previous piece.
    words = [rng.randbytes(rng.randint(3, 12)) for _ in range(300)]
    data = b" ".join(rng.choice(words) for _ in range(200_000))
    stream = pigz_style(data, flush_every)
    got, pooled = decode_all(stream, len(data), pool, threads)
    assert got == data
    assert pooled > 0


def test_streams_without_markers(pool: BufferPool) -> None:
    # Small enough: one piece, through libdeflate.
    data = mixed(3 * MIB, seed=4)
    stream = zlib.compress(data, 9)
    assert SYNC not in stream[2:]
    assert decode_all(stream, len(data), pool) == (data, 1)
    # Longer than a piece may be (the original mkimage's): streamed.
    data = random.Random(4).randbytes(9 * MIB)
    stream = zlib.compress(data, 1)
    assert SYNC not in stream[2:]
    assert decode_all(stream, len(data), pool) == (data, 0)


def test_markers_that_are_data(pool: BufferPool, threads: int) -> None:
    # Stored blocks (level 0) carry the data as is, so 00 00 ff ff in the
    # data is a "marker" inside a block, and a 65535-byte stored block's
    # LEN/NLEN read ff ff 00 00; cutting there would be wrong.
    data = (SYNC * 5000 + bytes(range(256)) * 300) * 4
    for level in (0, 1, 6):
        for stream in (zlib.compress(data, level), pigz_style(data, 70_000, level)):
            assert decode_all(stream, len(data), pool, threads)[0] == data


def test_piece_needing_more_room_than_a_buffer(threads: int) -> None:
    small = BufferPool(count=2, size=256 << 10)
    data = bytes(3 * MIB) + mixed(MIB, seed=9)  # zeros: 1000:1 per piece
    stream = encode(data, block=MIB)
    got, pooled = decode_all(stream, len(data), small, threads)
    assert got == data


@pytest.mark.parametrize("case", ["truncated", "no_trailer", "bad_adler", "stray", "too_big",
                                  "empty", "header_only", "fdict", "bad_header"])
def test_broken_streams_fail_cleanly(pool: BufferPool, case: str, threads: int) -> None:
    data = mixed(3 * MIB, seed=5)
    stream = encode(data, block=MIB)
    size = len(data)
    if case == "truncated":
        stream = stream[:len(stream) // 2]
    elif case == "no_trailer":
        stream = stream[:-4]
    elif case == "bad_adler":
        stream = stream[:-1] + bytes([stream[-1] ^ 1])
    elif case == "stray":
        stream += b"\x00"
    elif case == "too_big":
        size -= 1
    elif case == "empty":
        stream = b""
    elif case == "header_only":
        stream = stream[:2]
    elif case == "fdict":
        stream = b"\x78\xbb" + stream[2:]
    else:
        stream = b"\x78\x00" + stream[2:]
    with pytest.raises(ImageError):
        decode_all(stream, size, pool, threads)
    with pytest.raises(ImageError):
        decode_all(stream, size, None)


def test_a_read_failure_is_not_called_a_corrupt_stream() -> None:
    """Only zlib-ng's (or zlib's) own error means a corrupt stream: another
    failure whose class is called ``error`` too (struct's, here) is passed
    on as it is."""
    import struct

    data = mixed(3 * MIB, seed=6)
    stream = encode(data, block=MIB)

    class FailsOnSecondRead(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            if self.tell():
                raise struct.error("the disk said no")
            return super().read(n)

    with pytest.raises(struct.error, match="the disk said no"):
        for _ in decode(Codec.ZLIB, FailsOnSecondRead(stream), len(stream), len(data)):
            pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), min_size=1,
                      max_size=3),
       cut=st.one_of(st.none(), st.integers(0, 10**9)))
@pytest.mark.parametrize("kind", ["pigz", "oxboot"])
def test_corruptions_give_the_same_outcome_either_way(kind: str, flips: list[tuple[int, int]],
                                                      cut: int | None) -> None:
    # pigz-style pieces refer back (inflating ahead gives up); oxboot's do
    # not (every piece is inflated ahead, then checked in order).
    stream = bytearray(_STREAMS[kind])
    for pos, x in flips:
        stream[pos % len(stream)] ^= x
    if cut is not None:
        del stream[cut % len(stream):]
    slow = outcome(bytes(stream), len(_DATA), None)
    assert outcome(bytes(stream), len(_DATA), _POOL, threads=1) == slow
    assert outcome(bytes(stream), len(_DATA), _POOL, threads=3) == slow


_DATA = mixed(600_000, seed=12)
_STREAMS = {"pigz": pigz_style(_DATA, 50_000), "oxboot": encode(_DATA, block=48 << 10)}
_POOL = BufferPool(count=4, size=MIB)


class InflateLog:
    """Which thread inflated each piece, and whether with a dictionary."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, bool, bool]] = []
        real = codec_inflate._PieceInflater.__call__

        def logged(inflater, zdict, data, final, out):
            n, used = real(inflater, zdict, data, final, out)
            self.calls.append((threading.current_thread().name.split("_")[0], bool(zdict),
                               n >= 0))
            return n, used

        monkeypatch.setattr(codec_inflate._PieceInflater, "__call__", logged)

    def count(self, thread: str, with_dict: bool | None = None, ok: bool | None = None) -> int:
        return sum(1 for t, d, k in self.calls if t == thread and
                   (with_dict is None or d == with_dict) and (ok is None or k == ok))


def test_oxboot_pieces_are_inflated_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    log = InflateLog(monkeypatch)
    data = mixed(6 * MIB, seed=21)
    stream = encode(data, block=MIB)
    assert decode_all(stream, len(data), BufferPool(count=4, size=2 * MIB), threads=2) == \
        (data, 6)
    # Every piece on the inflating threads (6 chunks, then the stream's
    # end), none again here.
    assert log.count("inflate", ok=True) == 7
    assert log.count("inflate", ok=False) == 0
    assert log.count("MainThread") == 0


def test_inflating_ahead_gives_up_on_pieces_that_need_their_dictionary(
        monkeypatch: pytest.MonkeyPatch) -> None:
    log = InflateLog(monkeypatch)
    rng = random.Random(5)
    words = [rng.randbytes(rng.randint(3, 12)) for _ in range(300)]
    data = b" ".join(rng.choice(words) for _ in range(400_000))
    stream = pigz_style(data, 100_000)
    pieces = stream.count(SYNC)
    assert pieces > 20
    threads = 2
    assert decode_all(stream, len(data), BufferPool(count=6, size=MIB), threads)[0] == data
    # After AHEAD_GIVE_UP pieces that needed their dictionary, at most the
    # pieces already cut were tried ahead: the rest went straight here.
    tried_ahead = log.count("inflate")
    assert codec.AHEAD_GIVE_UP <= tried_ahead <= codec.AHEAD_GIVE_UP + threads + 1
    assert log.count("MainThread", with_dict=True, ok=True) >= pieces - tried_ahead


def test_stopping_early_waits_for_the_pieces_ahead() -> None:
    data = mixed(12 * MIB, seed=22)
    stream = encode(data, block=MIB)
    pool = BufferPool(count=5, size=2 * MIB)
    blocks = decode(Codec.ZLIB, io.BytesIO(stream), len(stream), len(data), pool=pool,
                    threads=3)
    first = next(blocks)
    assert bytes(first) == data[:MIB]
    pool.give(first)
    blocks.close()
    # Every buffer is back, and no thread is still inflating into one.
    back = [pool.try_take() for _ in range(5)]
    assert all(b is not None for b in back)
    assert pool.try_take() is None
    assert not [t for t in threading.enumerate() if t.name.startswith("inflate")]


def test_pool_take_checks_while_waiting() -> None:
    p = BufferPool(count=1, size=4096, check=lambda: (_ for _ in ()).throw(OSError("dead")))
    first = p.take()
    with pytest.raises(OSError, match="dead"):
        p.take()  # nothing is given back: the check ends the wait
    p.give(memoryview(first)[:10])
    assert p.take() is first
    p.give(b"not pooled")  # a no-op


# ---- the C calls ------------------------------------------------------------------------


def _piece(stream: bytes) -> bytes:
    """The raw deflate data of a pigz-style zlib stream's first piece."""
    return stream[2:stream.index(SYNC, 2) + 4]


def test_inflate_piece_exact_buffers() -> None:
    data = mixed(200_000, seed=2)
    piece = _piece(pigz_style(data, 100_000))
    assert zlib.decompressobj(-15).decompress(piece) == data[:100_000]
    need = lib.ox_inflate_work_size(0, len(piece))
    used = ffi.new("size_t *")
    with CBuf(len(piece), piece) as src, CBuf(need) as work, CBuf(100_000) as out:
        n = lib.ox_inflate_piece(ffi.NULL, 0, src.ptr, len(piece), 0, work.ptr, need,
                                 out.ptr, 100_000, used)
        assert n == 100_000 and out.buf[:] == data[:100_000] and used[0] == len(piece)
        # One byte less room: no room, and nothing written past it.
        n = lib.ox_inflate_piece(ffi.NULL, 0, src.ptr, len(piece), 0, work.ptr, need,
                                 out.ptr, 99_999, used)
        assert n == lib.OX_INFLATE_NO_ROOM
        # Work buffer one byte short, or a piece one byte short: refused / bad.
        assert lib.ox_inflate_piece(ffi.NULL, 0, src.ptr, len(piece), 0, work.ptr, need - 1,
                                    out.ptr, 100_000, used) == lib.OX_INFLATE_ERROR
        assert lib.ox_inflate_piece(ffi.NULL, 0, src.ptr, len(piece) - 1, 0, work.ptr, need,
                                    out.ptr, 100_000, used) == lib.OX_INFLATE_ERROR
        # Final: this piece holds no final block.
        assert lib.ox_inflate_piece(ffi.NULL, 0, src.ptr, len(piece), 1, work.ptr, need,
                                    out.ptr, 100_000, used) == lib.OX_INFLATE_ERROR


def test_inflate_piece_with_dictionary() -> None:
    data = b"abcdefgh" * 10_000
    stream = pigz_style(data, 40_000)
    first = _piece(stream)
    rest = stream[2 + len(first):-4]  # the second piece and the final block
    dict_ = data[40_000 - 32768:40_000]
    need = lib.ox_inflate_work_size(len(dict_), len(rest))
    used = ffi.new("size_t *")
    cap = len(dict_) + len(data) - 40_000
    with CBuf(len(rest), rest) as src, CBuf(need) as work, CBuf(cap) as out, \
            CBuf(len(dict_), dict_) as d:
        # Without the dictionary its back-references cannot resolve.
        assert lib.ox_inflate_piece(ffi.NULL, 0, src.ptr, len(rest), 1, work.ptr, need,
                                    out.ptr, cap, used) == lib.OX_INFLATE_ERROR
        n = lib.ox_inflate_piece(d.ptr, len(dict_), src.ptr, len(rest), 1, work.ptr, need,
                                 out.ptr, cap, used)
        assert n == len(data) - 40_000
        assert out.buf[:] == dict_ + data[40_000:]
        assert used[0] == len(rest)


def test_inflate_piece_bad_arguments() -> None:
    used = ffi.new("size_t *")
    work = ffi.new("uint8_t[]", 64)
    out = ffi.new("uint8_t[]", 64)
    big = 32769
    assert lib.ox_inflate_work_size(big, 10) == (1 << 64) - 1
    assert lib.ox_inflate_piece(ffi.NULL, 10, b"x", 1, 0, work, 64, out, 64, used) == -1
    assert lib.ox_inflate_piece(ffi.NULL, 0, ffi.NULL, 1, 0, work, 64, out, 64, used) == -1
    assert lib.ox_inflate_piece(ffi.NULL, 0, b"x", 1, 0, ffi.NULL, 64, out, 64, used) == -1
    assert lib.ox_inflate_piece(ffi.NULL, 0, b"x", 1, 0, work, 64, ffi.NULL, 64, used) == -1
    assert lib.ox_inflate_piece(ffi.NULL, 0, b"x", 1, 0, work, 64, out, 64, ffi.NULL) == -1
    assert lib.ox_inflate_piece(b"d" * 40, 40, b"x", 1, 0, work, 64, out, 39, used) == -1


@pytest.mark.parametrize(("buf", "start", "want"), [
    (SYNC, 0, 0), (b"x" + SYNC, 0, 1), (b"x" + SYNC, 1, 1), (b"x" + SYNC, 2, -1),
    (b"\x00\xff\xff" + SYNC, 0, 3), (b"\x00\x00\xff", 0, -1), (b"", 0, -1),
    (b"\xff" * 10, 0, -1), (b"\x00\x00\xff\x00\x00\xff\xff", 0, 3), (SYNC * 3, 5, 8),
])
def test_find_sync(buf: bytes, start: int, want: int) -> None:
    with CBuf(len(buf), buf) as b:
        assert lib.ox_find_sync(b.ptr, len(buf), start) == want
    assert lib.ox_find_sync(ffi.NULL, 10, 0) == -1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300).map(lambda b: b.replace(b"\x01", b"\x00").replace(b"\x02",
                                                                                  b"\xff")),
       st.integers(0, 310))
def test_find_sync_matches_bytes_find(buf: bytes, start: int) -> None:
    want = buf.find(SYNC, start) if start <= len(buf) else -1
    with CBuf(len(buf), buf) as b:
        assert lib.ox_find_sync(b.ptr, len(buf), start) == want


# ---- repeated pieces: inflated once or twice, then reused ------------------------------


@functools.cache
def _zero_runs() -> tuple[bytes, bytes, bytes]:
    """(raw data, its stream, the piece a chunk of zeros comes to): a small
    recovery image: a chunk of data, 12 chunks of zeros (4 MiB, oxboot's
    own: each ~4 KiB compressed, a piece of its own), data, 8 more zeros."""
    data = mixed(BLOCK, seed=31) + bytes(12 * BLOCK) + mixed(BLOCK, seed=32) + \
        bytes(8 * BLOCK) + mixed(MIB // 2, seed=33)
    zero_piece = encode(bytes(BLOCK))[2:-6]  # without header, final block, trailer
    assert zero_piece.endswith(SYNC)
    return data, encode(data), zero_piece


def test_repeated_pieces_are_reused(monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    data, stream, zero_piece = _zero_runs()
    assert stream.count(zero_piece) == 20
    log = InflateLog(monkeypatch)
    pool = BufferPool(count=6, size=BLOCK)
    held: list[tuple[int, memoryview]] = []  # the blocks not from the pool, kept to the end
    out = bytearray()
    for block in decode(Codec.ZLIB, io.BytesIO(stream), len(stream), len(data), pool=pool,
                        threads=threads):
        if isinstance(block, memoryview) and isinstance(block.obj, bytes):
            held.append((len(out), block))
        out += block
        pool.give(block)
    assert out == data
    # A reused output is immutable: still right after every later piece.
    assert held
    for at, block in held:
        assert block == data[at:at + len(block)]
    # 12 + 8 zero pieces: the first two of each run inflated, and those cut
    # before the second was taken (at most `threads` + 1 ahead); 3 others.
    calls = len(log.calls)
    assert calls <= 3 + 2 * (2 + threads + 1) + 1
    assert len(held) >= 20 - 2 * (2 + threads + 1)
    assert len(held) + calls == 23 + 1  # every piece inflated or reused; the final block


def test_a_repeated_piece_needing_its_dictionary_is_inflated_each_time(
        monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    # A few literals and a match reaching 32000 bytes back, before the
    # piece: repeated, the same bytes every time, but each copy's match
    # lands 82 bytes further on in the history, so no two outputs are alike.
    rng = random.Random(41)
    history = rng.randbytes(40_000)
    literals = rng.randbytes(50)
    zdict = history[-32768:]
    at = len(zdict) + len(literals) - 32_000
    c = zlib.compressobj(9, zlib.DEFLATED, -15, zdict=zdict)
    copy = c.compress(literals + zdict[at:at + 32]) + c.flush(zlib.Z_SYNC_FLUSH)
    with pytest.raises(zlib.error, match="too far back"):  # it needs its dictionary
        zlib.decompressobj(-15).decompress(copy)
    # The copies a piece (at least PIECE_MIN bytes) is cut from; six such.
    per_piece = -(-codec_inflate.PIECE_MIN // len(copy))
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    raw = c.compress(history) + c.flush(zlib.Z_SYNC_FLUSH) + copy * (6 * per_piece) + \
        b"\x03\x00"
    data = zlib.decompressobj(-15).decompress(raw)
    out_len = per_piece * (len(literals) + 32)
    outputs = {data[len(history) + i * out_len:][:out_len] for i in range(6)}
    assert len(outputs) == 6
    stream = b"\x78\x9c" + raw + zlib.adler32(data).to_bytes(4, "big")
    log = InflateLog(monkeypatch)
    assert decode_all(stream, len(data), BufferPool(count=4, size=MIB), threads)[0] == data
    # Each of them inflated here with its dictionary (and then the end).
    assert log.count("MainThread", with_dict=True, ok=True) >= 6


@pytest.mark.parametrize("repeat", [0, 1, 2, 11])
@pytest.mark.parametrize("where", [0, 2000, -100])
def test_a_corrupt_copy_of_a_repeated_piece_is_caught(threads: int, repeat: int,
                                                      where: int) -> None:
    data, stream, zero_piece = _zero_runs()
    at = -1
    for _ in range(repeat + 1):
        at = stream.index(zero_piece, at + 1)
    broken = bytearray(stream)
    broken[at + where % len(zero_piece)] ^= 0x10
    assert outcome(bytes(broken), len(data), None) == ("error", b"")
    assert outcome(bytes(broken), len(data), BufferPool(count=6, size=BLOCK),
                   threads) == ("error", b"")


def test_the_original_single_stream_of_zeros_is_streamed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The original mkimage's: one stream, no markers, longer than a piece.
    data = rand(9 * MIB, seed=34) + bytes(24 * MIB)
    stream = zlib.compress(data, 1)
    assert SYNC not in stream[2:]
    log = InflateLog(monkeypatch)
    assert decode_all(stream, len(data), BufferPool(count=4, size=2 * MIB), threads=2) == \
        (data, 0)
    assert log.calls == []

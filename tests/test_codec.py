"""Chunked libdeflate (csrc/deflate.c: ox_deflate_chunk, ox_adler32) and
the parallel zlib encoder built on it (oxboot.codec.ParallelZlib).

What matters: every chunk is a raw deflate piece that is not final and ends
byte-aligned with an empty stored block (00 00 ff ff), so that any sequence
of chunks, behind a zlib header and before an empty final block + Adler-32,
is ONE ordinary zlib stream that plain zlib inflates.

These tests also run against a core built with AddressSanitizer and UBSan
(scripts/sanitize.sh): buffers handed to C are libc-malloc'ed at their exact
size (:class:`CBuf`) so that a stray byte read or written hits a redzone.
"""

from __future__ import annotations

import random
import struct
import threading
import zlib

import pytest
import zlib_ng.zlib_ng as zlib_ng
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.cbuf import CBuf
from support.data import MIB, encode, mixed, rand, text

from oxboot._native import ffi, lib
from oxboot.codec import (
    BLOCK,
    DEFAULT_ZLIB_LEVEL,
    ISAL_FAST_LEVEL,
    ZLIB_LEVELS,
    ParallelZlib,
    make_encoder,
    zlib_header,
)
from oxboot.format import Codec, ImageError

SIZE_MAX = (1 << 64) - 1
SYNC = b"\x00\x00\xff\xff"
LEVELS = range(1, 13)
SIZES = [0, 1, 2, 3, 100, 65535, 65536, MIB + 1]

def deflate_chunk(data: bytes, level: int = 6, cap: int | None = None,
                  slack: int = 0) -> tuple[int, bytes, bytes]:
    """ox_deflate_chunk on an exact-size copy of `data` into `cap` bytes
    (default: the bound) followed by `slack` canary bytes.

    Returns (result, the result bytes or b"", the canary region)."""
    if cap is None:
        cap = lib.ox_deflate_bound(len(data))
    with CBuf(len(data), data) as src, CBuf(cap + slack, 0xA5) as out:
        n = lib.ox_deflate_chunk(level, src.ptr, len(data), out.ptr, cap)
        got = out.buf[:]
    return n, got[:n] if n >= 0 else b"", got[cap:]


def piece(data: bytes, level: int = 6) -> bytes:
    n, out, _ = deflate_chunk(data, level)
    assert n == len(out) > 0, (len(data), level, n)
    return out


def adler32(data: bytes, value: int = 1) -> int:
    with CBuf(len(data), data) as src:
        return lib.ox_adler32(value, src.ptr, len(data))


def zlib_stream(pieces: list[bytes], data: bytes, level: int = 6) -> bytes:
    """The stream ParallelZlib writes: header, pieces, empty final fixed
    block, Adler-32 of the whole input."""
    return (zlib_header(min(level, 9)) + b"".join(pieces) + b"\x03\x00"
            + struct.pack(">I", zlib.adler32(data)))


def inflate_one_stream(stream: bytes, mod=zlib) -> bytes:  # a module
    """Inflate `stream`, insisting it is exactly one complete zlib stream."""
    d = mod.decompressobj()
    out = d.decompress(stream) + d.flush()
    assert d.eof, "zlib stream does not end"
    assert d.unused_data == b"", f"{len(d.unused_data)} bytes after the zlib stream"
    return out


def check_pieces_stream(parts: list[bytes], data: bytes, level: int) -> bytes:
    """Each of `parts` deflated as a piece (each checked), joined into one
    zlib stream of `data`, which zlib and zlib-ng both inflate; returned."""
    pieces = [piece(p, level) for p in parts]
    for p, d in zip(pieces, parts, strict=True):
        check_piece(p, d)
    stream = zlib_stream(pieces, data, level)
    assert inflate_one_stream(stream) == data
    assert inflate_one_stream(stream, zlib_ng) == data
    return stream


def check_piece(p: bytes, data: bytes) -> None:
    """One piece alone: decodes to `data` without needing more input, is not
    final, and ends with the sync marker."""
    assert p.endswith(SYNC)
    d = zlib.decompressobj(-15)
    assert d.decompress(p) == data
    assert not d.eof  # BFINAL was cleared
    assert d.unconsumed_tail == b""


KINDS = {"zero": lambda n, seed=0: bytes(n), "text": text, "random": rand}


# ---- ox_deflate_chunk ------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", SIZES)
def test_single_chunk_is_a_valid_stream(kind: str, size: int) -> None:
    data = KINDS[kind](size)
    p = piece(data)
    check_piece(p, data)
    stream = zlib_stream([p], data)
    assert inflate_one_stream(stream) == data
    assert inflate_one_stream(stream, zlib_ng) == data
    assert zlib.decompress(stream) == data


def test_chunks_of_every_kind_and_size_concatenate() -> None:
    parts = [KINDS[kind](size, size) for size in SIZES for kind in KINDS]
    rng = random.Random(7)
    rng.shuffle(parts)
    data = b"".join(parts)
    stream = zlib_stream([piece(p) for p in parts], data)
    assert inflate_one_stream(stream) == data
    assert inflate_one_stream(stream, zlib_ng) == data


@pytest.mark.parametrize("level", LEVELS)
def test_every_level(level: int) -> None:
    data = mixed(300_000 + level)
    cuts = [0, 1, 3, 70_000, 70_000, 200_000, len(data)]
    parts = [data[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    stream = check_pieces_stream(parts, data, level)
    # and it does compress
    assert len(stream) < 0.75 * len(data)


def test_levels_trade_size() -> None:
    data = mixed(400_000, seed=11)
    sizes = {level: len(piece(data, level)) for level in LEVELS}
    assert sizes[12] < sizes[6] < sizes[1]


def test_deterministic_whatever_the_thread_cache_holds() -> None:
    """A thread keeps one compressor (the last level used): switching levels
    back and forth, and other threads, never change the bytes."""
    data = mixed(150_000, seed=5)
    want = {level: piece(data, level) for level in (1, 6, 12)}
    for level in (12, 1, 6, 6, 1, 12, 6):
        assert piece(data, level) == want[level]

    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(6):
                level = rng.choice((1, 6, 12))
                assert piece(data, level) == want[level]
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [0, 1, 100, 5000, 65536, 200_000])
def test_cap_too_small_fails_without_writing_past_cap(kind: str, size: int) -> None:
    data = KINDS[kind](size)
    n, out, canary = deflate_chunk(data, slack=64)
    assert n == len(out) and n <= lib.ox_deflate_bound(size)
    assert canary == b"\xa5" * 64
    caps = {0, 1, 2, 3, 4, 5, 8, 9, n // 2, n - 6, n - 5, n - 4, n - 3, n - 2, n - 1}
    for cap in sorted(c for c in caps if 0 <= c < n):
        got, _, canary = deflate_chunk(data, cap=cap, slack=64)
        assert got == -1, (cap, n)
        assert canary == b"\xa5" * 64, cap
        # exact-size buffer: ASan reports any write past cap
        assert deflate_chunk(data, cap=cap)[0] == -1
    # Room to spare is fine, and the bytes do not depend on it.
    assert deflate_chunk(data, cap=n + 64)[1] == out


def test_bad_arguments() -> None:
    data = b"hello hello hello"
    cap = lib.ox_deflate_bound(len(data))
    with CBuf(len(data), data) as src, CBuf(cap) as out:
        for level in (-1, 0, 13, 100):
            assert lib.ox_deflate_chunk(level, src.ptr, len(data), out.ptr, cap) == -1
        assert lib.ox_deflate_chunk(6, src.ptr, len(data), ffi.NULL, cap) == -1
        assert lib.ox_deflate_chunk(6, ffi.NULL, len(data), out.ptr, cap) == -1
        # NULL input is fine for zero bytes
        n = lib.ox_deflate_chunk(6, ffi.NULL, 0, out.ptr, cap)
        assert n > 0
        check_piece(ffi.buffer(out.ptr, n)[:], b"")


def test_bound() -> None:
    prev = 0
    for size in [0, 1, 2, 3, 100, 65535, 65536, MIB, MIB + 1, 1 << 32]:
        b = lib.ox_deflate_bound(size)
        assert b >= size + 5 and b >= prev
        prev = b
    assert lib.ox_deflate_bound(SIZE_MAX) == SIZE_MAX
    assert lib.ox_deflate_bound(SIZE_MAX // 2) == SIZE_MAX


def test_incompressible_chunk_stays_within_bound() -> None:
    data = rand(MIB + 1, seed=9)
    for level in (1, 6, 12):
        p = piece(data, level)
        assert len(data) < len(p) <= lib.ox_deflate_bound(len(data))
        check_piece(p, data)


# ---- ox_adler32 ------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES + [5552, 5553, 3 * MIB])
def test_adler32(size: int) -> None:
    data = rand(size, seed=size)
    assert adler32(data) == zlib.adler32(data)
    half = size // 3
    assert adler32(data[half:], adler32(data[:half])) == zlib.adler32(data)


def test_adler32_empty_keeps_value() -> None:
    assert lib.ox_adler32(0x12345678, ffi.NULL, 0) == 0x12345678
    assert lib.ox_adler32(0x12345678, ffi.NULL, 5) == 0x12345678
    assert adler32(b"", 0xDEADBEEF) == 0xDEADBEEF


# ---- property: arbitrary bytes, arbitrary cuts --------------------------------

_data = st.one_of(
    st.binary(max_size=6000),
    st.lists(st.tuples(st.binary(min_size=1, max_size=20), st.integers(1, 400)),
             max_size=40).map(lambda runs: b"".join(b * n for b, n in runs)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_data, cuts=st.lists(st.integers(0, 1 << 20), max_size=12),
       level=st.integers(1, 12))
@example(data=b"", cuts=[], level=1)
@example(data=b"\x00" * 70000, cuts=[0, 0, 65535, 65536], level=6)
def test_property_any_bytes_any_cuts(data: bytes, cuts: list[int], level: int) -> None:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    parts = [data[a:b] for a, b in zip(points, points[1:], strict=False)] or [b""]
    check_pieces_stream(parts, data, level)


# ---- ParallelZlib -----------------------------------------------------------


@pytest.fixture(scope="module")
def image() -> bytes:
    return mixed(5 * MIB + 12345, seed=21)


def test_parallel_zlib_deterministic_across_threads(image: bytes) -> None:
    one = encode(image, threads=1)
    assert encode(image, threads=2) == one
    assert encode(image, threads=3, feed=300_001) == one  # feed cuts do not matter
    assert inflate_one_stream(one) == image
    assert inflate_one_stream(one, zlib_ng) == image
    assert one[:2] == zlib.compress(b"x", DEFAULT_ZLIB_LEVEL)[:2]
    assert one[-4:] == struct.pack(">I", zlib.adler32(image))


@pytest.mark.parametrize("level", ZLIB_LEVELS)
def test_parallel_zlib_levels(level: int) -> None:
    data = mixed(MIB + MIB // 2, seed=level)
    stream = encode(data, level, threads=2, feed=400_000, block=256 * 1024)
    assert inflate_one_stream(stream) == data
    assert stream[:2] == zlib.compress(b"x", level)[:2]


@pytest.mark.parametrize("block", [1, 100, 65536, MIB, 3 * MIB + 17])
def test_parallel_zlib_block_sizes(block: int) -> None:
    data = mixed(20_000 if block < 1000 else 4 * MIB + 3, seed=4)
    stream = encode(data, threads=2, feed=70_001, block=block)
    assert inflate_one_stream(stream) == data


def test_fast_level_isal_is_one_deterministic_stream(image: bytes) -> None:
    # --level 1 compresses with ISA-L: still one ordinary zlib stream, cut
    # after sync flushes (the inflate side cuts it there again), the same
    # bytes whatever the threads and the feeds.
    one = encode(image, ISAL_FAST_LEVEL, threads=1)
    assert encode(image, ISAL_FAST_LEVEL, threads=2, feed=300_001) == one
    assert inflate_one_stream(one) == image
    assert one.count(SYNC) >= len(image) // BLOCK
    assert len(one) < len(encode(image, 9, threads=2)) * 1.25  # "fast", not "stored"
    for data in (b"", b"a", b"\x00" * 3):
        assert zlib.decompress(encode(data, ISAL_FAST_LEVEL, threads=2)) == data


def test_parallel_zlib_empty_and_tiny() -> None:
    for data in (b"", b"a", b"\x00" * 3):
        stream = encode(data, threads=2)
        assert inflate_one_stream(stream) == data
        assert zlib.decompress(stream) == data


def test_parallel_zlib_keeps_no_reference_to_fed_buffers() -> None:
    data = mixed(MIB + 5, seed=8)
    buf = bytearray(MIB)
    out: list[bytes] = []
    enc = ParallelZlib(out.append, 6, threads=2)
    try:
        for i in range(0, len(data), 4096 * 3):
            piece_ = data[i:i + 4096 * 3]
            buf[:len(piece_)] = piece_
            enc.feed(memoryview(buf)[:len(piece_)])
            buf[:len(piece_)] = b"\xee" * len(piece_)  # the caller reuses its buffer
        enc.finish()
    finally:
        enc.close()
    assert inflate_one_stream(b"".join(out)) == data


def zlib_run(data: bytes, *, threads: int, feed: int, block: int = BLOCK,
             level: int = DEFAULT_ZLIB_LEVEL) -> tuple[bytes, int]:
    """ParallelZlib's stream of `data` fed in `feed`-byte cuts, and how
    many zero chunks it reused."""
    out: list[bytes] = []
    enc = ParallelZlib(out.append, level, threads=threads, block=block)
    try:
        for i in range(0, len(data), feed):
            enc.feed(data[i:i + feed])
        enc.finish()
    finally:
        enc.close()
    return b"".join(out), enc.reused_zero_chunks


def test_zero_chunks_are_reused_and_the_stream_is_unchanged() -> None:
    # A trimmed pool: data, then zero chunks (one with a single byte set at
    # its very end, which must not be taken for zeros), then a short zero
    # tail. Reused or not, every chunk is the piece deflate makes of it.
    block = 256 * 1024
    near_zero = bytearray(block)
    near_zero[-1] = 1
    data = mixed(block, seed=3) + bytes(3 * block) + bytes(near_zero) + bytes(block) + bytes(999)
    parts = [data[i:i + block] for i in range(0, len(data), block)]
    expected = check_pieces_stream(parts, data, DEFAULT_ZLIB_LEVEL)
    for threads, feed in ((1, block), (2, 65_537), (2, 3 * block + 5)):
        stream, reused = zlib_run(data, threads=threads, feed=feed, block=block)
        assert stream == expected, (threads, feed)
        # 4 whole zero chunks and the zero tail (a chunk of its own size),
        # never the near-zero chunk.
        assert reused == 5, (threads, feed)
    for level in (ISAL_FAST_LEVEL, 9):
        stream, reused = zlib_run(data, threads=2, feed=block, block=block, level=level)
        assert reused == 5 and inflate_one_stream(stream) == data, level


def test_reused_zero_chunks_keep_their_order_behind_a_slow_chunk(monkeypatch) -> None:
    # More zero chunks than the queue may hold wait behind chunks still being
    # compressed: they stay in order, and the queue stays within its bound.
    import oxboot.codec.deflate as deflate

    monkeypatch.setattr(deflate, "MAX_QUEUED", 3)
    block = 64 * 1024
    data = rand(block, seed=5) + bytes(10 * block) + rand(block, seed=6) + bytes(5 * block)
    stream, reused = zlib_run(data, threads=2, feed=block, block=block)
    assert reused == 15
    assert inflate_one_stream(stream) == data


def test_parallel_zlib_bad_level() -> None:
    for level in (0, 10, -1):
        with pytest.raises(ImageError):
            ParallelZlib(lambda b: None, level)


def test_make_encoder_zlib_default_level() -> None:
    out: list[bytes] = []
    enc = make_encoder(Codec.ZLIB, out.append, threads=2)
    data = text(100_000)
    try:
        enc.feed(data)
        enc.finish()
    finally:
        enc.close()
    stream = b"".join(out)
    assert stream[:2] == zlib_header(DEFAULT_ZLIB_LEVEL)
    assert inflate_one_stream(stream) == data

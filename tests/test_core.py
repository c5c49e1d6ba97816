"""The C core (oxboot._core) through cffi: SHA-256, DATA frame build/parse
and the transmit path.

These tests also run against a core built with AddressSanitizer and UBSan
(scripts/sanitize.sh). Buffers handed to the C functions are therefore
allocated with libc malloc at their exact size (see :class:`CBuf`), so
that a read or write even one byte past the end hits an ASan redzone
instead of landing silently inside a Python heap block.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import mmap
import random
import socket
import struct
import threading
import weakref

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.cbuf import CBuf
from support.frames import (
    DATA_HLEN,
    DST,
    ETH_HLEN,
    ETHERTYPE,
    HDR_LEN,
    MAGIC,
    MAX_DATA,
    MIN_PAYLOAD,
    SRC,
    T_DATA,
    Receiver,
    expected_frame,
    image_bytes,
    tx_offsets,
)

from oxboot._native import Sha256, ffi, lib, sha256
from oxboot.protocol.repair import (
    REPAIR_FIRST_WAIT_NS,
    REPAIR_MARGIN_NS,
    REPAIR_MAX_WAIT_NS,
    REPAIR_MIN_WAIT_NS,
    RoundTrip,
)

U64 = (1 << 64) - 1


def build(image: bytes | None, offset: int, chunk: int = 1024, cap: int | None = None,
          image_size: int | None = None, slack: int = 64) -> tuple[int, bytes, bytes]:
    """Call ox_build_data with a buffer of `cap` + `slack` canary bytes.

    Returns (result, the first cap bytes, the canary region after cap).
    """
    size = len(image) if image is not None else 0
    if image_size is None:
        image_size = size
    if cap is None:
        cap = DATA_HLEN + MAX_DATA
    with CBuf(size) as img, CBuf(cap + slack, 0xA5) as out, CBuf(6, DST) as d, \
            CBuf(6, SRC) as s:
        if image is not None:
            img.buf[:] = image
        ptr = img.ptr if image is not None else ffi.NULL
        n = lib.ox_build_data(out.ptr, cap, d.ptr, s.ptr, ptr, image_size, offset, chunk)
        data = out.bytes()
    return n, data[:cap], data[cap:]


# ---- SHA-256 -------------------------------------------------------------

SIZES = [0, 1, 55, 56, 63, 64, 65, 1 << 20]


@pytest.mark.parametrize("size", SIZES)
def test_sha256_one_shot_matches_hashlib(size: int) -> None:
    data = image_bytes(size)
    assert sha256(data) == hashlib.sha256(data).digest()
    assert sha256(bytearray(data)) == hashlib.sha256(data).digest()
    assert Sha256(data).digest() == hashlib.sha256(data).digest()
    assert Sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", SIZES)
def test_sha256_of_memoryview_slices(size: int) -> None:
    data = b"!" + image_bytes(size) + b"?"
    view = memoryview(data)[1:-1]
    want = hashlib.sha256(data[1:-1]).digest()
    assert sha256(view) == want
    h = Sha256()
    h.update(view)
    assert h.digest() == want


def test_sha256_of_non_byte_memoryview() -> None:
    # A view whose items are 8 bytes: the whole buffer is hashed, not len(view) bytes.
    data = image_bytes(8 * 1000)
    view = memoryview(data).cast("Q")
    assert len(view) == 1000
    assert sha256(view) == hashlib.sha256(data).digest()
    h = Sha256()
    h.update(view)
    assert h.digest() == hashlib.sha256(data).digest()


@pytest.mark.parametrize("size", [1, 55, 56, 64, 4096 + 3, (1 << 20) + 1])
def test_sha256_of_mmap(tmp_path, size: int) -> None:
    data = image_bytes(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert sha256(m) == hashlib.sha256(data).digest()
        h = Sha256()
        h.update(m)
        assert h.digest() == hashlib.sha256(data).digest()
        # A window into the mapping, through memoryview.
        with memoryview(m) as view:
            assert sha256(view[size // 3:]) == hashlib.sha256(data[size // 3:]).digest()


@pytest.mark.parametrize("splits", [
    [1] * 130,
    [3, 61, 1, 63, 64, 65, 7],
    [55, 1, 8, 56, 0, 64],
    [127, 129, 4093, 1, 1],
    [(1 << 20) - 1, 2, 31],
])
def test_sha256_incremental_odd_splits(splits: list[int]) -> None:
    data = image_bytes(sum(splits))
    h = Sha256()
    pos = 0
    for n in splits:
        h.update(data[pos:pos + n])
        pos += n
    assert h.digest() == hashlib.sha256(data).digest()


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=8))
def test_sha256_incremental_any_split(data: bytes, cuts: list[int]) -> None:
    h = Sha256()
    points = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    for a, b in zip(points, points[1:], strict=False):
        h.update(memoryview(data)[a:b])
    assert h.digest() == hashlib.sha256(data).digest() == sha256(data)


def test_sha256_digest_is_repeatable() -> None:
    h = Sha256(b"abc")
    first = h.digest()
    assert first == hashlib.sha256(b"abc").digest()
    assert h.hexdigest() == hashlib.sha256(b"abc").hexdigest()


def test_sha256_raw_c_api() -> None:
    data = image_bytes(1000)
    with CBuf(len(data), data) as buf, CBuf(32) as out:
        assert lib.ox_sha256(buf.ptr, len(data), out.ptr) == 0
        assert out.bytes() == hashlib.sha256(data).digest()
        assert lib.ox_sha256(ffi.NULL, 0, out.ptr) == 0
        assert out.bytes() == hashlib.sha256(b"").digest()
        # NULL with a length, or nowhere to write: refused, no crash.
        assert lib.ox_sha256(ffi.NULL, 5, out.ptr) == -1
        assert lib.ox_sha256(buf.ptr, len(data), ffi.NULL) == -1
        ctx = lib.ox_sha256_new()
        assert ctx != ffi.NULL
        try:
            assert lib.ox_sha256_update(ctx, ffi.NULL, 1) == -1
            assert lib.ox_sha256_update(ctx, ffi.NULL, 0) == 0
            assert lib.ox_sha256_update(ctx, buf.ptr, len(data)) == 0
            assert lib.ox_sha256_final(ctx, ffi.NULL) == -1
            assert lib.ox_sha256_final(ctx, out.ptr) == 0
            assert out.bytes() == hashlib.sha256(data).digest()
        finally:
            lib.ox_sha256_free(ctx)
        assert lib.ox_sha256_update(ffi.NULL, buf.ptr, 1) == -1
        assert lib.ox_sha256_final(ffi.NULL, out.ptr) == -1
        lib.ox_sha256_free(ffi.NULL)  # a no-op


# ---- ox_build_data ---------------------------------------------------------

IMAGE_SIZES = [0, 1, 25, 26, 1023, 1024, 1025, 3000]


def _offsets(size: int) -> list[int]:
    cand = {0, 1000, 1024, size - 26, size - 25, size - 1, size, size + 1, size + 5000,
            U64 - 1, U64}
    return sorted(o for o in cand if 0 <= o <= U64)


@pytest.mark.parametrize("size", IMAGE_SIZES)
@pytest.mark.parametrize("chunk", [1024, 1, 25, 26, MAX_DATA])
def test_build_data_layout(size: int, chunk: int) -> None:
    image = image_bytes(size)
    for offset in _offsets(size):
        want = expected_frame(image, offset, chunk)
        n, frame, canary = build(image, offset, chunk)
        assert n == len(want), (size, offset, chunk)
        assert frame[:n] == want, (size, offset, chunk)
        assert canary == b"\xa5" * len(canary)
        # The header, field by field (network byte order).
        assert frame[0:6] == DST and frame[6:12] == SRC
        assert frame[12:14] == b"\x1d\xe0"
        assert frame[14:18] == b"\x1d\xe1\x23\x45"
        assert frame[18:22] == b"\x00\x00\x91\x04"
        assert struct.unpack(">I", frame[22:26])[0] == n - 26
        assert struct.unpack(">Q", frame[26:34])[0] == offset
        take = min(chunk, max(0, size - offset))
        payload = frame[DATA_HLEN:n]
        if take == 0:
            assert n == DATA_HLEN  # zero-length DATA: end of image
        elif take < MIN_PAYLOAD:
            assert len(payload) == MIN_PAYLOAD
            assert payload[:take] == image[offset:offset + take]
            assert payload[take:] == bytes(MIN_PAYLOAD - take)
        else:
            assert payload == image[offset:offset + take]
        # Nothing at all is written past the frame.
        assert frame[n:] == b"\xa5" * (len(frame) - n)


@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_build_data_final_chunks_of_1_to_25_bytes_are_padded(size: int) -> None:
    image = image_bytes(size)
    for left in range(1, 26):
        offset = size - left
        if offset < 0:
            continue
        n, frame, _ = build(image, offset)
        assert n == DATA_HLEN + MIN_PAYLOAD
        assert frame[DATA_HLEN:n] == image[offset:] + bytes(MIN_PAYLOAD - left)
        assert struct.unpack(">I", frame[22:26])[0] == 8 + MIN_PAYLOAD


@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_build_data_cap_exact_and_one_short(size: int) -> None:
    image = image_bytes(size)
    for offset in _offsets(size):
        need = len(expected_frame(image, offset))
        # Exactly enough room: works, and the canary right after cap survives.
        n, frame, canary = build(image, offset, cap=need)
        assert n == need
        assert frame == expected_frame(image, offset)
        assert canary == b"\xa5" * len(canary)
        # One byte short (and much shorter): refused, nothing written at all.
        for cap in {need - 1, DATA_HLEN - 1, 1, 0}:
            n, frame, canary = build(image, offset, cap=cap)
            assert n == -1, (size, offset, cap)
            assert frame + canary == b"\xa5" * (cap + len(canary))


def test_build_data_exact_size_buffers() -> None:
    """Exact-size malloc'd buffers: ASan catches any byte past cap or past
    the end of the image."""
    for size in IMAGE_SIZES:
        image = image_bytes(size)
        for offset in _offsets(size):
            want = expected_frame(image, offset)
            with CBuf(size, image) as img, CBuf(len(want), 0xA5) as out, \
                    CBuf(6, DST) as d, CBuf(6, SRC) as s:
                n = lib.ox_build_data(out.ptr, len(want), d.ptr, s.ptr, img.ptr, size,
                                      offset, 1024)
                assert n == len(want)
                assert out.bytes() == want


@pytest.mark.parametrize("chunk", [0, MAX_DATA + 1, 1 << 31, 0xFFFFFFFF])
def test_build_data_bad_chunk(chunk: int) -> None:
    n, frame, canary = build(image_bytes(3000), 0, chunk=chunk)
    assert n == -1
    assert frame + canary == b"\xa5" * (len(frame) + len(canary))


def test_build_data_null_arguments() -> None:
    image = image_bytes(100)
    with CBuf(100, image) as img, CBuf(2048) as out, CBuf(6, DST) as d, CBuf(6, SRC) as s:
        assert lib.ox_build_data(ffi.NULL, 2048, d.ptr, s.ptr, img.ptr, 100, 0, 1024) == -1
        assert lib.ox_build_data(out.ptr, 2048, ffi.NULL, s.ptr, img.ptr, 100, 0, 1024) == -1
        assert lib.ox_build_data(out.ptr, 2048, d.ptr, ffi.NULL, img.ptr, 100, 0, 1024) == -1
        # No image bytes but a non-zero size: refused rather than dereferenced.
        assert lib.ox_build_data(out.ptr, 2048, d.ptr, s.ptr, ffi.NULL, 100, 0, 1024) == -1
        # An empty image needs no bytes: every offset is the end.
        for offset in (0, 1, U64):
            n = lib.ox_build_data(out.ptr, 2048, d.ptr, s.ptr, ffi.NULL, 0, offset, 1024)
            assert n == DATA_HLEN
            assert out.bytes()[:n] == expected_frame(b"", offset)


@settings(max_examples=300, deadline=None)
@given(size=st.integers(0, 4000), offset=st.one_of(st.integers(0, 4100), st.integers(0, U64)),
       chunk=st.integers(1, MAX_DATA), extra=st.integers(-40, 40))
def test_build_data_property(size: int, offset: int, chunk: int, extra: int) -> None:
    image = image_bytes(size)
    want = expected_frame(image, offset, chunk)
    cap = max(0, len(want) + extra)
    n, frame, canary = build(image, offset, chunk, cap=cap, slack=16)
    assert canary == b"\xa5" * 16
    if cap >= len(want):
        assert n == len(want) and frame[:n] == want
    else:
        assert n == -1


# ---- ox_parse_data ---------------------------------------------------------


def parse(frame: bytes) -> tuple[int, int, int]:
    """Call ox_parse_data on an exact-size copy of `frame`: (n, offset, exact)."""
    off = ffi.new("uint64_t *", 0xDEAD)
    exact = ffi.new("int *", 7)
    with CBuf(len(frame), frame) as buf:
        n = lib.ox_parse_data(buf.ptr, len(frame), off, exact)
    return n, off[0], exact[0]


def _frame(payload_len: int = 100, offset: int = 4096, len_field: int | None = None,
           ethertype: int = ETHERTYPE, magic: int = MAGIC, typ: int = T_DATA,
           extra: bytes = b"") -> bytes:
    payload = image_bytes(payload_len)
    if len_field is None:
        len_field = 8 + payload_len
    return (DST + SRC + struct.pack(">H", ethertype)
            + struct.pack(">III", magic, typ, len_field) + struct.pack(">Q", offset)
            + payload + extra)


@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_parse_accepts_built_frames(size: int) -> None:
    image = image_bytes(size)
    for offset in _offsets(size):
        n, frame, _ = build(image, offset)
        frame = frame[:n]
        got, off, exact = parse(frame)
        assert got == n - DATA_HLEN
        assert off == offset
        assert exact == 1


@pytest.mark.parametrize("pad", [1, 2, 10, 26, 60, 500])
def test_parse_accepts_padded_frames_as_not_exact(pad: int) -> None:
    for payload_len in (0, 1, 26, 1024, MAX_DATA):
        frame = _frame(payload_len, extra=bytes(pad))
        n, off, exact = parse(frame)
        assert n == payload_len
        assert off == 4096
        assert exact == 0


def test_parse_zero_length_data() -> None:
    assert parse(_frame(0, offset=U64)) == (0, U64, 1)


def test_parse_rejects_every_short_length() -> None:
    good = _frame(0)  # 34 bytes: the shortest valid DATA frame
    assert len(good) == DATA_HLEN
    assert parse(good)[0] == 0
    for length in range(DATA_HLEN):
        n, off, exact = parse(good[:length])
        assert n == -1, length
        assert off == 0xDEAD and exact == 7  # outputs untouched on rejection


@pytest.mark.parametrize(("what", "frame"), [
    ("ethertype", _frame(ethertype=0x0800)),
    ("ethertype byte order", _frame(ethertype=0xE01D)),
    ("magic", _frame(magic=0x1DE12346)),
    ("magic byte order", _frame(magic=0x4523E11D)),
    ("type OFFER", _frame(typ=0x9102)),
    ("type READ", _frame(typ=0x9003)),
    ("type byte order", _frame(typ=0x04910000)),
])
def test_parse_rejects_foreign_frames(what: str, frame: bytes) -> None:
    assert parse(frame)[0] == -1, what


@pytest.mark.parametrize("len_field", [0, 1, 7, 8 + MAX_DATA + 1, 0x10000, 0x7FFFFFFF,
                                       0x80000000, 0xFFFFFFF8, 0xFFFFFFFF])
def test_parse_rejects_bad_len_field(len_field: int) -> None:
    # Plenty of bytes present, so only the len field itself is wrong.
    frame = _frame(MAX_DATA, len_field=len_field, extra=bytes(600))
    assert parse(frame)[0] == -1


@pytest.mark.parametrize("payload_len", [0, 1, 25, 100, MAX_DATA - 1])
def test_parse_rejects_len_larger_than_the_bytes_present(payload_len: int) -> None:
    frame = _frame(payload_len, len_field=8 + payload_len + 1)
    assert parse(frame)[0] == -1
    assert parse(_frame(payload_len, len_field=8 + payload_len))[0] == payload_len


def test_parse_max_payload_boundary() -> None:
    assert parse(_frame(MAX_DATA)) == (MAX_DATA, 4096, 1)
    assert parse(_frame(MAX_DATA + 1))[0] == -1


def test_parse_null_arguments() -> None:
    frame = _frame(10)
    off = ffi.new("uint64_t *")
    exact = ffi.new("int *")
    with CBuf(len(frame), frame) as buf:
        assert lib.ox_parse_data(ffi.NULL, len(frame), off, exact) == -1
        assert lib.ox_parse_data(buf.ptr, len(frame), ffi.NULL, exact) == -1
        assert lib.ox_parse_data(buf.ptr, len(frame), off, ffi.NULL) == -1


def _check_parse_contract(frame: bytes) -> None:
    n, off, exact = parse(frame)
    if n == -1:
        return
    assert 0 <= n <= MAX_DATA
    assert ETH_HLEN + HDR_LEN + 8 + n <= len(frame)
    assert exact == (ETH_HLEN + HDR_LEN + 8 + n == len(frame))
    assert off == struct.unpack(">Q", frame[26:34])[0]
    assert struct.unpack(">I", frame[22:26])[0] == 8 + n


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=1600))
def test_parse_arbitrary_bytes(frame: bytes) -> None:
    _check_parse_contract(frame)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(len_field=st.one_of(st.integers(0, 8 + MAX_DATA + 2), st.integers(0, 0xFFFFFFFF)),
       body=st.integers(0, 1600), offset=st.integers(0, U64))
@example(len_field=0xFFFFFFFF, body=0, offset=0)
@example(len_field=0xFFFFFFFF, body=1600, offset=U64)
@example(len_field=8, body=0, offset=0)
def test_parse_hostile_len_fields(len_field: int, body: int, offset: int) -> None:
    frame = (DST + SRC + struct.pack(">HIII", ETHERTYPE, MAGIC, T_DATA, len_field)
             + struct.pack(">Q", offset) + image_bytes(body))
    _check_parse_contract(frame)
    n = parse(frame)[0]
    ok = 8 <= len_field <= 8 + MAX_DATA and len_field <= 8 + body
    assert (n >= 0) == ok
    if ok:
        assert n == len_field - 8


# ---- ox_tx_data --------------------------------------------------------------


def tx(image: bytes, offsets: list[int], method: int, chunk: int = 1024,
       blocking: bool = True) -> tuple[int, object, list[bytes]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        a.setblocking(blocking)
        b.settimeout(20)
        rx = Receiver(b, len(offsets))
        rx.start()
        stats = ffi.new("ox_tx_stats *")
        offs = ffi.new("uint64_t[]", offsets or [0])
        with CBuf(len(image), image) as img, CBuf(6, DST) as d, CBuf(6, SRC) as s:
            n = lib.ox_tx_data(a.fileno(), method, d.ptr, s.ptr, img.ptr, len(image), offs,
                               len(offsets), chunk, stats)
        rx.join(20)
        assert not rx.is_alive(), f"received only {len(rx.frames)} of {len(offsets)}"
        assert rx.error is None, rx.error
        return n, stats, rx.frames
    finally:
        a.close()
        b.close()


@pytest.mark.net
@pytest.mark.parametrize("method", ["OX_TX_SENDMMSG", "OX_TX_SEND"])
@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "nonblocking"])
def test_tx_data_frames_equal_built_frames(method: str, blocking: bool) -> None:
    size = 200 * 1024 + 300
    image = image_bytes(size)
    offsets = tx_offsets(size, 300)
    assert len(offsets) == 300 > 256  # more than one batch
    n, stats, frames = tx(image, offsets, getattr(lib, method), blocking=blocking)
    assert n == 300
    want = [expected_frame(image, o) for o in offsets]
    assert len(frames) == 300
    for i, (got, exp) in enumerate(zip(frames, want, strict=True)):
        assert got == exp, f"frame {i} (offset {offsets[i]})"
    for o in offsets:  # the reference frames are ox_build_data's own
        assert build(image, o)[1][:len(expected_frame(image, o))] == expected_frame(image, o)
    assert stats.frames == 300
    assert stats.bytes == sum(len(f) for f in want)
    assert stats.last_errno == 0
    if method == "OX_TX_SEND":
        assert stats.syscalls >= 300
    else:
        assert 2 <= stats.syscalls


@pytest.mark.net
@pytest.mark.parametrize("chunk", [1, 26, MAX_DATA])
def test_tx_data_chunk_sizes(chunk: int) -> None:
    image = image_bytes(5000)
    offsets = list(range(0, 5000, chunk))[:280] + [4990, 5000, 5001]
    n, stats, frames = tx(image, offsets, lib.OX_TX_SENDMMSG, chunk=chunk)
    assert n == len(offsets)
    assert frames == [expected_frame(image, o, chunk) for o in offsets]
    assert stats.frames == len(offsets)


@pytest.mark.net
def test_tx_data_nothing_to_send() -> None:
    stats = ffi.new("ox_tx_stats *")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        with CBuf(6, DST) as d, CBuf(6, SRC) as s:
            assert lib.ox_tx_data(a.fileno(), lib.OX_TX_SENDMMSG, d.ptr, s.ptr, ffi.NULL, 0,
                                  ffi.NULL, 0, 1024, stats) == 0
    finally:
        a.close()
        b.close()
    assert stats.frames == 0 and stats.syscalls == 0


@pytest.mark.net
@pytest.mark.parametrize("method", ["OX_TX_SENDMMSG", "OX_TX_SEND"])
def test_tx_data_bad_fd_sets_errno(method: str) -> None:
    image = image_bytes(3000)
    stats = ffi.new("ox_tx_stats *")
    offs = ffi.new("uint64_t[]", [0, 1024, 2048])
    with CBuf(3000, image) as img, CBuf(6, DST) as d, CBuf(6, SRC) as s:
        n = lib.ox_tx_data(-1, getattr(lib, method), d.ptr, s.ptr, img.ptr, 3000, offs, 3,
                           1024, stats)
    assert n == -1
    assert stats.last_errno == errno.EBADF
    assert stats.frames == 0


@pytest.mark.net
def test_tx_data_bad_arguments() -> None:
    image = image_bytes(3000)
    stats = ffi.new("ox_tx_stats *")
    offs = ffi.new("uint64_t[]", [0])
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        fd = a.fileno()
        with CBuf(3000, image) as img, CBuf(6, DST) as d, CBuf(6, SRC) as s:
            m = lib.OX_TX_SENDMMSG
            for chunk in (0, MAX_DATA + 1):
                assert lib.ox_tx_data(fd, m, d.ptr, s.ptr, img.ptr, 3000, offs, 1, chunk,
                                      stats) == -1
            assert lib.ox_tx_data(fd, m, d.ptr, s.ptr, img.ptr, 3000, offs, 1, 1024,
                                  ffi.NULL) == -1
            assert lib.ox_tx_data(fd, m, d.ptr, s.ptr, img.ptr, 3000, ffi.NULL, 1, 1024,
                                  stats) == -1
            assert lib.ox_tx_data(fd, m, d.ptr, s.ptr, ffi.NULL, 3000, offs, 1, 1024,
                                  stats) == -1
            assert lib.ox_tx_data(fd, m, ffi.NULL, s.ptr, img.ptr, 3000, offs, 1, 1024,
                                  stats) == -1
            assert lib.ox_tx_data(fd, m, d.ptr, ffi.NULL, img.ptr, 3000, offs, 1, 1024,
                                  stats) == -1
        assert stats.frames == 0 and stats.syscalls == 0
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(4096)  # nothing was sent
    finally:
        a.close()
        b.close()


# ---- receive policing: flagging floods, the kernel blocklist ------------------------------


def _proto_frame(src: bytes, payload: bytes = b"") -> bytes:
    """A frame of our protocol (ethertype and magic right) from `src`."""
    return DST + src + struct.pack("!HIII", ETHERTYPE, MAGIC, 0x9103, len(payload)) + payload


def _unix_pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.setblocking(False)
    return a, b


def _drain(sock: socket.socket) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(sock.recv(4096))
        except BlockingIOError:
            return got


def _macs(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [bytes([0x02 | (rng.randrange(64) << 2)]) + rng.randbytes(5) for _ in range(n)]


@pytest.mark.net
@pytest.mark.parametrize("n", [1, 2, 7, lib.OX_MAX_BLOCKED])
def test_blocklist_drops_exactly_the_listed_sources(n: int) -> None:
    blocked = _macs(n, n)
    # Near misses: the same last four bytes or the same first two as a blocked MAC.
    others = [b"\x02\x00" + blocked[0][2:], blocked[-1][:2] + b"\x00\x00\x00\x01",
              *(_macs(5, 1000 + n))]
    others = [m for m in others if m not in blocked]
    a, b = _unix_pair()
    try:
        assert lib.ox_set_blocklist(b.fileno(), b"".join(blocked), n) == 0
        sent = [_proto_frame(m, bytes([i])) for i, m in enumerate(blocked + others)]
        for f in sent:
            a.send(f)
        assert _drain(b) == sent[n:]  # every other source passes, in order, whole
        # Lifting the filter lets everyone in again.
        assert lib.ox_set_blocklist(b.fileno(), ffi.NULL, 0) == 0
        for f in sent:
            a.send(f)
        assert _drain(b) == sent
        # And lifting it twice is no error.
        assert lib.ox_set_blocklist(b.fileno(), ffi.NULL, 0) == 0
    finally:
        a.close()
        b.close()


@pytest.mark.net
def test_blocklist_bad_arguments() -> None:
    a, b = _unix_pair()
    try:
        too_many = b"".join(_macs(lib.OX_MAX_BLOCKED + 1, 7))
        assert lib.ox_set_blocklist(b.fileno(), too_many, lib.OX_MAX_BLOCKED + 1) == -1
        assert lib.ox_set_blocklist(b.fileno(), ffi.NULL, 1) == -1
        assert lib.ox_set_blocklist(-1, ffi.NULL, 0) == -1
        a.send(_proto_frame(SRC))
        assert len(_drain(b)) == 1  # nothing was attached
    finally:
        a.close()
        b.close()


def _police(p: object, sock: socket.socket, now_ns: int, stats: object) -> list[bytes]:
    out = ffi.new("uint8_t[]", 64 * 2048)
    lens = ffi.new("uint32_t[]", 64)
    kept = []
    while True:
        n = lib.ox_rx_police(sock.fileno(), p, now_ns, out, 2048, lens, 64, 1 << 20, stats)
        assert n >= 0
        kept += [ffi.buffer(out + i * 2048, lens[i])[:] for i in range(n)]
        if n < 64:
            return kept


def _flagged(p: object) -> list[bytes]:
    buf = ffi.new("uint8_t[]", 6 * lib.OX_MAX_BLOCKED)
    n = lib.ox_police_flagged(p, buf, lib.OX_MAX_BLOCKED)
    flat = ffi.buffer(buf, 6 * n)[:]
    return [flat[i:i + 6] for i in range(0, len(flat), 6)]


@pytest.mark.net
def test_police_flags_a_source_that_keeps_sending_over_its_rate() -> None:
    # 100 frames/s, bursts of 8: a source is flagged after 2 * 8 denials in a second.
    p = ffi.gc(lib.ox_police_new(100.0, 8.0, 64), lib.ox_police_free)
    stats = ffi.new("ox_police_stats *")
    flood, calm = _macs(2, 99)
    a, b = _unix_pair()
    try:
        t = 10**12
        for _ in range(8 + 15):
            a.send(_proto_frame(flood))
        a.send(_proto_frame(calm))
        kept = _police(p, b, t, stats)
        assert [f[6:12] for f in kept] == [flood] * 8 + [calm]
        assert stats.policed == 15 and stats.flagged == 0 and _flagged(p) == []
        a.send(_proto_frame(flood))  # the 16th denial
        assert _police(p, b, t + 1000, stats) == []
        assert stats.flagged == 1 and _flagged(p) == [flood]
        assert _flagged(p) == []  # handed over once
        # Once a second at most, however much more it sends.
        for _ in range(40):
            a.send(_proto_frame(flood))
        _police(p, b, t + 500_000_000, stats)
        assert stats.flagged == 1 and _flagged(p) == []
        # A new second: flagged again after another 16 denials, not before.
        t2 = t + 1_100_000_000  # refills 8 tokens (the burst), denials count afresh
        for _ in range(8 + 15):
            a.send(_proto_frame(flood))
        _police(p, b, t2, stats)
        assert stats.flagged == 1
        a.send(_proto_frame(flood))
        _police(p, b, t2, stats)
        assert stats.flagged == 2 and _flagged(p) == [flood]
        # A source within its rate is never flagged: 100 frames/s for 3 s.
        for i in range(300):
            a.send(_proto_frame(calm))
            assert len(_police(p, b, t2 + (i + 1) * 10_000_000, stats)) == 1
        assert stats.flagged == 2 and _flagged(p) == []
    finally:
        a.close()
        b.close()


@pytest.mark.net
def test_police_flagged_list_is_bounded_and_kept_until_taken() -> None:
    p = ffi.gc(lib.ox_police_new(1.0, 1.0, 4096), lib.ox_police_free)
    stats = ffi.new("ox_police_stats *")
    sources = _macs(lib.OX_MAX_BLOCKED + 8, 5)
    a, b = _unix_pair()
    try:
        for m in sources:
            for _ in range(3):  # 1 accepted, 2 denied = flagged (strike 2)
                a.send(_proto_frame(m))
            _police(p, b, 10**12, stats)
        assert stats.flagged == len(sources)
        buf = ffi.new("uint8_t[]", 6 * 4)
        assert lib.ox_police_flagged(p, buf, 4) == 4
        assert ffi.buffer(buf)[:] == b"".join(sources[:4])
        rest = _flagged(p)
        assert rest == sources[4:lib.OX_MAX_BLOCKED]  # the list holds OX_MAX_BLOCKED
        assert lib.ox_police_flagged(p, ffi.NULL, 0) == 0
        assert lib.ox_police_flagged(ffi.NULL, buf, 4) == 0
    finally:
        a.close()
        b.close()


class _SocketLink:
    """What a Receiver asks of its RawLink, over a socket of a pair."""

    ifname = "pair"

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()


@pytest.mark.net
@pytest.mark.parametrize("over", [False, True])
def test_receiver_above_the_unlimited_rate_never_flags(over: bool) -> None:
    """bootserver --read-rate above UNLIMITED_READ_RATE: no host is ever
    blocked, as its help says. One source sends three bursts' worth at one
    instant: at UNLIMITED_READ_RATE it is flagged (over its rate), above it
    its frames over the rate are dropped but it is never flagged."""
    from oxboot.serve.receiver import READ_BURST, UNLIMITED_READ_RATE, Receiver

    a, b = _unix_pair()
    try:
        rx = Receiver(_SocketLink(b), None, UNLIMITED_READ_RATE * (2 if over else 1),
                      fast=False)  # type: ignore[arg-type]
        stats = ffi.new("ox_police_stats *")
        flood = _macs(1, 21)[0]
        sent = 0
        while sent < 3 * READ_BURST:  # in chunks that fit the socket's queue
            for _ in range(128):
                a.send(_proto_frame(flood))
            sent += 128
            _police(rx._police, b, 10**12, stats)
        assert stats.accepted == READ_BURST and stats.policed == 2 * READ_BURST
        assert stats.flagged == (0 if over else 1)
        assert _flagged(rx._police) == ([] if over else [flood])
    finally:
        a.close()
        b.close()


class _Image:
    """An image as the receiver serves it: a C pointer into its bytes."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self.ptr = ffi.from_buffer(self.data)
        self.size = size


@pytest.mark.net
def test_receiver_keeps_an_image_until_the_c_core_lets_go_of_it() -> None:
    """A sled dropped from another thread is dropped from the C table only
    at the owner's next drain: until then the image it serves from must
    stay alive (its mapping freed early would be read by the C core)."""
    from oxboot.serve.receiver import UNLIMITED_READ_RATE, Receiver

    a, b = _unix_pair()

    class _Tx:
        class link:
            @staticmethod
            def tx_ring() -> tuple[int, object]:
                return b.fileno(), ffi.NULL

            @staticmethod
            def tx_xsk() -> object:
                return ffi.NULL

    try:
        rx = Receiver(_SocketLink(b), _Tx, UNLIMITED_READ_RATE, fast=True)  # type: ignore[arg-type]
        image = _Image(1 << 16)
        kept = weakref.ref(image)
        sled, image_mac = _macs(1, 31)[0], _macs(1, 32)[0]
        assert rx.serve(sled, image_mac, image, 0)
        del image
        gc.collect()
        assert kept() is not None  # the C table points into it
        other = threading.Thread(target=rx.drop, args=(sled,))
        other.start()
        other.join()
        gc.collect()
        assert kept() is not None and sled in rx.fast_macs  # not dropped yet in C
        rx.receive(0.0)  # the owner's next drain applies the drop
        gc.collect()
        assert kept() is None and sled not in rx.fast_macs
    finally:
        a.close()
        b.close()


# ---- READs of established sessions answered in C (ox_rx_serve) -----------------------


IMAGE_MAC = bytes.fromhex("02aabbcc0001")
OTHER_IMAGE_MAC = bytes.fromhex("06aabbcc0001")


def _read_frame(src: bytes, dst: bytes, slots: dict[int, int], noffsets: int | None = None,
                pad: int = 0) -> bytes:
    row = [0] * 128
    for i, off in slots.items():
        row[i] = off
    payload = struct.pack("!Q128Q", len(slots) if noffsets is None else noffsets, *row)
    return (dst + src + struct.pack("!HIII", ETHERTYPE, MAGIC, 0x9003, len(payload)) + payload
            + bytes(pad))


class Served:
    """A session table, the server's receive socket pair and a transmit
    socket pair whose far end shows the DATA sent."""

    def __init__(self, image: bytes, sessions: int = 8) -> None:
        self.table = ffi.gc(lib.ox_serve_new(sessions), lib.ox_serve_free)
        self.police = ffi.gc(lib.ox_police_new(1e6, 1e6, 64), lib.ox_police_free)
        self.stats = ffi.new("ox_police_stats *")
        self.rx_in, self.rx = _unix_pair()
        self.tx, self.tx_out = _unix_pair()
        self.image = CBuf(len(image), image)

    def add(self, sled: bytes, image_mac: bytes = IMAGE_MAC, high: int = 0) -> int:
        return lib.ox_serve_set(self.table, sled, image_mac, self.image.ptr, self.image.size,
                                high)

    def run(self, frames: list[bytes], out_n: int = 64,
            now_ns: int = 123_000_000_000) -> tuple[list[bytes], list[bytes]]:
        """(frames handed back, DATA frames sent)."""
        for f in frames:
            self.rx_in.send(f)
        out = ffi.new("uint8_t[]", out_n * 2048)
        lens = ffi.new("uint32_t[]", out_n)
        n = lib.ox_rx_serve(self.rx.fileno(), self.police, self.table, self.tx.fileno(),
                            now_ns, out, 2048, lens, out_n, 1 << 20, self.stats)
        assert n >= 0
        kept = [ffi.buffer(out + i * 2048, lens[i])[:] for i in range(n)]
        return kept, _drain(self.tx_out)

    def info(self, sled: bytes) -> object:
        info = ffi.new("ox_serve_info *")
        assert lib.ox_serve_get(self.table, sled, info) == 1
        return info

    def close(self) -> None:
        for s in (self.rx_in, self.rx, self.tx, self.tx_out):
            s.close()
        self.image.free()


@pytest.fixture
def served():
    image = image_bytes(10 * 1024 + 7)
    s = Served(image)
    yield s, image
    s.close()


@pytest.mark.net
def test_serve_answers_reads_of_its_sessions(served) -> None:
    s, image = served
    sled = bytes.fromhex("020000000001")
    assert s.add(sled) == 0
    # Slots out of order, a duplicate, the short tail (7 bytes: padded to 26)
    # and an offset past the end (zero-length DATA).
    slots = {0: 2048, 5: 0, 9: 2048, 11: 10 * 1024, 127: 1 << 40}
    kept, sent = s.run([_read_frame(sled, IMAGE_MAC, slots)])
    assert kept == []
    want = [expected_frame(image, off, dst=sled, src=IMAGE_MAC) for off in
            (0, 2048, 10 * 1024, 1 << 40)]
    assert sorted(sent, key=lambda f: f[26:34]) == want  # each once, in any order
    info = s.info(sled)
    assert (info.reads, info.offsets, info.frames) == (1, 4, 4)
    assert info.high == (1 << 40) + 1024 and info.last_ns == 123_000_000_000
    assert info.retransmits == 0 and info.repeats == 0
    # Asking again for what was served: counted as retransmissions, the
    # READ as a repeated one (link health: lost DATA, as the sled sees it).
    kept, sent = s.run([_read_frame(sled, IMAGE_MAC, {3: 0, 4: 1024})])
    assert kept == [] and len(sent) == 2
    assert (s.info(sled).retransmits, s.info(sled).repeats) == (2, 1)
    # A READ past the high-water mark asks nothing again.
    kept, sent = s.run([_read_frame(sled, IMAGE_MAC, {0: (1 << 40) + 1024})])
    assert kept == [] and len(sent) == 1
    assert (s.info(sled).retransmits, s.info(sled).repeats, s.info(sled).reads) == (2, 1, 3)
    assert s.stats.served == 3
    totals = ffi.new("ox_serve_totals *")
    lib.ox_serve_totals_get(s.table, totals)
    assert (totals.reads, totals.retransmits, totals.repeats) == (3, 2, 1)


@pytest.mark.net
def test_serve_hands_back_what_is_not_its_own(served) -> None:
    s, image = served
    sled, stranger = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
    assert s.add(sled) == 0
    frames = [
        _read_frame(stranger, IMAGE_MAC, {0: 0}),            # no session
        _read_frame(sled, OTHER_IMAGE_MAC, {0: 0}),          # another image
        _read_frame(sled, IMAGE_MAC, {}),                    # nothing due
        _read_frame(sled, IMAGE_MAC, {0: 0}, noffsets=129),  # malformed
        _read_frame(sled, IMAGE_MAC, {0: 0})[:-1],           # short
        _proto_frame(sled),                                  # not a READ
    ]
    kept, sent = s.run(frames)
    assert kept == frames and sent == []
    assert s.stats.served == 0 and s.info(sled).reads == 0


@pytest.mark.net
def test_serve_table_set_drop_and_capacity() -> None:
    s = Served(image_bytes(4096), sessions=3)
    try:
        sleds = _macs(4, 77)
        for m in sleds[:3]:
            assert s.add(m) == 0
        assert s.add(sleds[3]) == -1  # full
        assert s.add(sleds[0], high=5) == 0  # replacing is not adding
        assert s.info(sleds[0]).high == 5
        assert lib.ox_serve_drop(s.table, sleds[1]) == 1
        assert lib.ox_serve_drop(s.table, sleds[1]) == 0
        assert s.add(sleds[3]) == 0  # room again
        for m in (sleds[0], sleds[2], sleds[3]):
            assert lib.ox_serve_get(s.table, m, ffi.new("ox_serve_info *")) == 1
        assert lib.ox_serve_get(s.table, sleds[1], ffi.new("ox_serve_info *")) == 0
        # A dropped sled's READs go back to the caller.
        kept, sent = s.run([_read_frame(sleds[1], IMAGE_MAC, {0: 0})])
        assert len(kept) == 1 and sent == []
    finally:
        s.close()


@pytest.mark.net
def test_serve_table_churn_keeps_every_entry_reachable() -> None:
    table = ffi.gc(lib.ox_serve_new(64), lib.ox_serve_free)
    rng = random.Random(3)
    live: set[bytes] = set()
    pool = _macs(200, 8)
    info = ffi.new("ox_serve_info *")
    for _ in range(5000):
        m = rng.choice(pool)
        if m in live and rng.random() < 0.5:
            assert lib.ox_serve_drop(table, m) == 1
            live.discard(m)
        elif len(live) < 64 or m in live:
            assert lib.ox_serve_set(table, m, IMAGE_MAC, ffi.NULL, 0, 0) == 0
            live.add(m)
        else:
            assert lib.ox_serve_set(table, m, IMAGE_MAC, ffi.NULL, 0, 0) == -1
        for x in pool[:40]:
            assert lib.ox_serve_get(table, x, info) == (1 if x in live else 0)


@pytest.mark.net
def test_serve_table_churn_leaves_misses_cheap() -> None:
    """A million sessions set and dropped, each for a sled never seen
    before (spoofed HELLO and READ churn), around sessions that stay: a
    lookup of an unknown sled (every READ from one) still looks at as few
    entries as in a table that only ever held the staying sessions, not at
    the whole table, and every staying session is still found."""
    sessions = 4096  # the server's (receiver.FAST_SESSIONS)
    staying = _macs(sessions // 2, 14)
    unknown = [bytes([0x07]) + m[1:] for m in _macs(2000, 15)]  # _macs: never 0x07...

    def table_of(macs: list[bytes]) -> object:
        table = ffi.gc(lib.ox_serve_new(sessions), lib.ox_serve_free)
        for m in macs:
            assert lib.ox_serve_set(table, m, IMAGE_MAC, ffi.NULL, 0, 0) == 0
        return table

    churned, fresh = table_of(staying), table_of(staying)
    serve_set, serve_drop, window = lib.ox_serve_set, lib.ox_serve_drop, 64
    for i in range(1_000_000 + window):
        if i < 1_000_000:  # 0x03...: no _macs sled either
            assert serve_set(churned, b"\x03" + i.to_bytes(5, "big"), IMAGE_MAC, ffi.NULL,
                             0, 0) == 0
        if i >= window:
            assert serve_drop(churned, b"\x03" + (i - window).to_bytes(5, "big")) == 1
    probes = [lib.ox_serve_probes(churned, m) for m in unknown]
    assert probes == [lib.ox_serve_probes(fresh, m) for m in unknown]
    assert sum(probes) / len(probes) < 2 and max(probes) < 16, (sum(probes), max(probes))
    info = ffi.new("ox_serve_info *")
    assert all(lib.ox_serve_get(churned, m, info) == 1 for m in staying)
    assert not any(lib.ox_serve_get(churned, m, info) for m in unknown)


@pytest.mark.net
def test_serve_returns_after_out_n_reads() -> None:
    s = Served(image_bytes(64 * 1024))
    try:
        sled = bytes.fromhex("020000000001")
        assert s.add(sled) == 0
        frames = [_read_frame(sled, IMAGE_MAC, {0: 1024 * i}) for i in range(10)]
        kept, sent = s.run(frames, out_n=4)
        assert kept == [] and len(sent) == 4  # the rest waits on the socket
        kept, sent = s.run([], out_n=64)
        assert len(sent) == 6
    finally:
        s.close()


# ---- batch repair timing of the READs answered in C (ox_serve_repair) ------------------


def _timed(s: Served) -> None:
    params = ffi.new("ox_repair_params *", {
        "first_ns": REPAIR_FIRST_WAIT_NS, "min_ns": REPAIR_MIN_WAIT_NS,
        "max_ns": REPAIR_MAX_WAIT_NS, "margin_ns": REPAIR_MARGIN_NS})
    assert lib.ox_serve_repair(s.table, params) == 0


def _overdue(s: Served, now_ns: int, cap: int = 8) -> list[tuple[bytes, list[int], int, int]]:
    recs = ffi.new(f"ox_serve_overdue_rec[{max(cap, 1)}]")
    n = lib.ox_serve_overdue(s.table, now_ns, recs, cap)
    assert n >= 0
    out = []
    for r in recs[0:n]:
        mask = int(r.mask[0]) | int(r.mask[1]) << 64
        offsets = [int(r.base) + 1024 * i for i in range(128) if mask >> i & 1]
        out.append((bytes(ffi.buffer(r.sled, 6)), offsets, int(r.read_ns), int(r.wait_ns)))
    return out


def _batch_frame(sled: bytes, k: int, slots: range = range(128)) -> bytes:
    return _read_frame(sled, IMAGE_MAC, {i: k * 131072 + 1024 * i for i in slots})


@pytest.mark.net
def test_serve_times_reads_as_the_protocol_layer_does() -> None:
    """The C core's round trip estimate and overdue time of each READ it
    answers are protocol.repair.RoundTrip's, gap for gap."""
    s = Served(image_bytes(64 * 1024))
    try:
        _timed(s)
        sled = bytes.fromhex("020000000001")
        assert s.add(sled) == 0
        rtt, now = RoundTrip(), 10**12
        rng = random.Random(5)
        for k in range(40):
            s.run([_batch_frame(sled, k)], now_ns=now)
            assert lib.ox_serve_wake(s.table) == now + rtt.wait()
            assert _overdue(s, now + rtt.wait() - 1) == []
            gap = rng.choice([150_000, 200_000, 400_000, 3_000_000, 40_000_000])
            now += gap
            if k < 39:  # the next READ comes after `gap`: a sample
                rtt.sample(gap)
        # The last one is overdue: reported once, with its offsets and times.
        due = lib.ox_serve_wake(s.table)
        last = now - gap
        [(mac, offsets, read_ns, wait_ns)] = _overdue(s, due)
        assert mac == sled and offsets == [39 * 131072 + 1024 * i for i in range(128)]
        assert (read_ns, wait_ns) == (last, due - last)
        assert _overdue(s, due + 10**9) == [] and lib.ox_serve_wake(s.table) == 0
    finally:
        s.close()


@pytest.mark.net
def test_serve_overdue_gaps_resends_and_layouts() -> None:
    s = Served(image_bytes(64 * 1024))
    try:
        _timed(s)
        sled, other = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
        assert s.add(sled) == 0 and s.add(other) == 0
        t = 10**12
        s.run([_batch_frame(sled, 0)], now_ns=t)
        s.run([_batch_frame(sled, 1)], now_ns=t + 300_000)  # a sample: 0.3 ms
        rtt = RoundTrip()
        rtt.sample(300_000)
        wait = rtt.wait()  # the sans-I/O rules' wait: the C core's must be the same
        assert lib.ox_serve_wake(s.table) == t + 300_000 + wait
        # A re-ask of two slots: overdue in turn, exactly those offsets.
        s.run([_batch_frame(sled, 1, range(17, 19))], now_ns=t + 10**9)
        [(_, offsets, _, _)] = _overdue(s, t + 10**9 + wait)
        assert offsets == [131072 + 17 * 1024, 131072 + 18 * 1024]
        # Reported, not resent: the next READ's gap is no sample.
        s.run([_batch_frame(sled, 2)], now_ns=t + 2 * 10**9)
        assert lib.ox_serve_wake(s.table) == t + 2 * 10**9 + wait
        # Reported and resent: the gap from the resend is one.
        assert _overdue(s, t + 2 * 10**9 + wait)
        assert lib.ox_serve_resent(s.table, sled, t + 3 * 10**9) == 1
        s.run([_batch_frame(sled, 3)], now_ns=t + 3 * 10**9 + 500_000)
        rtt = RoundTrip()
        rtt.sample(300_000)
        rtt.sample(500_000)
        assert lib.ox_serve_wake(s.table) == t + 3 * 10**9 + 500_000 + rtt.wait()
        # Not an OS client's layout (offsets of two batches, or not whole
        # chunks): answered, never timed.
        for slots in ({0: 131072 * 5, 1: 131072 * 6 + 1024}, {0: 131072 + 7}):
            s.run([_read_frame(other, IMAGE_MAC, slots)], now_ns=t)
        assert _overdue(s, t + 10**10) == [(sled, [3 * 131072 + 1024 * i for i in range(128)],
                                             t + 3 * 10**9 + 500_000, rtt.wait())]
        # Resent without a report: nothing changes; unknown sled: 0.
        assert lib.ox_serve_resent(s.table, bytes(6), t) == 0
        # Several due, room for one: the other on the next call.
        for f in (_batch_frame(sled, 4), _batch_frame(other, 0)):
            s.run([f], now_ns=t + 4 * 10**9)  # one batch at a time: a socketpair holds little
        first = _overdue(s, t + 5 * 10**9, cap=1)
        second = _overdue(s, t + 5 * 10**9, cap=1)
        assert len(first) == len(second) == 1 and {first[0][0], second[0][0]} == {sled, other}
        # A dropped session is never reported; timing off disarms all.
        for f in (_batch_frame(sled, 5), _batch_frame(other, 1)):
            s.run([f], now_ns=t + 6 * 10**9)  # one batch at a time: a socketpair holds little
        assert lib.ox_serve_drop(s.table, other) == 1
        assert [r[0] for r in _overdue(s, t + 7 * 10**9)] == [sled]
        s.run([_batch_frame(sled, 6)], now_ns=t + 8 * 10**9)
        off = ffi.new("ox_repair_params *")
        assert lib.ox_serve_repair(s.table, off) == 0
        assert lib.ox_serve_wake(s.table) == 0 and _overdue(s, t + 10**11) == []
        s.run([_batch_frame(sled, 7)], now_ns=t + 9 * 10**9)
        assert lib.ox_serve_wake(s.table) == 0
    finally:
        s.close()


@pytest.mark.net
def test_serve_untimed_by_default_and_bad_repair_arguments() -> None:
    s = Served(image_bytes(4096))
    try:
        sled = bytes.fromhex("020000000001")
        assert s.add(sled) == 0
        s.run([_batch_frame(sled, 0, range(4))])
        assert lib.ox_serve_wake(s.table) == 0
        bad = ffi.new("ox_repair_params *", {"first_ns": 1, "min_ns": 5, "max_ns": 2})
        assert lib.ox_serve_repair(s.table, bad) == -1
        assert lib.ox_serve_repair(ffi.NULL, bad) == -1
        assert lib.ox_serve_repair(s.table, ffi.NULL) == -1
        assert lib.ox_serve_overdue(ffi.NULL, 0, ffi.NULL, 0) == -1
        assert lib.ox_serve_overdue(s.table, 0, ffi.NULL, 1) == -1
        assert lib.ox_serve_resent(ffi.NULL, sled, 0) == -1
        assert lib.ox_serve_resent(s.table, ffi.NULL, 0) == -1
        assert lib.ox_serve_wake(ffi.NULL) == 0
    finally:
        s.close()


@pytest.mark.net
def test_serve_bad_arguments() -> None:
    assert lib.ox_serve_new(0) == ffi.NULL
    t = ffi.gc(lib.ox_serve_new(4), lib.ox_serve_free)
    assert lib.ox_serve_set(t, ffi.NULL, IMAGE_MAC, ffi.NULL, 0, 0) == -1
    assert lib.ox_serve_set(t, SRC, ffi.NULL, ffi.NULL, 0, 0) == -1
    assert lib.ox_serve_set(t, SRC, IMAGE_MAC, ffi.NULL, 10, 0) == -1
    assert lib.ox_serve_set(ffi.NULL, SRC, IMAGE_MAC, ffi.NULL, 0, 0) == -1
    assert lib.ox_serve_drop(ffi.NULL, SRC) == -1
    assert lib.ox_serve_get(t, SRC, ffi.NULL) == -1
    p = ffi.gc(lib.ox_police_new(1.0, 1.0, 4), lib.ox_police_free)
    out = ffi.new("uint8_t[]", 2048)
    lens = ffi.new("uint32_t[]", 1)
    stats = ffi.new("ox_police_stats *")
    assert lib.ox_rx_serve(0, p, t, -1, 0, out, 2048, lens, 1, 1, stats) == -1  # no tx fd
    lib.ox_serve_totals_get(ffi.NULL, ffi.new("ox_serve_totals *"))  # a no-op


@pytest.mark.net
def test_fanout_index_is_source_mac_bytes_2_to_5_modulo_members() -> None:
    # The kernel takes the fanout program's return value (MAC bytes 2..5)
    # modulo the group's size; the server routes DATA the same way.
    for mac in (bytes(6), bytes.fromhex("02000000000b"), bytes.fromhex("ffffffffffff"),
                bytes.fromhex("06b007000001")):
        for members in (1, 2, 3, 7):
            assert lib.ox_fanout_index(mac, members) == int.from_bytes(mac[2:], "big") % members
    assert lib.ox_fanout_index(bytes(6), 0) == 0

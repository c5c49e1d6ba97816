"""Coverage-guided fuzzing of every parser that takes bytes from the wire or
from an image file, bounded in time for CI (hypothesis; atheris if present):

* ``protocol.parse_frame``: only FrameError; what parses re-encodes to the
  bytes it came from.
* ``BootServer.receive_bytes`` fed hostile frame sequences: never raises;
  every action is well formed (DATA only for an image that exists, to the
  host that asked, offsets u64 ints). The server's C fast path for READs
  (``ox_read_offsets`` + ``receive_read``) decides exactly as the Python
  path does.
* ``ClientSession.receive`` after ``parse_frame``: never raises, never asks
  to write outside the ramdisk.
* ``format.Header.parse``: only ImageError.
* The C core's ``ox_read_offsets`` and ``ox_parse_data`` against the Python
  parser, on exact-size malloc buffers (so the ASan run sees any overread).
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.cbuf import CBuf

from oxboot import protocol
from oxboot._native import ffi, lib
from oxboot.format import HEADER_SIZE, Header, ImageError
from oxboot.protocol import (
    BROADCAST,
    CHUNK,
    MAGIC,
    SLOTS,
    BootServer,
    ClientSession,
    ClientState,
    Data,
    Frame,
    FrameError,
    MsgType,
    Offer,
    Read,
    Reset,
    due_offsets,
    encode_dataset,
    pack_frame,
    parse_frame,
)

U64 = (1 << 64) - 1
MIB = 1 << 20
CLIENT = bytes.fromhex("a84025000001")
CLIENT2 = bytes.fromhex("a84025000002")
SRV = [bytes.fromhex("020000000001"), bytes.fromhex("060000005a02"),
       bytes.fromhex("0600000058fe")]
SHA = hashlib.sha256(b"wanted").digest()
OFFERS = [Offer(64 * MIB, 2 * MIB, SHA, encode_dataset("rpool/ROOT/ramdisk")),
          Offer(4 * MIB, 1 * MIB, bytes(32), encode_dataset("other")),
          Offer(1 * MIB, 1 * MIB, b"\xff" * 32, encode_dataset(""))]

#: Examples per test; raise OXBOOT_FUZZ_EXAMPLES for a longer hunt off CI.
FUZZ = settings(max_examples=int(os.environ.get("OXBOOT_FUZZ_EXAMPLES", "250")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

MACS = st.one_of(st.sampled_from([CLIENT, CLIENT2, BROADCAST, *SRV,
                                  bytes.fromhex("010000000001"), bytes(6)]),
                 st.binary(min_size=6, max_size=6))
OFFSETS = st.one_of(
    st.just(0),
    st.integers(0, 300).map(lambda i: i * CHUNK),  # the first batches
    st.sampled_from([1, 1023, 2 * MIB - 1, 2 * MIB, 2 * MIB - 10, 2 * MIB + CHUNK, 1 << 32,
                     1 << 63, U64 - CHUNK + 1, U64 - CHUNK, U64 - 1, U64]),
    st.integers(0, U64),
)
TYPES = st.one_of(st.sampled_from([int(t) for t in MsgType]),
                  st.sampled_from([0, 0x9002, 0x9103, 0x03900000, 0xFFFFFFFF]),
                  st.integers(0, 0xFFFFFFFF))
NOFFSETS = st.one_of(st.integers(0, SLOTS), st.sampled_from([129, 160, 1 << 32, 1 << 63, U64]),
                     st.integers(0, U64))


@st.composite
def read_body(draw: st.DrawFn) -> bytes:
    slots = [0] * SLOTS
    for i in draw(st.lists(st.integers(0, SLOTS - 1), max_size=SLOTS)):
        slots[i] = draw(OFFSETS)
    return struct.pack(f"!Q{SLOTS}Q", draw(NOFFSETS), *slots)


@st.composite
def body_for(draw: st.DrawFn, typ: int) -> bytes:
    if typ == MsgType.READ and draw(st.integers(0, 3)):
        return draw(read_body())
    if typ == MsgType.DATA and draw(st.booleans()):
        return struct.pack("!Q", draw(OFFSETS)) + draw(
            st.one_of(st.binary(max_size=40), st.binary(min_size=1000, max_size=1480)))
    if typ == MsgType.OFFER and draw(st.booleans()):
        return struct.pack("!QQ", draw(OFFSETS), draw(OFFSETS)) + draw(
            st.sampled_from([SHA, bytes(32)])) + draw(st.binary(min_size=128, max_size=128))
    if typ == MsgType.HELLO and draw(st.booleans()):
        return b"Hello!  I'd like to buy a ramdisk please."
    return draw(st.binary(max_size=1500))


@st.composite
def wire_frames(draw: st.DrawFn) -> bytes:
    """Bytes as a raw socket may hand them over: mostly near-valid frames of
    this protocol with lying fields, sometimes anything at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=1600))
    typ = draw(TYPES)
    body = draw(body_for(typ))
    length = draw(st.one_of(st.just(len(body)), st.just(len(body)),
                            st.integers(max(0, len(body) - 9), len(body) + 9),
                            st.sampled_from([0, 8, 1032, 1476, 1477, 1500, 1501, 0x7FFFFFFF,
                                             0x80000000, 0xFFFFFFFF])))
    ethertype = draw(st.sampled_from([0x1DE0] * 12 + [0x0800, 0xE01D, 0x8100]))
    magic = draw(st.sampled_from([MAGIC] * 12 + [0, MAGIC ^ 1, 0x4523E11D]))
    buf = draw(MACS) + draw(MACS) + struct.pack("!HIII", ethertype, magic, typ, length) + body
    tail = draw(st.integers(0, 3))
    if tail == 1:
        buf += bytes(draw(st.integers(1, 40)))  # Ethernet padding
    elif tail == 2:
        buf = buf[:draw(st.integers(0, len(buf)))]  # cut short
    return buf


def reference_read(buf: bytes) -> list[int] | None:
    """What a READ frame asks for according to the Python parser, or None."""
    try:
        frame = parse_frame(buf)
    except FrameError:
        return None
    return due_offsets(frame.msg) if isinstance(frame.msg, Read) else None


def c_read_offsets(buf: bytes) -> tuple[int, list[int]]:
    with CBuf(len(buf), buf) as frame, CBuf(8 * (SLOTS + 1), 0xA5) as out:
        ptr = ffi.cast("uint64_t *", out.ptr)
        n = lib.ox_read_offsets(frame.ptr, len(buf), ptr)
        return n, [ptr[i] for i in range(max(n, 0))]


# ---- parse_frame ------------------------------------------------------------------


@FUZZ
@given(wire_frames())
def test_parse_frame_only_frame_error(buf: bytes) -> None:
    try:
        frame = parse_frame(buf)
    except FrameError:
        return
    packed = pack_frame(frame.dst, frame.src, frame.msg)
    assert buf[:len(packed)] == packed
    for view in (bytearray(buf), memoryview(buf)):
        assert parse_frame(view) == frame


# ---- the C core against the Python parser ---------------------------------------------


def _valid_read(noffsets: int, slots: dict[int, int]) -> bytes:
    row = [0] * SLOTS
    for i, off in slots.items():
        row[i] = off
    return pack_frame(SRV[0], CLIENT, Read(noffsets, tuple(row)))


@FUZZ
@given(st.integers(0, SLOTS), st.dictionaries(st.integers(0, SLOTS - 1), OFFSETS),
       st.binary(max_size=30))
@example(2, {17: 17 * CHUNK, 90: 90 * CHUNK}, b"")
@example(3, {0: 0, 5: 4096}, b"")
@example(128, {i: U64 - i for i in range(SLOTS)}, b"")
@example(128, {i: 1024 * (i % 3 + 1) for i in range(SLOTS)}, bytes(30))
def test_read_offsets_agrees_with_due_offsets(noffsets: int, slots: dict[int, int],
                                              pad: bytes) -> None:
    buf = _valid_read(noffsets, slots) + pad
    n, got = c_read_offsets(buf)
    want = due_offsets(parse_frame(buf).msg)  # type: ignore[arg-type]
    assert n == len(want) and got == want


@FUZZ
@given(wire_frames())
@example(b"")
@example(bytes(1057))
@example(_valid_read(128, {})[:26] + struct.pack("!Q", 129) + bytes(1024))
@example(_valid_read(0, {})[:-1])
def test_read_offsets_on_arbitrary_bytes(buf: bytes) -> None:
    n, got = c_read_offsets(buf)
    assert n == -1 or 0 <= n <= SLOTS + 1
    want = reference_read(buf)
    # The server's fast path must accept exactly the READs the parser does.
    if want is None:
        assert n == -1
    else:
        assert got == want


@FUZZ
@given(wire_frames())
def test_parse_data_agrees_with_parse_frame(buf: bytes) -> None:
    off = ffi.new("uint64_t *", 0xDEAD)
    exact = ffi.new("int *", 7)
    with CBuf(len(buf), buf) as frame:
        n = lib.ox_parse_data(frame.ptr if buf else ffi.NULL, len(buf), off, exact)
    try:
        parsed = parse_frame(buf)
        msg = parsed.msg if isinstance(parsed.msg, Data) else None
    except FrameError:
        msg = None
    if msg is None:
        assert n == -1
        assert off[0] == 0xDEAD and exact[0] == 7
        return
    assert n == len(msg.payload) and off[0] == msg.offset
    assert exact[0] == (len(buf) == 34 + n)


# ---- the boot server's decisions --------------------------------------------------------


def _fast_path(server: BootServer, buf: bytes, now: float) -> list[object]:
    """What the I/O loop does (Server._decide): READs through the C core."""
    if buf[18:22] == int(MsgType.READ).to_bytes(4, "big"):
        n, offsets = c_read_offsets(buf)
        if n >= 0:
            return server.receive_read(buf[6:12], buf[0:6], offsets, now)
    return server.receive_bytes(buf, now)


def _check_actions(server: BootServer, buf: bytes, actions: list[object],
                   allow: list[bytes] | None) -> None:
    n = len(server.images)
    src = buf[6:12]
    for action in actions:
        match action:
            case protocol.ServeData(dst=dst, src=me, image=index, offsets=offsets):
                assert isinstance(index, int) and 0 <= index < n
                assert me == server.server_macs[index] and dst == src
                assert not dst[0] & 1 and dst not in server.server_macs
                assert allow is None or dst in allow
                assert isinstance(offsets, tuple) and 0 < len(offsets) <= SLOTS + 1
                assert all(type(o) is int and 0 <= o <= U64 for o in offsets)
                assert len(set(offsets)) == len(offsets)
                assert buf[6:12] == dst
            case protocol.SendOffer(dst=dst, src=me, image=index, offer=offer):
                assert 0 <= index < n and offer == server.images[index]
                assert me == server.server_macs[index] and dst == src
                assert allow is None or dst in allow
                pack_frame(dst, me, offer)
            case protocol.SendReset(dst=dst, src=me):
                assert me in server.server_macs and dst == src
            case protocol.SessionStarted(image=index) | protocol.SessionFinished(image=index):
                assert 0 <= index < n
            case protocol.Ignored():
                pass
            case _:
                raise AssertionError(f"unknown action {action!r}")


@FUZZ
@given(st.lists(st.tuples(wire_frames(), st.floats(0, 3)), max_size=30),
       st.integers(1, 3), st.booleans())
def test_boot_server_never_raises(frames: list[tuple[bytes, float]], images: int,
                                  allow_list: bool) -> None:
    allow = [CLIENT] if allow_list else None
    kw = {"read_rate": 50.0, "read_burst": 8, "max_sessions": 2, "idle_timeout": 5.0}
    slow = BootServer(OFFERS[:images], SRV[:images], allow, **kw)
    fast = BootServer(OFFERS[:images], SRV[:images], allow, **kw)
    now = 0.0
    for buf, dt in frames:
        now += dt
        got = slow.receive_bytes(buf, now)
        _check_actions(slow, buf, got, allow)
        # The C fast path decides exactly as the Python path does.
        assert _fast_path(fast, buf, now) == got
        if dt > 2.5:
            assert [s.mac for s in slow.expire(now)] == [s.mac for s in fast.expire(now)]
        assert len(slow.sessions) <= 2
    assert slow.counters == fast.counters


@st.composite
def client_traffic(draw: st.DrawFn) -> bytes:
    """Frames a sled may see: mostly DATA/OFFER/RESET from the server."""
    if draw(st.integers(0, 3)) == 0:
        return draw(wire_frames())
    kind = draw(st.sampled_from(["data", "data", "data", "offer", "reset", "other"]))
    dst = draw(st.sampled_from([CLIENT, CLIENT, BROADCAST, CLIENT2]))
    src = draw(st.sampled_from([SRV[0], SRV[0], SRV[1]]))
    if kind == "data":
        payload = draw(st.sampled_from([b"", b"x" * 26, b"y" * CHUNK, b"z" * 1468, b"w"]))
        buf = pack_frame(dst, src, Data(draw(OFFSETS), payload))
        return buf + bytes(draw(st.sampled_from([0, 0, 0, 1, 25])))
    if kind == "offer":
        size = draw(st.sampled_from([MIB, 2 * MIB, MIB - 1, 64 * MIB, U64]))
        ramdisk = draw(st.sampled_from([size, 64 * MIB, MIB, U64]))
        dataset = draw(st.sampled_from([encode_dataset("x"), b"x" * 128]))
        return pack_frame(dst, src, Offer(ramdisk, size, draw(st.sampled_from([SHA, bytes(32)])),
                                          dataset))
    if kind == "reset":
        return pack_frame(dst, src, Reset()) + bytes(draw(st.sampled_from([0, 34])))
    return draw(wire_frames())


@FUZZ
@given(st.lists(st.tuples(client_traffic(), st.floats(0, 1.5)), max_size=60), st.booleans())
def test_client_session_never_raises(frames: list[tuple[bytes, float]],
                                     in_transfer: bool) -> None:
    sess = ClientSession(CLIENT, SHA)
    now = 0.0
    sess.poll(now)
    if in_transfer:
        sess.receive(Frame(CLIENT, SRV[0], OFFERS[0]), now)
        assert sess.state is ClientState.TRANSFER
        sess.poll(now)
    for buf, dt in frames:
        now += dt
        try:
            frame = parse_frame(buf)
        except FrameError:
            continue
        if sess.receive(frame, now, frame_len=len(buf)):
            msg = frame.msg
            assert isinstance(msg, Data) and msg.payload
            assert msg.offset + len(msg.payload) <= sess.ramdisk_capacity
            # (from any source: the OS never checks who sent a DATA)
        for out in sess.poll(now):
            pack_frame(out.dst, out.src, out.msg)  # whatever it sends is sendable
    assert sess.state in ClientState


# ---- image headers -----------------------------------------------------------------------


@st.composite
def header_bytes(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=HEADER_SIZE + 16))
    magic = draw(st.sampled_from([0x1DEB0075] * 8 + [0, 0x7500EB1D]))
    version = draw(st.sampled_from([1, 2, 2, 2, 0, 3, 0xFFFFFFFF]))
    sizes = st.one_of(st.sampled_from([0, 1, 4095, 4096, MIB, 1 << 32, (1 << 32) + 1, U64]),
                      st.integers(0, U64))
    name = st.one_of(st.binary(max_size=128).map(lambda b: b.ljust(128, b"\0")),
                     st.sampled_from([b"x" * 128, b"\xff\xfe" + bytes(126),
                                      b"\0abc" + bytes(124), "é".encode() * 64]))
    if version == 1:
        head = struct.pack("<IIQQ32s128s", magic, version, draw(sizes), draw(sizes),
                           draw(st.binary(min_size=32, max_size=32)), draw(name))
    else:
        head = struct.pack("<IIQQQQ32s128s128s", magic, version, draw(sizes), draw(sizes),
                           draw(sizes), draw(sizes), draw(st.binary(min_size=32, max_size=32)),
                           draw(name), draw(name))
    head = head.ljust(HEADER_SIZE, b"\0")
    cut = draw(st.integers(0, 5))
    if cut == 0:
        head = head[:draw(st.integers(0, HEADER_SIZE))]
    elif cut == 1:
        head += draw(st.binary(max_size=64))
    return head


@FUZZ
@given(header_bytes())
def test_header_parse_only_image_error(buf: bytes) -> None:
    try:
        header = Header.parse(buf)
    except ImageError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert Header.parse(bytearray(buf)) == header == Header.parse(memoryview(buf))
    # What a parsed header offers never raises either.
    header.problems()
    header.describe()
    header.as_dict()
    assert header.codec is not None
    if not header.problems() and header.version == 2:
        try:
            packed = header.pack()
        except ImageError:
            return  # a name the original accepts but cannot write back (NUL inside)
        assert Header.parse(packed) == header


# ---- atheris (optional) ---------------------------------------------------------------------


HARNESS = textwrap.dedent("""
    import sys, atheris
    with atheris.instrument_imports():
        from oxboot.protocol import FrameError, parse_frame, due_offsets, Read
        from oxboot.format import Header, ImageError
        from oxboot._native import ffi, lib

    out = ffi.new("uint64_t[129]")

    def one(data):
        try:
            frame = parse_frame(data)
        except FrameError:
            frame = None
        n = lib.ox_read_offsets(data, len(data), out)
        if frame is not None and isinstance(frame.msg, Read):
            assert list(out[0:n]) == due_offsets(frame.msg), data
        else:
            assert n == -1, data
        try:
            Header.parse(data)
        except ImageError:
            pass

    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
""")


def test_atheris_short_run(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    harness = tmp_path / "harness.py"
    harness.write_text(HARNESS)
    p = subprocess.run([sys.executable, str(harness), "-runs=20000", "-max_len=1600"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]

"""Tests of oxboot.protocol: wire format, protocol rules, the server's
decisions and the model of the OS client, all in memory (no network)."""

from __future__ import annotations

import hashlib
import random
import struct
from array import array

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oxboot import protocol
from oxboot.protocol import (
    BROADCAST,
    CHUNK,
    DATA_HDR_LEN,
    ETHERTYPE,
    MAGIC,
    NETBOOT_ALIGN,
    SLOTS,
    BootServer,
    ClientSession,
    ClientState,
    Data,
    Finished,
    Frame,
    FrameError,
    Hello,
    Ignored,
    MsgType,
    Offer,
    Read,
    Reset,
    SendOffer,
    SendReset,
    ServeData,
    SessionFinished,
    SessionStarted,
    data_extent,
    data_frame,
    due_offsets,
    encode_dataset,
    offer_acceptable,
    pack_frame,
    parse_frame,
)

MIB = 1 << 20
CLIENT = bytes.fromhex("a84025000001")
CLIENT2 = bytes.fromhex("a84025000002")
SRV = [bytes.fromhex(f"02000000000{i}") for i in range(1, 4)]
OTHER_SRV = bytes.fromhex("020000000099")
SHA = hashlib.sha256(b"the image").digest()
DATASET = encode_dataset("rpool/ROOT/ramdisk")
FIRST_BATCH = tuple(i * CHUNK for i in range(SLOTS))


def make_offer(
    ramdisk_size: int = 4 * MIB,
    data_size: int = 2 * MIB,
    sha256: bytes = SHA,
    dataset: bytes = DATASET,
) -> Offer:
    return Offer(ramdisk_size, data_size, sha256, dataset)


def raw_frame(
    code: int,
    payload: bytes = b"",
    *,
    length: int | None = None,
    ethertype: int = ETHERTYPE,
    magic: int = MAGIC,
) -> bytes:
    """A frame built by hand, so that it can be wrong in any one field."""
    size = len(payload) if length is None else length
    return SRV[0] + CLIENT + struct.pack("!HIII", ethertype, magic, code, size) + payload


def wire(frame: bytes) -> bytes:
    """What a receiver gets: frames under 60 bytes are padded by the NIC."""
    return frame.ljust(60, b"\0")


# --- Constants -----------------------------------------------------------------


def test_constants() -> None:
    assert (protocol.ETHERTYPE, protocol.MAGIC) == (0x1DE0, 0x1DE12345)
    assert (protocol.ETH_HLEN, protocol.HDR_LEN, protocol.DATA_HDR_LEN) == (14, 12, 34)
    assert (protocol.CHUNK, protocol.SLOTS, protocol.NETBOOT_ALIGN) == (1024, 128, 131072)
    assert (protocol.READ_LEN, protocol.OFFER_LEN, protocol.DATASET_LEN) == (1032, 176, 128)
    assert (protocol.MAX_DATA, protocol.MIN_DATA_PAYLOAD) == (1468, 26)
    # 26 is the smallest payload whose DATA frame needs no Ethernet padding.
    assert DATA_HDR_LEN + protocol.MIN_DATA_PAYLOAD == 60
    assert protocol.HELLO_TEXT == b"Hello!  I'd like to buy a ramdisk please."
    assert (protocol.HELLO_INTERVAL, protocol.RETRANSMIT_AFTER) == (4.0, 1.0)
    assert protocol.MIN_OFFER_SIZE == MIB
    assert {t.name: t.value for t in MsgType} == {
        "HELLO": 0x9001,
        "OFFER": 0x9102,
        "READ": 0x9003,
        "DATA": 0x9104,
        "FINISHED": 0x9005,
        "RESET": 0x9106,
    }


def test_default_read_rate_is_one_constant() -> None:
    """bootserver's --read-rate default, the Server's, the BootServer's and
    the documents' are protocol.DEFAULT_READ_RATE."""
    import inspect
    from pathlib import Path

    from oxboot.cli.bootserver import build_parser

    rate = protocol.DEFAULT_READ_RATE
    assert build_parser().parse_args(["eth0", "x.img", "any"]).read_rate == rate
    assert inspect.signature(BootServer).parameters["read_rate"].default == rate
    try:
        from oxboot.serve import Server
    except ImportError:  # the portable build has no boot server
        pass
    else:
        assert inspect.signature(Server).parameters["read_rate"].default == rate
    root = Path(__file__).resolve().parents[1]
    assert f"| `DEFAULT_READ_RATE` | {rate:g} /s |" in (root / "docs/protocol.md").read_text()
    assert f"(`--read-rate`, default {rate:g} frames/s" in (root / "README.md").read_text()


# --- Wire format: known answers and round trips --------------------------------

EXAMPLES = [
    Hello(protocol.HELLO_TEXT),
    Hello(b""),
    make_offer(),
    Read(128, FIRST_BATCH),
    Read.from_slots({17: 17 * CHUNK, 90: 90 * CHUNK}),
    Data(0, bytes(range(256)) * 4),
    Data(1 << 63, b""),
    Data(5, b"x" * protocol.MAX_DATA),
    Finished(),
    Reset(),
]


def test_hello_bytes_exactly() -> None:
    frame = pack_frame(BROADCAST, CLIENT, Hello(protocol.HELLO_TEXT))
    assert frame == (
        b"\xff" * 6
        + CLIENT
        + bytes.fromhex("1de0 1de12345 00009001 00000029")
        + b"Hello!  I'd like to buy a ramdisk please."
    )


def test_read_and_offer_layout() -> None:
    read = pack_frame(SRV[0], CLIENT, Read.from_slots({0: 0, 2: 0x0102030405060708}))
    assert len(read) == 26 + 1032
    assert read[22:26] == (1032).to_bytes(4, "big")
    assert read[26:34] == (2).to_bytes(8, "big")
    assert read[34 + 16 : 34 + 24] == bytes.fromhex("0102030405060708")
    offer = pack_frame(CLIENT, SRV[0], make_offer(5 * MIB, 3 * MIB))
    assert len(offer) == 26 + 176
    assert offer[26:42] == (5 * MIB).to_bytes(8, "big") + (3 * MIB).to_bytes(8, "big")
    assert offer[42:74] == SHA and offer[74:] == DATASET


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_examples(msg: protocol.Message) -> None:
    frame = pack_frame(CLIENT, SRV[0], msg)
    assert parse_frame(frame) == Frame(CLIENT, SRV[0], msg)
    assert parse_frame(bytearray(wire(frame))) == Frame(CLIENT, SRV[0], msg)
    assert parse_frame(memoryview(frame + b"\0" * 100)) == Frame(CLIENT, SRV[0], msg)
    assert Frame(CLIENT, SRV[0], msg).pack() == frame


def test_parse_exotic_buffers() -> None:
    frame = pack_frame(CLIENT, SRV[0], Data(1024, b"abcd" * 8))
    as_words = array("Q", frame + bytes(-len(frame) % 8))
    assert parse_frame(as_words).msg == Data(1024, b"abcd" * 8)  # type: ignore[arg-type]
    strided = memoryview(bytes(b for b in frame for _ in (0, 1)))[::2]
    assert parse_frame(strided).msg == Data(1024, b"abcd" * 8)


U64 = st.integers(0, 2**64 - 1)
MACS = st.binary(min_size=6, max_size=6)
SLOT_VALUES = st.one_of(st.just(0), U64)
MESSAGES = st.one_of(
    st.builds(Hello, st.binary(max_size=protocol.MAX_HELLO)),
    st.builds(
        Offer, U64, U64, st.binary(min_size=32, max_size=32), st.binary(min_size=128, max_size=128)
    ),
    st.builds(
        Read,
        st.integers(0, SLOTS),
        st.lists(SLOT_VALUES, min_size=SLOTS, max_size=SLOTS).map(tuple),
    ),
    st.builds(Data, U64, st.binary(max_size=protocol.MAX_DATA)),
    st.just(Finished()),
    st.just(Reset()),
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(MACS, MACS, MESSAGES, st.binary(max_size=64))
def test_round_trip_property(dst: bytes, src: bytes, msg: protocol.Message, pad: bytes) -> None:
    frame = pack_frame(dst, src, msg)
    parsed = parse_frame(frame + pad)  # trailing bytes are Ethernet padding
    assert parsed == Frame(dst, src, msg)
    assert pack_frame(parsed.dst, parsed.src, parsed.msg) == frame


# --- Wire format: errors -------------------------------------------------------

PARSE_ERRORS = {
    "empty": (b"", "too short"),
    "short header": (raw_frame(MsgType.FINISHED)[:25], "too short"),
    "ethertype": (raw_frame(MsgType.FINISHED, ethertype=0x0800), "ethertype"),
    "vlan": (raw_frame(MsgType.FINISHED, ethertype=0x8100), "ethertype"),
    "magic": (raw_frame(MsgType.FINISHED, magic=0x1DE12346), "magic"),
    "unknown type": (raw_frame(0x9002), "unknown type"),
    "truncated hello": (raw_frame(MsgType.HELLO, b"Hello", length=6), "truncated"),
    "truncated offer": (raw_frame(MsgType.OFFER, bytes(175), length=176), "truncated"),
    "truncated read": (raw_frame(MsgType.READ, bytes(1031), length=1032), "truncated"),
    "truncated data": (raw_frame(MsgType.DATA, bytes(100), length=108), "truncated"),
    "huge len": (raw_frame(MsgType.HELLO, length=2**32 - 1), "HELLO len"),
    "offer short len": (raw_frame(MsgType.OFFER, bytes(175)), "OFFER len"),
    "offer long len": (raw_frame(MsgType.OFFER, bytes(177)), "OFFER len"),
    "read len": (raw_frame(MsgType.READ, bytes(1024)), "READ len"),
    "read noffsets": (raw_frame(MsgType.READ, struct.pack("!Q", 129) + bytes(1024)), "noffsets"),
    "read noffsets max": (raw_frame(MsgType.READ, b"\xff" * 1032), "noffsets"),
    "data len < 8": (raw_frame(MsgType.DATA, bytes(7)), "DATA len"),
    "data len > 1476": (raw_frame(MsgType.DATA, bytes(1477)), "DATA len"),
    "finished len": (raw_frame(MsgType.FINISHED, b"\0"), "FINISHED len"),
    "reset len": (raw_frame(MsgType.RESET, bytes(4)), "RESET len"),
    "hello len": (raw_frame(MsgType.HELLO, bytes(1501)), "HELLO len"),
}


@pytest.mark.parametrize(("buf", "match"), PARSE_ERRORS.values(), ids=PARSE_ERRORS.keys())
def test_parse_errors(buf: bytes, match: str) -> None:
    with pytest.raises(FrameError, match=match):
        parse_frame(buf)


def test_parse_limits_accepted() -> None:
    assert parse_frame(raw_frame(MsgType.HELLO, bytes(1500))).msg == Hello(bytes(1500))
    assert parse_frame(raw_frame(MsgType.DATA, bytes(1476))).msg == Data(0, bytes(1468))
    read = parse_frame(raw_frame(MsgType.READ, struct.pack("!Q", 128) + bytes(1024))).msg
    assert read == Read(128, (0,) * SLOTS)


@pytest.mark.parametrize("junk", ["frame", None, 42, 3.5, [1, 2, 3], object()])
def test_parse_non_bytes(junk: object) -> None:
    with pytest.raises(FrameError):
        parse_frame(junk)  # type: ignore[arg-type]


def test_frame_error_is_value_error() -> None:
    assert issubclass(FrameError, ValueError)


PACK_ERRORS = [
    (b"\0" * 5, CLIENT, Finished(), ValueError),
    (CLIENT, b"\0" * 7, Finished(), ValueError),
    (0, CLIENT, Finished(), TypeError),
    (CLIENT, CLIENT, Hello(bytes(1501)), ValueError),
    (CLIENT, CLIENT, make_offer(sha256=bytes(31)), ValueError),
    (CLIENT, CLIENT, make_offer(dataset=bytes(127)), ValueError),
    (CLIENT, CLIENT, make_offer(ramdisk_size=-1), ValueError),
    (CLIENT, CLIENT, make_offer(data_size=2**64), ValueError),
    (CLIENT, CLIENT, Read(129, (0,) * SLOTS), ValueError),
    (CLIENT, CLIENT, Read(-1, (0,) * SLOTS), ValueError),
    (CLIENT, CLIENT, Read(1, (0,) * 127), ValueError),
    (CLIENT, CLIENT, Read(1, (-1,) + (0,) * 127), ValueError),
    (CLIENT, CLIENT, Read(1, (2**64,) + (0,) * 127), ValueError),
    (CLIENT, CLIENT, Data(-1, b""), ValueError),
    (CLIENT, CLIENT, Data(0, bytes(1469)), ValueError),
    (CLIENT, CLIENT, "HELLO", TypeError),
]


@pytest.mark.parametrize(("dst", "src", "msg", "exc"), PACK_ERRORS)
def test_pack_errors(dst: object, src: object, msg: object, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        pack_frame(dst, src, msg)  # type: ignore[arg-type]


def test_encode_dataset() -> None:
    field = encode_dataset("rpool/ROOT/ramdisk")
    assert len(field) == 128 and field.startswith(b"rpool/ROOT/ramdisk\0")
    assert make_offer(dataset=field).dataset_name == "rpool/ROOT/ramdisk"
    assert encode_dataset(b"x" * 127)[127] == 0
    for bad in ("x" * 128, "a\0b"):
        with pytest.raises(ValueError):
            encode_dataset(bad)


@FUZZ
@given(st.binary(max_size=1600))
def test_fuzz_arbitrary_bytes(buf: bytes) -> None:
    try:
        parse_frame(buf)
    except FrameError:
        pass


@FUZZ
@given(st.binary(max_size=1600))
def test_fuzz_arbitrary_bytes_behind_valid_header(body: bytes) -> None:
    # Random bodies behind a valid prefix reach the per-type checks.
    for code in MsgType:
        try:
            frame = parse_frame(raw_frame(code, body[4:], length=int.from_bytes(body[:4] or b"\0")))
        except FrameError:
            continue
        assert frame.msg is not None


@FUZZ
@given(MACS, MACS, MESSAGES, st.data())
def test_fuzz_mutated_valid_frames(
    dst: bytes, src: bytes, msg: protocol.Message, data: st.DataObject
) -> None:
    buf = bytearray(pack_frame(dst, src, msg))
    for _ in range(data.draw(st.integers(1, 4))):
        how = data.draw(st.sampled_from(["flip", "cut", "grow", "header"]))
        if how == "flip" and buf:
            buf[data.draw(st.integers(0, len(buf) - 1))] ^= data.draw(st.integers(1, 255))
        elif how == "cut":
            del buf[data.draw(st.integers(0, len(buf))) :]
        elif how == "grow":
            buf += data.draw(st.binary(max_size=40))
        elif how == "header" and len(buf) >= 26:
            buf[data.draw(st.integers(12, 25))] = data.draw(st.integers(0, 255))
    try:
        frame = parse_frame(buf)
    except FrameError:
        return
    # Whatever parses re-encodes to the bytes it was parsed from.
    packed = pack_frame(frame.dst, frame.src, frame.msg)
    assert bytes(buf[: len(packed)]) == packed


# --- Protocol rules ------------------------------------------------------------


def test_offer_acceptable_rules() -> None:
    assert offer_acceptable(make_offer(), SHA)
    assert offer_acceptable(make_offer(MIB, MIB), SHA)  # boundaries included
    assert offer_acceptable(make_offer(dataset=bytes(128)), SHA)  # empty name is fine
    assert not offer_acceptable(make_offer(dataset=b"x" * 128), SHA)
    assert not offer_acceptable(make_offer(dataset=bytes(127) + b"x"), SHA)
    assert not offer_acceptable(make_offer(ramdisk_size=MIB - 1, data_size=MIB - 1), SHA)
    assert not offer_acceptable(make_offer(data_size=MIB - 1), SHA)
    assert not offer_acceptable(make_offer(ramdisk_size=2 * MIB, data_size=2 * MIB + 1), SHA)
    assert not offer_acceptable(make_offer(), hashlib.sha256(b"other").digest())


def test_due_offsets_first_batch_includes_zero() -> None:
    # Slot 0 holds offset 0: 127 non-zero slots but noffsets = 128.
    assert due_offsets(Read(128, FIRST_BATCH)) == list(FIRST_BATCH)


def test_due_offsets_later_batch() -> None:
    batch = tuple(NETBOOT_ALIGN + i * CHUNK for i in range(SLOTS))
    assert due_offsets(Read(128, batch)) == list(batch)


def test_due_offsets_scattered_slots() -> None:
    read = Read.from_slots({17: 17 * CHUNK, 90: 90 * CHUNK})
    assert read.noffsets == 2
    assert due_offsets(read) == [17 * CHUNK, 90 * CHUNK]


def test_due_offsets_scans_all_slots_not_just_noffsets() -> None:
    # The original server read only the first noffsets slots: it stalls here.
    read = Read.from_slots({127: 5 * CHUNK})
    assert due_offsets(read) == [5 * CHUNK]


def test_due_offsets_duplicates_once_in_slot_order() -> None:
    read = Read(4, (0, 9 * CHUNK, 3 * CHUNK, 9 * CHUNK, 3 * CHUNK) + (0,) * 123)
    assert due_offsets(read) == [9 * CHUNK, 3 * CHUNK]


def test_due_offsets_offset_zero_rule() -> None:
    assert due_offsets(Read(1, (0,) * SLOTS)) == [0]
    assert due_offsets(Read.from_slots({0: 0, 9: 9 * CHUNK})) == [0, 9 * CHUNK]
    # As many non-zero slots as noffsets: every zero slot is just unused.
    assert due_offsets(Read.from_slots({9: 9 * CHUNK})) == [9 * CHUNK]
    # A malformed noffsets far too large still asks for offset 0 once.
    assert due_offsets(Read(128, (0,) * SLOTS)) == [0]


def test_due_offsets_noffsets_zero() -> None:
    assert due_offsets(Read(0, (0,) * SLOTS)) == []
    assert due_offsets(Read(0, (0, CHUNK) + (0,) * 126)) == [CHUNK]


@given(st.sets(st.integers(0, SLOTS - 1)), st.integers(0, 1 << 40), st.booleans())
def test_due_offsets_matches_client_slots(used: set[int], batch: int, zero: bool) -> None:
    # Slot i of batch b holds offset (b * 128 + i) * 1024, so offset 0 can
    # only be in slot 0 of batch 0: the READs the OS client builds.
    slots = {i: (batch * SLOTS + i) * CHUNK for i in used}
    if zero:
        slots[0] = 0
    assert due_offsets(Read.from_slots(slots)) == [slots[i] for i in sorted(slots)]


@pytest.mark.parametrize(
    ("size", "offset", "expected"),
    [
        (0, 0, (0, 0)),
        (MIB, 0, (1024, 1024)),
        (MIB, MIB - 1024, (1024, 1024)),
        (MIB, MIB, (0, 0)),  # past the end: an EOF reply
        (MIB, 5 * MIB, (0, 0)),
        (MIB + 1, MIB, (1, 26)),
        (MIB + 5, MIB, (5, 26)),
        (MIB + 25, MIB, (25, 26)),
        (MIB + 26, MIB, (26, 26)),
        (MIB + 27, MIB, (27, 27)),
        (MIB + 777, MIB, (777, 777)),
        (MIB + 1024, MIB, (1024, 1024)),
        (MIB + 5000, MIB, (1024, 1024)),
        (MIB, MIB - 10, (10, 26)),  # unaligned offsets are served too
        (10, 0, (10, 26)),
    ],
)
def test_data_extent(size: int, offset: int, expected: tuple[int, int]) -> None:
    assert data_extent(size, offset) == expected


@given(st.integers(0, 1 << 40), st.integers(0, 1 << 40))
def test_data_extent_property(size: int, offset: int) -> None:
    n, length = data_extent(size, offset)
    assert 0 <= n <= CHUNK and n <= max(0, size - offset)
    assert length == n or (0 < n < 26 and length == 26)
    # The frame is never short enough to need Ethernet padding, unless EOF.
    assert length == 0 or DATA_HDR_LEN + length >= 60


def test_data_extent_rejects_negative() -> None:
    with pytest.raises(ValueError):
        data_extent(-1, 0)
    with pytest.raises(ValueError):
        data_extent(10, -1)


def test_data_frame_pads_short_tail_to_60_bytes() -> None:
    image = bytes(range(256)) * 4096 + b"tail!"
    frame = data_frame(CLIENT, SRV[0], image, MIB)
    assert len(frame) == 60
    assert parse_frame(frame).msg == Data(MIB, b"tail!" + bytes(21))
    assert parse_frame(data_frame(CLIENT, SRV[0], image, 0)).msg == Data(0, image[:1024])
    eof = data_frame(CLIENT, SRV[0], image, MIB + CHUNK)
    assert len(eof) == DATA_HDR_LEN and parse_frame(eof).msg == Data(MIB + CHUNK, b"")


# --- BootServer ----------------------------------------------------------------


def make_server(n: int = 1, allow: list[bytes] | None = None, **kw: float) -> BootServer:
    images = [make_offer(sha256=hashlib.sha256(bytes([i])).digest()) for i in range(n)]
    return BootServer(images, SRV[:n], allow, **kw)  # type: ignore[arg-type]


def hello(src: bytes = CLIENT, dst: bytes = BROADCAST) -> Frame:
    return Frame(dst, src, Hello(protocol.HELLO_TEXT))


def read(offsets: dict[int, int], dst: bytes = SRV[0], src: bytes = CLIENT) -> Frame:
    return Frame(dst, src, Read.from_slots(offsets))


def finished(dst: bytes = SRV[0], src: bytes = CLIENT) -> Frame:
    return Frame(dst, src, Finished())


def only_ignored(actions: list[protocol.Action], reason: str) -> bool:
    return len(actions) == 1 and isinstance(actions[0], Ignored) and reason in actions[0].reason


def test_server_hello_offers_each_image_from_its_mac() -> None:
    server = make_server(3)
    actions = server.receive(hello(), 0.0)
    assert actions == [SendOffer(CLIENT, SRV[i], i, server.images[i]) for i in range(3)]
    assert actions[1].frame() == Frame(CLIENT, SRV[1], server.images[1])  # type: ignore[union-attr]
    session = server.sessions[CLIENT]
    assert (session.mac, session.image, session.started_at, session.finished) == (
        CLIENT,
        None,
        0.0,
        False,
    )
    assert server.counters["offers"] == 3


def test_server_hello_unicast_to_us_and_to_others() -> None:
    server = make_server(2)
    assert len(server.receive(hello(dst=SRV[1]), 0.0)) == 2
    assert only_ignored(server.receive(hello(CLIENT2, dst=OTHER_SRV), 0.0), "not addressed")
    assert CLIENT2 not in server.sessions


def test_server_allowlist() -> None:
    server = make_server(1, allow=[CLIENT])
    assert isinstance(server.receive(hello(), 0.0)[0], SendOffer)
    for frame in (hello(CLIENT2), read({1: CHUNK}, src=CLIENT2), finished(src=CLIENT2)):
        assert only_ignored(server.receive(frame, 0.0), "not allowed")
    assert CLIENT2 not in server.sessions
    assert server.counters["ignored"] == 3


def test_server_ignores_own_and_multicast_sources() -> None:
    server = make_server(2)
    for src in SRV[:2]:
        assert only_ignored(server.receive(hello(src), 0.0), "own frame")
    assert only_ignored(server.receive(hello(b"\x01\x00\x5e\x00\x00\x01"), 0.0), "multicast")
    assert only_ignored(server.receive(hello(BROADCAST), 0.0), "multicast")
    assert server.sessions == {}


@pytest.mark.parametrize("msg", [make_offer(), Data(0, b"x" * 26), Reset()])
def test_server_ignores_server_messages(msg: protocol.Message) -> None:
    server = make_server()
    assert only_ignored(server.receive(Frame(SRV[0], CLIENT, msg), 0.0), "not a client message")


def test_server_read_after_hello_binds_image_of_dst_mac() -> None:
    server = make_server(3)
    server.receive(hello(), 0.0)
    actions = server.receive(read({0: 0, 1: CHUNK}, dst=SRV[2]), 0.1)
    assert actions == [
        SessionStarted(CLIENT, 2),
        ServeData(CLIENT, SRV[2], 2, (0, CHUNK)),
    ]
    assert server.sessions[CLIENT].image == 2
    # Only the first READ starts the session.
    assert server.receive(read({2: 2 * CHUNK}, dst=SRV[2]), 0.2) == [
        ServeData(CLIENT, SRV[2], 2, (2 * CHUNK,))
    ]


def test_server_read_before_hello_single_image_resumes() -> None:
    server = make_server(1)
    actions = server.receive(read({5: 5 * CHUNK}), 7.0)
    assert actions == [SessionStarted(CLIENT, 0), ServeData(CLIENT, SRV[0], 0, (5 * CHUNK,))]
    assert server.sessions[CLIENT].started_at == 7.0


def test_server_read_before_hello_several_images_resets() -> None:
    server = make_server(3)
    assert server.receive(read({5: 5 * CHUNK}, dst=SRV[1]), 0.0) == [SendReset(CLIENT, SRV[1])]
    assert CLIENT not in server.sessions
    assert server.counters["resets"] == 1
    assert SendReset(CLIENT, SRV[1]).frame() == Frame(CLIENT, SRV[1], Reset())


def test_server_read_to_wrong_image_mac_resets() -> None:
    server = make_server(3)
    server.receive(hello(), 0.0)
    server.receive(read({0: 0}, dst=SRV[0]), 0.1)
    assert server.receive(read({1: CHUNK}, dst=SRV[1]), 0.2) == [SendReset(CLIENT, SRV[1])]
    # The client will reboot and HELLO again; its old session is gone.
    assert CLIENT not in server.sessions


def test_server_read_to_foreign_mac_is_not_reset() -> None:
    # Another boot server's client: neither served nor disturbed.
    server = make_server(3)
    assert only_ignored(server.receive(read({1: CHUNK}, dst=OTHER_SRV), 0.0), "not addressed")
    assert only_ignored(server.receive(read({1: CHUNK}, dst=BROADCAST), 0.0), "not addressed")


def test_server_empty_read() -> None:
    server = make_server()
    actions = server.receive(read({}), 0.0)
    assert actions[0] == SessionStarted(CLIENT, 0)
    assert isinstance(actions[1], Ignored) and "no offsets" in actions[1].reason


def test_server_session_counters() -> None:
    server = make_server()
    server.receive(hello(), 0.0)
    server.receive(Frame(SRV[0], CLIENT, Read(128, FIRST_BATCH)), 0.1)
    # Lost: slots 17 and 90 asked again, then offset 0 on its own.
    server.receive(read({17: 17 * CHUNK, 90: 90 * CHUNK}), 1.2)
    server.receive(read({0: 0}), 2.3)
    batch2 = {i: NETBOOT_ALIGN + i * CHUNK for i in range(SLOTS)}
    server.receive(read(batch2), 2.4)
    s = server.sessions[CLIENT]
    assert (s.reads, s.offsets_served, s.retransmits) == (4, 128 + 2 + 1 + 128, 3)
    assert s.repeats == 2  # the two READs that asked again
    assert (s.started_at, s.last_seen) == (0.0, 2.4)
    assert server.counters["retransmits"] == 3 and server.counters["offsets"] == 259
    assert server.counters["repeats"] == 2


def test_server_finished_once() -> None:
    server = make_server(2)
    server.receive(hello(), 0.0)
    server.receive(read({0: 0}, dst=SRV[1]), 0.1)
    assert only_ignored(server.receive(finished(dst=SRV[0]), 0.2), "another image")
    assert server.receive(finished(dst=SRV[1]), 0.3) == [SessionFinished(CLIENT, 1)]
    assert server.sessions[CLIENT].finished
    assert only_ignored(server.receive(finished(dst=SRV[1]), 0.4), "duplicate")
    assert only_ignored(server.receive(read({1: CHUNK}, dst=SRV[1]), 0.5), "after FINISHED")
    assert server.counters["finished"] == 1


def test_server_finished_without_session_or_read() -> None:
    server = make_server(2)
    assert only_ignored(server.receive(finished(), 0.0), "without a session")
    assert only_ignored(server.receive(finished(dst=OTHER_SRV), 0.0), "not addressed")
    server.receive(hello(), 0.0)
    assert only_ignored(server.receive(finished(), 0.1), "another image")


def test_server_hello_restarts_session() -> None:
    server = make_server()
    server.receive(hello(), 0.0)
    server.receive(read({0: 0}), 0.1)
    server.receive(finished(), 0.2)
    server.receive(hello(), 30.0)  # the sled rebooted
    s = server.sessions[CLIENT]
    assert (s.image, s.reads, s.finished, s.started_at) == (None, 0, False, 30.0)
    assert server.receive(read({0: 0}), 30.1)[0] == SessionStarted(CLIENT, 0)


def test_server_rate_limit_flood_does_not_starve_others() -> None:
    server = make_server(read_rate=4000.0, read_burst=256)
    flood = read({i: i * CHUNK for i in range(1, SLOTS)})
    served = limited = 0
    for _ in range(1000):
        for action in server.receive(flood, 0.0):
            served += isinstance(action, ServeData)
            limited += isinstance(action, Ignored) and action.reason == "rate limited"
    assert served == 256
    assert limited == 1  # reported once per flood, counted every time
    assert server.counters["rate_limited"] == 744
    # Another host is served at the very same moment.
    assert serves(server.receive(read({3: 3 * CHUNK}, src=CLIENT2), 0.0))
    # The flooder gets tokens back at read_rate per second, up to the burst.
    assert [serves(server.receive(flood, 0.001)) for _ in range(5)] == [True] * 4 + [False]
    assert sum(serves(server.receive(flood, 10.0)) for _ in range(300)) == 256


def test_server_hello_flood_is_metered_too() -> None:
    server = make_server(3, read_rate=1.0, read_burst=2)
    assert [len(server.receive(hello(), 0.0)) for _ in range(3)] == [3, 3, 1]
    assert server.counters["offers"] == 6 and server.counters["rate_limited"] == 1


def test_server_rate_limit_survives_clock_step_back() -> None:
    server = make_server(read_rate=1.0, read_burst=1)
    assert isinstance(server.receive(read({1: CHUNK}), 100.0)[-1], ServeData)
    assert only_ignored(server.receive(read({1: CHUNK}), 50.0), "rate limited")
    assert isinstance(server.receive(read({1: CHUNK}), 101.5)[-1], ServeData)


def serves(actions: list[protocol.Action]) -> bool:
    return any(isinstance(a, ServeData) for a in actions)


def mac(i: int) -> bytes:
    return bytes([0xA8, 0x40, 0x25, 0, 1, i])


def test_server_max_sessions_evicts_finished_and_idle_first() -> None:
    server = make_server(max_sessions=3)
    a, b, c, d, e = (mac(i) for i in range(5))
    server.receive(hello(a), 0.0)
    server.receive(read({0: 0}, src=a), 0.1)
    server.receive(read({1: CHUNK}, src=b), 0.2)  # resumed, active
    server.receive(finished(src=a), 0.3)
    server.receive(hello(c), 0.4)  # offered, not started
    assert list(server.sessions) == [b, a, c]
    server.receive(hello(d), 0.5)  # b is active: a (finished) goes
    assert list(server.sessions) == [b, c, d]
    server.receive(hello(e), 0.6)  # c never read: idle
    assert list(server.sessions) == [b, d, e]
    assert server.counters["sessions_evicted"] == 2


def test_server_max_sessions_never_evicts_active_transfers() -> None:
    server = make_server(max_sessions=2)
    a, b, c = mac(1), mac(2), mac(3)
    server.receive(read({1: CHUNK}, src=a), 0.0)
    server.receive(read({1: CHUNK}, src=b), 1.0)
    assert only_ignored(server.receive(hello(c), 2.0), "table full")
    assert only_ignored(server.receive(read({1: CHUNK}, src=c), 2.0), "table full")
    assert server.counters["sessions_full"] == 2
    # Once a has been silent past ACTIVE_WINDOW, it is idle and may go.
    assert isinstance(server.receive(hello(c), 0.1 + protocol.ACTIVE_WINDOW)[0], SendOffer)
    assert list(server.sessions) == [b, c]


def test_server_expire() -> None:
    server = make_server(idle_timeout=60.0)
    server.receive(hello(mac(1)), 0.0)
    server.receive(hello(mac(2)), 30.0)
    assert server.expire(60.0) == []
    dead = server.expire(61.0)
    assert [s.mac for s in dead] == [mac(1)]
    assert list(server.sessions) == [mac(2)]
    assert server.counters["sessions_expired"] == 1
    assert [s.mac for s in server.expire(1000.0)] == [mac(2)]
    assert server.sessions == {} and server._buckets == {}


def offered_slots(actions: list[protocol.Action]) -> list[int]:
    assert all(isinstance(a, SendOffer) for a in actions), actions
    return [a.image for a in actions]  # type: ignore[union-attr]


def test_server_assignments_offer_each_host_only_its_images() -> None:
    # Image 0 for CLIENT only, image 1 for CLIENT2 only, image 2 for every host.
    server = BootServer([make_offer(sha256=bytes([i]) * 32) for i in range(3)], SRV, None,
                        assignments=[[CLIENT], [CLIENT2], None])
    assert offered_slots(server.receive(hello(CLIENT), 0.0)) == [0, 2]
    assert offered_slots(server.receive(hello(CLIENT2), 0.0)) == [1, 2]
    assert offered_slots(server.receive(hello(mac(3)), 0.0)) == [2]
    assert server.counters["offers"] == 5
    assert server.sessions[CLIENT].offered == (0, 2)
    # A host assigned nothing gets nothing: no OFFER, no session.
    server = BootServer([make_offer(), make_offer()], SRV[:2], None,
                        assignments=[[CLIENT], [CLIENT]])
    assert only_ignored(server.receive(hello(CLIENT2), 0.0), "no image for this host")
    assert CLIENT2 not in server.sessions and server.counters["offers"] == 0
    # ... nor DATA for a READ without one (a RESET: its HELLO gets nothing).
    assert server.receive(read({0: 0}, dst=SRV[0], src=CLIENT2), 0.1) == [
        SendReset(CLIENT2, SRV[0])]
    # A server with no image loaded yet (an empty image folder) offers nothing.
    server = BootServer([None], SRV[:1], None)
    assert only_ignored(server.receive(hello(), 0.0), "no image for this host")


def test_server_read_for_an_image_not_offered_resets() -> None:
    server = BootServer([make_offer(), make_offer()], SRV[:2], None,
                        assignments=[[CLIENT], [CLIENT2]])
    server.receive(hello(CLIENT), 0.0)
    assert server.receive(read({0: 0}, dst=SRV[1]), 0.1) == [SendReset(CLIENT, SRV[1])]
    assert CLIENT not in server.sessions
    server.receive(hello(CLIENT), 1.0)
    assert server.receive(read({0: 0}, dst=SRV[0]), 1.1)[0] == SessionStarted(CLIENT, 0)


def test_server_resumes_without_hello_only_on_the_hosts_one_image() -> None:
    server = BootServer([make_offer(), make_offer()], SRV[:2], None,
                        assignments=[[CLIENT], [CLIENT2]])
    assert server.receive(read({1: CHUNK}, dst=SRV[0]), 0.0)[0] == SessionStarted(CLIENT, 0)
    assert server.receive(read({1: CHUNK}, dst=SRV[0], src=CLIENT2), 0.0) == [
        SendReset(CLIENT2, SRV[0])]


def test_server_set_images_keeps_sessions_in_progress() -> None:
    a, b, c = (make_offer(sha256=bytes([i]) * 32) for i in range(3))
    server = BootServer([a, b], SRV[:2], None)
    server.receive(hello(CLIENT), 0.0)
    server.receive(read({0: 0}, dst=SRV[0]), 0.1)  # CLIENT boots image 0
    server.receive(hello(CLIENT2), 0.2)  # CLIENT2 was offered 0 and 1
    assert server.slots_in_use() == {0, 1}
    # Image 0 removed, image 2 added: the boot of image 0 goes on.
    server.set_images([None, b, c], SRV, [None, None, [CLIENT]])
    assert server.receive(read({1: CHUNK}, dst=SRV[0]), 0.3) == [
        ServeData(CLIENT, SRV[0], 0, (CHUNK,))]
    # CLIENT2 took the OFFER of image 0 before it went: served too.
    assert server.receive(read({0: 0}, dst=SRV[0], src=CLIENT2), 0.4)[0] == SessionStarted(
        CLIENT2, 0)
    # Its next HELLO is offered what is there now, as assigned now.
    assert offered_slots(server.receive(hello(CLIENT), 1.0)) == [1, 2]
    assert offered_slots(server.receive(hello(mac(3)), 1.0)) == [1]
    # A session-less READ for the removed image: start over.
    assert server.receive(read({0: 0}, dst=SRV[0], src=mac(4)), 1.1) == [
        SendReset(mac(4), SRV[0])]
    assert server.images == (None, b, c)


def test_server_set_images_moves_a_host_for_its_next_boot() -> None:
    a, b = make_offer(sha256=b"a" * 32), make_offer(sha256=b"b" * 32)
    server = BootServer([a, b], SRV[:2], None, assignments=[[CLIENT], [CLIENT2]])
    server.receive(hello(CLIENT), 0.0)
    server.receive(read({0: 0}, dst=SRV[0]), 0.1)
    server.set_images([a, b], SRV[:2], [[CLIENT2], [CLIENT]])
    # The boot in progress finishes on image 0...
    assert server.receive(read({1: CHUNK}, dst=SRV[0]), 0.2) == [
        ServeData(CLIENT, SRV[0], 0, (CHUNK,))]
    assert server.receive(finished(), 0.3) == [SessionFinished(CLIENT, 0)]
    # ... and the next one is offered image 1 only.
    assert offered_slots(server.receive(hello(), 1.0)) == [1]


def test_server_set_images_refuses_to_move_a_slot_in_use() -> None:
    server = make_server(2)
    server.receive(hello(), 0.0)  # offered both
    with pytest.raises(ValueError, match="in use"):
        server.set_images([make_offer()], SRV[:1])
    with pytest.raises(ValueError, match="in use"):
        server.set_images([make_offer(), make_offer()], [SRV[0], OTHER_SRV])
    with pytest.raises(ValueError, match="assignment"):
        server.set_images([make_offer(), make_offer()], SRV[:2], [None])
    assert len(server.images) == 2
    server.sessions.clear()
    server.set_images([make_offer()], [OTHER_SRV])  # nothing uses them now
    assert server.server_macs == (OTHER_SRV,)
    assert only_ignored(server.receive(read({0: 0}, dst=SRV[0]), 1.0), "not addressed")


def test_server_set_read_rate() -> None:
    server = make_server(read_rate=1.0, read_burst=1)
    assert offered_slots(server.receive(hello(), 0.0)) == [0]
    assert server.receive(hello(), 0.0) == [Ignored(CLIENT, "rate limited")]
    server.set_read_rate(1000.0)
    assert offered_slots(server.receive(hello(), 0.01)) == [0]
    with pytest.raises(ValueError):
        server.set_read_rate(0)


def test_server_receive_bytes() -> None:
    server = make_server()
    actions = server.receive_bytes(b"\x00" * 6 + CLIENT + b"\x08\x00" + bytes(46), 0.0)
    assert len(actions) == 1 and isinstance(actions[0], Ignored)
    assert actions[0].mac == CLIENT and "bad frame" in actions[0].reason
    assert server.receive_bytes(b"", 0.0)[0].mac == b""  # type: ignore[union-attr]
    assert server.counters["bad_frames"] == 2
    offers = server.receive_bytes(wire(pack_frame(BROADCAST, CLIENT, Hello(b"hi"))), 0.0)
    assert isinstance(offers[0], SendOffer)


def test_server_serve_data_frames() -> None:
    image = bytes(range(256)) * 4 * 1024 + b"end"
    action = ServeData(CLIENT, SRV[0], 0, (0, MIB, MIB + CHUNK))
    frames = [parse_frame(f).msg for f in action.frames(image)]
    assert frames == [Data(0, image[:1024]), Data(MIB, b"end" + bytes(23)), Data(MIB + CHUNK, b"")]


@pytest.mark.parametrize(
    ("images", "macs", "kw"),
    [
        ([], [], {}),
        ([make_offer()], SRV[:2], {}),
        ([make_offer(), make_offer()], [SRV[0], SRV[0]], {}),
        ([make_offer()], [b"\x01" + SRV[0][1:]], {}),
        ([make_offer(sha256=b"short")], SRV[:1], {}),
        ([make_offer()], SRV[:1], {"read_rate": 0}),
        ([make_offer()], SRV[:1], {"max_sessions": 0}),
        ([make_offer()], SRV[:1], {"assignments": [None, None]}),
        ([make_offer()], SRV[:1], {"assignments": [[b"short"]]}),
        ([None, make_offer(sha256=b"short")], SRV[:2], {}),
    ],
)
def test_server_constructor_validation(images: list[Offer], macs: list[bytes], kw: dict) -> None:
    with pytest.raises(ValueError):
        BootServer(images, macs, None, **kw)


# --- ClientSession -------------------------------------------------------------


def accepted_client(offer: Offer | None = None, src: bytes = SRV[0]) -> ClientSession:
    client = ClientSession(CLIENT, SHA)
    client.poll(0.0)
    client.receive(Frame(CLIENT, src, offer or make_offer()), 0.0)
    assert client.state is ClientState.TRANSFER
    return client


def one_read(frames: list[Frame]) -> Read:
    assert len(frames) == 1 and isinstance(frames[0].msg, Read)
    assert (frames[0].dst, frames[0].src) == (SRV[0], CLIENT)
    return frames[0].msg


def answer(client: ClientSession, offsets: list[int], now: float, size: int | None = None) -> None:
    """Deliver correct DATA for ``offsets`` of an image of ``size`` bytes."""
    size = client.offer.data_size if size is None else size  # type: ignore[union-attr]
    for offset in offsets:
        n, length = data_extent(size, offset)
        frame = Frame(CLIENT, SRV[0], Data(offset, bytes(length)))
        client.receive(frame, now, max(60, DATA_HDR_LEN + length))


def test_client_hello_every_4_seconds() -> None:
    client = ClientSession(CLIENT, SHA)
    assert client.state is ClientState.DISCOVERY
    times = (0.0, 0.25, 2.0, 4.0, 4.5, 8.5, 8.75, 12.0, 12.875)
    sent = [t for t in times if client.poll(t)]
    assert sent == [0.0, 4.5, 8.75, 12.875]  # strictly more than 4 s apart
    hello_frame = ClientSession(CLIENT, SHA).poll(100.0)[0]
    assert hello_frame == Frame(BROADCAST, CLIENT, Hello(protocol.HELLO_TEXT))
    assert len(hello_frame.pack()) == 67


BAD_OFFERS = {
    "dataset not NUL-terminated": make_offer(dataset=b"x" * 128),
    "ramdisk < 1 MiB": make_offer(ramdisk_size=MIB - 1, data_size=MIB - 1),
    "data < 1 MiB": make_offer(data_size=MIB - 4096),
    "data > ramdisk": make_offer(ramdisk_size=2 * MIB, data_size=2 * MIB + CHUNK),
    "wrong checksum": make_offer(sha256=hashlib.sha256(b"another image").digest()),
}


@pytest.mark.parametrize("offer", BAD_OFFERS.values(), ids=BAD_OFFERS.keys())
def test_client_rejects_offer(offer: Offer) -> None:
    client = ClientSession(CLIENT, SHA)
    client.poll(0.0)
    client.receive(Frame(CLIENT, SRV[0], offer), 0.1)
    assert client.state is ClientState.DISCOVERY and client.server is None
    assert client.poll(4.2)  # keeps asking


def test_client_first_acceptable_offer_wins() -> None:
    client = ClientSession(CLIENT, SHA)
    client.poll(0.0)
    good1, good2 = make_offer(data_size=3 * MIB), make_offer(data_size=2 * MIB)
    client.receive(Frame(CLIENT, SRV[0], BAD_OFFERS["wrong checksum"]), 0.1)
    client.receive(Frame(CLIENT, SRV[1], good1), 0.1)
    client.receive(Frame(CLIENT, SRV[2], good2), 0.1)
    assert (client.server, client.offer) == (SRV[1], good1)
    assert client.state is ClientState.TRANSFER
    assert client.poll(0.2)[0].dst == SRV[1]


def test_client_discovery_ignores_other_traffic() -> None:
    client = ClientSession(CLIENT, SHA)
    client.poll(0.0)
    assert not client.receive(Frame(CLIENT2, SRV[0], make_offer()), 0.1)  # NIC filter
    assert not client.receive(Frame(CLIENT, SRV[0], Data(0, bytes(1024))), 0.1)
    assert not client.receive(Frame(CLIENT, SRV[0], Finished()), 0.1)
    assert client.state is ClientState.DISCOVERY
    client.receive(Frame(BROADCAST, SRV[0], make_offer()), 0.2)  # broadcast passes the NIC
    assert client.state is ClientState.TRANSFER


def test_client_first_read_is_whole_batch() -> None:
    client = accepted_client()
    first = one_read(client.poll(0.25))
    assert first == Read(128, FIRST_BATCH)
    assert client.next_offset == NETBOOT_ALIGN
    assert client.poll(0.5) == [] and client.poll(1.25) == []  # exactly 1 s: not yet
    assert client.retransmits == 0


def test_client_batches_only_when_all_slots_empty_and_retransmits_in_place() -> None:
    client = accepted_client()
    one_read(client.poll(0.0))
    answer(client, [o for o in FIRST_BATCH if o not in (17 * CHUNK, 90 * CHUNK)], 0.1)
    assert client.poll(0.5) == [] and client.next_offset == NETBOOT_ALIGN
    again = one_read(client.poll(1.01))
    assert again == Read.from_slots({17: 17 * CHUNK, 90: 90 * CHUNK})
    assert client.retransmits == 2
    answer(client, [17 * CHUNK], 1.1)
    assert client.poll(1.2) == []  # slot 90 still out: no new batch
    assert one_read(client.poll(2.02)) == Read.from_slots({90: 90 * CHUNK})
    answer(client, [90 * CHUNK], 2.1)
    batch2 = one_read(client.poll(2.15))
    assert batch2 == Read(128, tuple(NETBOOT_ALIGN + i * CHUNK for i in range(SLOTS)))
    assert client.retransmits == 3 and client.bytes_received == 128 * CHUNK


def test_client_lost_offset_zero_is_read_with_all_slots_zero() -> None:
    client = accepted_client()
    client.poll(0.0)
    answer(client, list(FIRST_BATCH[1:]), 0.1)
    read_frame = one_read(client.poll(1.1))
    assert read_frame == Read(1, (0,) * SLOTS)
    assert due_offsets(read_frame) == [0]


def test_client_retransmit_trigger_and_inclusion_differ() -> None:
    # The OS starts a READ for a slot older than 1 s, then includes every
    # slot at least 1 s old.
    client = accepted_client()
    client.poll(0.0)
    answer(client, list(FIRST_BATCH[3:]), 0.1)
    client.slot_sent[0], client.slot_sent[1], client.slot_sent[2] = 0.0, 0.5, 0.9
    assert client.poll(1.0) == []
    assert one_read(client.poll(1.5)) == Read.from_slots({0: 0, 1: CHUNK})
    assert client.slot_sent[:3].tolist() == [1.5, 1.5, 0.9]


def test_client_eof_by_zero_length_data_and_finished_once() -> None:
    size = MIB + 5
    client = accepted_client(make_offer(data_size=size))
    now = 0.0
    while client.state is ClientState.TRANSFER and now < 60:
        frames = client.poll(now)
        for frame in frames:
            if isinstance(frame.msg, Read):
                answer(client, due_offsets(frame.msg), now)
            else:
                assert frame == Frame(SRV[0], CLIENT, Finished())
        now += 0.05
    assert client.state is ClientState.DONE and client.eof
    assert client.ramdisk_len == client.next_offset == MIB + NETBOOT_ALIGN
    assert client.bytes_received == MIB + 26
    assert client.poll(now) == [] and client.poll(now + 10) == []


def test_client_eof_waits_for_outstanding_slots_and_stops_batching() -> None:
    client = accepted_client(make_offer(data_size=4 * MIB))
    client.poll(0.0)
    client.receive(Frame(CLIENT, SRV[0], Data(64 * CHUNK, b"")), 0.1, 60)  # short image
    assert client.eof
    answer(client, [o for o in FIRST_BATCH if o not in (64 * CHUNK, 100 * CHUNK)], 0.1)
    assert client.poll(0.2) == []
    assert one_read(client.poll(1.1)) == Read.from_slots({100: 100 * CHUNK})
    answer(client, [100 * CHUNK], 1.2)
    assert client.poll(1.3) == [Frame(SRV[0], CLIENT, Finished())]
    assert client.ramdisk_len == NETBOOT_ALIGN and client.state is ClientState.DONE


def test_client_data_matching() -> None:
    client = accepted_client()
    client.poll(0.0)
    assert client.receive(Frame(CLIENT, SRV[0], Data(CHUNK, bytes(1024))), 0.1)
    assert not client.receive(Frame(CLIENT, SRV[0], Data(CHUNK, bytes(1024))), 0.1)  # dup
    assert not client.receive(Frame(CLIENT, SRV[0], Data(500 * CHUNK, bytes(1024))), 0.1)
    assert not client.receive(Frame(CLIENT2, SRV[0], Data(2 * CHUNK, bytes(1024))), 0.1)
    assert client.dropped == 2 and client.bytes_received == 1024
    # The OS never checks who sent a DATA: any source fills the slot.
    assert client.receive(Frame(CLIENT, OTHER_SRV, Data(3 * CHUNK, bytes(1024))), 0.1)
    assert client.slot_busy[:4] == bytearray([1, 0, 1, 0])
    assert client.slot_offsets.typecode == "Q" and len(client.slot_offsets) == SLOTS
    assert client.slot_sent[1] == 0.0 and client.slot_sent[0] == 0.0


def test_client_on_data_empty_slot_quirk() -> None:
    # Empty OS slots hold 2**64-1, so DATA for that offset matches one.
    client = accepted_client()
    client.poll(0.0)
    answer(client, [0], 0.1)
    assert not client.on_data(2**64 - 1, 0)
    assert client.eof
    full = accepted_client()
    full.poll(0.0)
    assert not full.on_data(2**64 - 1, 0) and not full.eof  # no empty slot to match


def test_client_reset_from_any_source_in_any_live_state() -> None:
    client = ClientSession(CLIENT, SHA)
    client.receive(Frame(CLIENT, OTHER_SRV, Reset()), 0.0)
    assert client.state is ClientState.RESET
    assert client.poll(5.0) == []
    assert not client.receive(Frame(CLIENT, SRV[0], make_offer()), 5.0)
    assert client.state is ClientState.RESET
    transfer = accepted_client()
    transfer.poll(0.0)
    transfer.receive(Frame(CLIENT, SRV[0], Reset()), 0.1)
    assert transfer.state is ClientState.RESET and transfer.poll(2.0) == []
    other = accepted_client()
    other.receive(Frame(CLIENT2, SRV[0], Reset()), 0.1)  # not for this NIC
    assert other.state is ClientState.TRANSFER


def test_client_reset_after_done_is_ignored() -> None:
    client = accepted_client(make_offer(data_size=MIB, ramdisk_size=MIB))
    now = 0.0
    while client.state is ClientState.TRANSFER and now < 60:
        for frame in client.poll(now):
            if isinstance(frame.msg, Read):
                answer(client, due_offsets(frame.msg), now)
        now += 0.05
    client.receive(Frame(CLIENT, SRV[0], Reset()), now)
    assert client.state is ClientState.DONE


@pytest.mark.parametrize("n", [1, 5, 25])
def test_client_panics_on_padded_data(n: int) -> None:
    client = accepted_client()
    client.poll(0.0)
    frame = pack_frame(CLIENT, SRV[0], Data(CHUNK, b"x" * n))
    assert len(frame) < 60
    assert not client.receive(parse_frame(wire(frame)), 0.1, len(wire(frame)))
    assert client.state is ClientState.PANIC and "60 bytes" in (client.panic_reason or "")
    assert client.poll(5.0) == []


def test_client_padding_checks_only_matched_nonempty_data() -> None:
    client = accepted_client()
    client.poll(0.0)
    for msg in (Data(CHUNK, b""), Data(500 * CHUNK, b"x" * 5)):
        raw = wire(pack_frame(CLIENT, SRV[0], msg))
        assert not client.receive(parse_frame(raw), 0.1, len(raw))
    assert client.state is ClientState.TRANSFER and client.eof
    exact = pack_frame(CLIENT, SRV[0], Data(2 * CHUNK, b"x" * 26))
    assert len(exact) == 60 and client.receive(parse_frame(exact), 0.1, 60)
    # Without the received length the check cannot be made.
    assert client.receive(Frame(CLIENT, SRV[0], Data(3 * CHUNK, b"x")), 0.1)
    assert client.state is ClientState.TRANSFER


def test_client_panics_writing_past_the_ramdisk() -> None:
    size = MIB + 5  # ramdisk of 1 MiB + 4 KiB (whole pages)
    client = accepted_client(make_offer(ramdisk_size=size, data_size=size))
    assert client.ramdisk_capacity == MIB + 4096
    now = 0.0
    while client.next_offset < MIB:
        answer(client, due_offsets(one_read(client.poll(now))), now)
        now += 0.05
    client.poll(now)
    assert client.receive(Frame(CLIENT, SRV[0], Data(MIB + 3 * CHUNK, bytes(1024))), now)
    assert not client.receive(Frame(CLIENT, SRV[0], Data(MIB + 4 * CHUNK, bytes(1))), now)
    assert client.state is ClientState.PANIC and "write failure" in (client.panic_reason or "")


def test_client_panics_when_data_ran_past_its_last_offset() -> None:
    # A 1468-byte DATA in the last slot writes past next_offset: the OS
    # sends FINISHED, then fails to set the ramdisk length.
    client = accepted_client(make_offer(data_size=MIB))
    now = 0.0
    while client.state is ClientState.TRANSFER and now < 60:
        for frame in client.poll(now):
            if isinstance(frame.msg, Read):
                for offset in due_offsets(frame.msg):
                    n = 1468 if offset == MIB - CHUNK else 1024
                    client.receive(Frame(CLIENT, SRV[0], Data(offset, bytes(n))), now)
            else:
                assert isinstance(frame.msg, Finished)
        now += 0.05
    assert client.state is ClientState.PANIC
    assert client.panic_reason == "could not set final image length"


def test_client_verify_requires_done_and_constructor_checks() -> None:
    client = accepted_client()
    assert not client.verify(bytes(4 * MIB))
    with pytest.raises(ValueError):
        ClientSession(CLIENT, b"short")
    with pytest.raises(ValueError):
        ClientSession(b"\0" * 5, SHA)


def test_client_ramdisk_digest_pads_with_zeros() -> None:
    client = accepted_client()
    client.next_offset = 3 * NETBOOT_ALIGN
    expected = hashlib.sha256(b"abc" + bytes(3 * NETBOOT_ALIGN - 3)).digest()
    assert client.ramdisk_digest(b"abc") == expected
    assert client.ramdisk_digest(b"abc" + bytes(5 * NETBOOT_ALIGN)) == expected


# --- End to end: a BootServer and the OS client over a lossy wire ----------------


def padded_sha(image: bytes) -> bytes:
    return hashlib.sha256(image + bytes(-len(image) % NETBOOT_ALIGN)).digest()


def simulate(
    images: list[bytes],
    want: bytes,
    *,
    ramdisk_sizes: list[int] | None = None,
    sums: list[bytes] | None = None,
    loss: float = 0.0,
    seed: int = 0,
    pad_short_data: bool = True,
    restart_server_at: float | None = None,
) -> tuple[ClientSession, BootServer, bytearray, bool]:
    """Run one boot on a simulated clock (50 ms ticks, one tick of latency).

    Every frame crosses the wire packed, padded to 60 bytes like Ethernet,
    and parsed; ``loss`` drops frames at random in both directions. Returns
    the client, the server, the client's ramdisk and whether the server got
    the FINISHED.
    """
    rng = random.Random(seed)
    sizes = ramdisk_sizes or [max(len(i), MIB) for i in images]
    sums = sums or [hashlib.sha256(i).digest() for i in images]
    offers = [
        Offer(size, len(image), sha, encode_dataset(f"img{n}"))
        for n, (image, size, sha) in enumerate(zip(images, sizes, sums, strict=True))
    ]
    server = BootServer(offers, SRV[: len(images)], None)
    client = ClientSession(CLIENT, want)
    ramdisk = bytearray()
    in_flight: list[bytes] = []
    finished_delivered = False
    now = 0.0

    def to_client(frame: bytes) -> None:
        if rng.random() >= loss:
            in_flight.append(wire(frame))

    while client.state in (ClientState.DISCOVERY, ClientState.TRANSFER) and now < 900.0:
        if restart_server_at is not None and now >= restart_server_at:
            server, restart_server_at = BootServer(offers, SRV[: len(images)], None), None
        for frame in client.poll(now):
            if isinstance(frame.msg, Read):
                # The client's READ asks for exactly its due slots.
                due = [client.slot_offsets[i] for i in range(SLOTS) if client.slot_sent[i] == now]
                assert due_offsets(frame.msg) == due
            raw = wire(frame.pack())
            if rng.random() < loss:
                continue
            finished_delivered |= isinstance(frame.msg, Finished)
            for action in server.receive(parse_frame(raw), now):
                if isinstance(action, SendOffer | SendReset):
                    to_client(action.frame().pack())
                elif isinstance(action, ServeData):
                    image = images[action.image]
                    for offset in action.offsets:
                        if pad_short_data:
                            to_client(data_frame(action.dst, action.src, image, offset))
                        else:  # what a naive server would send
                            chunk = image[offset : offset + CHUNK]
                            to_client(pack_frame(action.dst, action.src, Data(offset, chunk)))
        now += 0.05
        arrived, in_flight = in_flight, []
        for raw in arrived:
            frame = parse_frame(raw)
            if client.receive(frame, now, len(raw)):
                if not ramdisk:
                    ramdisk = bytearray(client.ramdisk_capacity)
                msg = frame.msg
                assert isinstance(msg, Data)
                ramdisk[msg.offset : msg.offset + len(msg.payload)] = msg.payload
    return client, server, ramdisk, finished_delivered


def image_of(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.mark.parametrize("loss", [0.0, 0.08])
@pytest.mark.parametrize("size", [MIB, MIB + 5, 3 * MIB + 777])
def test_end_to_end(size: int, loss: float) -> None:
    image = image_of(size)
    client, server, ramdisk, finished_delivered = simulate(
        [image], hashlib.sha256(image).digest(), loss=loss, seed=size
    )
    assert client.state is ClientState.DONE
    assert bytes(ramdisk[:size]) == image
    assert client.ramdisk_len == -(-size // NETBOOT_ALIGN) * NETBOOT_ALIGN
    # What the OS hashes: the image, then zeros up to a 128 KiB boundary.
    assert client.ramdisk_digest(ramdisk) == padded_sha(image)
    # ... so only an image of a whole number of batches verifies.
    assert client.verify(ramdisk) is (size % NETBOOT_ALIGN == 0)
    session = server.sessions[CLIENT]
    assert session.finished is finished_delivered
    assert session.image == 0 and session.offsets_served >= -(-size // CHUNK)
    if loss:
        assert client.retransmits > 0 and session.retransmits > 0
    else:
        assert client.retransmits == 0 and session.retransmits == 0 and finished_delivered


@pytest.mark.parametrize("size", [MIB + 5, 3 * MIB + 777])
def test_end_to_end_unaligned_image_verifies_against_padded_sum(size: int) -> None:
    # With the sum taken over the padded image (and a ramdisk big enough to
    # hold the rounded length), the OS accepts an unaligned image.
    image = image_of(size, seed=2)
    want = padded_sha(image)
    client, _, ramdisk, _ = simulate(
        [image], want, sums=[want], ramdisk_sizes=[4 * MIB], loss=0.05, seed=3
    )
    assert client.state is ClientState.DONE and client.verify(ramdisk)
    # With a ramdisk only as large as the image, reading the rounded length
    # back fails whatever the sum says.
    tight, _, tight_disk, _ = simulate([image], want, sums=[want], seed=4)
    assert tight.state is ClientState.DONE and not tight.verify(tight_disk)


def test_end_to_end_picks_its_image_among_several() -> None:
    images = [image_of(MIB, seed=10), image_of(2 * MIB, seed=11), image_of(MIB, seed=12)]
    client, server, ramdisk, _ = simulate(
        images, hashlib.sha256(images[1]).digest(), loss=0.05, seed=5
    )
    assert client.state is ClientState.DONE and client.server == SRV[1]
    assert client.verify(ramdisk)
    assert server.sessions[CLIENT].image == 1


def test_end_to_end_unpadded_short_chunk_panics_the_client() -> None:
    image = image_of(MIB + 5)
    client, *_ = simulate([image], hashlib.sha256(image).digest(), pad_short_data=False)
    assert client.state is ClientState.PANIC
    assert client.panic_reason == "DATA frame is 60 bytes, len says 39"


def test_end_to_end_resumes_after_server_restart_with_one_image() -> None:
    image = image_of(2 * MIB)
    client, server, ramdisk, _ = simulate(
        [image], hashlib.sha256(image).digest(), loss=0.05, seed=6, restart_server_at=0.5
    )
    assert client.state is ClientState.DONE and client.verify(ramdisk)
    assert server.counters["resets"] == 0


def test_end_to_end_server_restart_with_several_images_resets() -> None:
    images = [image_of(2 * MIB, seed=20), image_of(MIB, seed=21)]
    client, server, *_ = simulate(images, hashlib.sha256(images[0]).digest(), restart_server_at=0.5)
    assert client.state is ClientState.RESET
    assert server.counters["resets"] == 1


def test_c_core_constants_are_checked_against_python() -> None:
    """The frame constants live on both sides of the C boundary; importing
    the protocol compares them, and a difference is an ImportError naming it."""
    from oxboot._native import check_constants, lib

    assert lib.OX_SLOTS == SLOTS and lib.OX_CHUNK == CHUNK and lib.OX_MAGIC == MAGIC
    check_constants({"SLOTS": SLOTS, "T_READ": MsgType.READ})
    with pytest.raises(ImportError, match=r"SLOTS = 0x81 here, 0x80 in C"):
        check_constants({"SLOTS": SLOTS + 1, "CHUNK": CHUNK})

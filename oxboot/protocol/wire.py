"""The wire format: constants, message dataclasses, frame parsing and packing.

Every frame is an Ethernet header (ethertype 0x1DE0), three big-endian u32
(magic, type, len) and ``len`` bytes of body (docs/protocol.md).
:func:`parse_frame` is strict and raises only :class:`FrameError`;
:func:`pack_frame` is its exact inverse.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from oxboot._native import check_constants

# --- Constants ---------------------------------------------------------------

ETHERTYPE = 0x1DE0
MAGIC = 0x1DE12345
BROADCAST = b"\xff" * 6
ETH_HLEN = 14
HDR_LEN = 12  # magic, type, len: big-endian u32 each


class MsgType(enum.IntEnum):
    """Message type codes (0x90xx client -> server, 0x91xx server -> client)."""

    HELLO = 0x9001
    OFFER = 0x9102
    READ = 0x9003
    DATA = 0x9104
    FINISHED = 0x9005
    RESET = 0x9106


CHUNK = 1024  # bytes the OS client asks for per offset
SLOTS = 128  # offsets per READ and per batch
READ_LEN = 8 + SLOTS * 8  # 1032: u64 noffsets + 128 u64 slots
DATASET_LEN = 128
OFFER_LEN = 8 + 8 + 32 + DATASET_LEN  # 176
MAX_DATA = 1468  # the OS drops DATA with len > 8 + 1468
MAX_HELLO = 1500
# A DATA payload of 1..25 bytes makes a frame shorter than Ethernet's 60-byte
# minimum; it arrives padded and the OS client panics on the length mismatch.
MIN_DATA_PAYLOAD = 26
HELLO_TEXT = b"Hello!  I'd like to buy a ramdisk please."
DATA_HDR_LEN = ETH_HLEN + HDR_LEN + 8  # 34

U64_MAX = (1 << 64) - 1

# The C core builds and parses the same frames (csrc/oxboot.h): its values
# are checked against these once, at import, so the two cannot drift apart.
check_constants({
    "ETHERTYPE": ETHERTYPE, "MAGIC": MAGIC, "ETH_HLEN": ETH_HLEN, "HDR_LEN": HDR_LEN,
    "DATA_HLEN": DATA_HDR_LEN, "CHUNK": CHUNK, "MAX_DATA": MAX_DATA,
    "MIN_DATA_PAYLOAD": MIN_DATA_PAYLOAD, "SLOTS": SLOTS, "READ_LEN": READ_LEN,
    **{f"T_{t.name}": t.value for t in MsgType},
})

_FRAME_HDR = struct.Struct("!6s6sHIII")  # dst, src, ethertype, magic, type, len
_OFFER = struct.Struct(f"!QQ32s{DATASET_LEN}s")
_READ = struct.Struct(f"!Q{SLOTS}Q")
_U64 = struct.Struct("!Q")
_ZERO_SLOTS = (0,) * SLOTS


# --- Messages ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """Client broadcast asking for offers; the OS sends :data:`HELLO_TEXT`."""

    text: bytes


@dataclass(frozen=True, slots=True)
class Offer:
    """An image on offer; ``dataset`` is the raw 128-byte NUL-padded field."""

    ramdisk_size: int
    data_size: int
    sha256: bytes
    dataset: bytes

    @property
    def dataset_name(self) -> str:
        """The dataset name up to its first NUL (undecodable bytes replaced)."""
        return self.dataset.split(b"\0", 1)[0].decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Read:
    """A request: each due offset sits in its own slot; other slots are 0."""

    noffsets: int
    slots: tuple[int, ...]

    @classmethod
    def from_slots(cls, slots: Mapping[int, int]) -> Read:
        """Build a READ the way the OS does: ``{slot index: offset}``."""
        row = [0] * SLOTS
        for index, offset in slots.items():
            row[index] = offset
        return cls(len(slots), tuple(row))


@dataclass(frozen=True, slots=True)
class Data:
    """Image bytes ``[offset, offset + len(payload))``; empty means EOF."""

    offset: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Finished:
    """Client is done (sent once, unacknowledged)."""


@dataclass(frozen=True, slots=True)
class Reset:
    """Server tells the client to start over (the OS panics and reboots)."""


Message = Hello | Offer | Read | Data | Finished | Reset


@dataclass(frozen=True, slots=True)
class Frame:
    """One Ethernet frame of this protocol: addresses plus a message."""

    dst: bytes
    src: bytes
    msg: Message

    def pack(self) -> bytes:
        """Shorthand for :func:`pack_frame`."""
        return pack_frame(self.dst, self.src, self.msg)


class FrameError(ValueError):
    """A received frame is not a valid frame of this protocol."""


# --- Wire format ---------------------------------------------------------------


def _as_bytes_view(buf: object) -> memoryview:
    try:
        view = memoryview(buf)  # type: ignore[arg-type]
        if view.ndim != 1 or view.format not in ("B", "b", "c") or not view.c_contiguous:
            # Exotic buffers (arrays of ints, strided views): take their raw bytes.
            view = memoryview(view.tobytes())
    except (TypeError, ValueError):
        raise FrameError("not a bytes-like object") from None
    return view


def parse_frame(buf: bytes | bytearray | memoryview) -> Frame:
    """Parse one received frame strictly; raises only :class:`FrameError`.

    Bytes past ``26 + len`` are accepted and ignored because short frames
    arrive with Ethernet padding; fewer bytes than ``len`` claims are not.
    """
    view = _as_bytes_view(buf)
    size = view.nbytes
    if size < ETH_HLEN + HDR_LEN:
        raise FrameError(f"frame too short ({size} bytes)")
    dst, src, ethertype, magic, code, length = _FRAME_HDR.unpack_from(view)
    if ethertype != ETHERTYPE:
        raise FrameError(f"wrong ethertype 0x{ethertype:04x}")
    if magic != MAGIC:
        raise FrameError(f"bad magic 0x{magic:08x}")
    try:
        kind = MsgType(code)
    except ValueError:
        raise FrameError(f"unknown type 0x{code:x}") from None

    if kind is MsgType.OFFER and length != OFFER_LEN:
        raise FrameError(f"OFFER len {length} != {OFFER_LEN}")
    if kind is MsgType.READ and length != READ_LEN:
        raise FrameError(f"READ len {length} != {READ_LEN}")
    if kind is MsgType.DATA and not 8 <= length <= 8 + MAX_DATA:
        raise FrameError(f"DATA len {length} outside 8..{8 + MAX_DATA}")
    if kind in (MsgType.FINISHED, MsgType.RESET) and length != 0:
        raise FrameError(f"{kind.name} len {length} != 0")
    if kind is MsgType.HELLO and length > MAX_HELLO:
        raise FrameError(f"HELLO len {length} > {MAX_HELLO}")
    start = ETH_HLEN + HDR_LEN
    if length > size - start:
        raise FrameError(f"truncated: len {length}, {size - start} bytes present")

    msg: Message
    if kind is MsgType.READ:
        noffsets, *slots = _READ.unpack_from(view, start)
        if noffsets > SLOTS:
            raise FrameError(f"READ noffsets {noffsets} > {SLOTS}")
        msg = Read(noffsets, tuple(slots))
    elif kind is MsgType.DATA:
        (offset,) = _U64.unpack_from(view, start)
        msg = Data(offset, bytes(view[start + 8 : start + length]))
    elif kind is MsgType.HELLO:
        msg = Hello(bytes(view[start : start + length]))
    elif kind is MsgType.OFFER:
        msg = Offer(*_OFFER.unpack_from(view, start))
    elif kind is MsgType.FINISHED:
        msg = Finished()
    else:
        msg = Reset()
    return Frame(dst, src, msg)


def check_mac(value: object, what: str) -> bytes:
    """``value`` as 6 bytes of a MAC address; TypeError or ValueError naming ``what``."""
    # bytes(6) would silently make a zero MAC out of an int: insist on bytes.
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    mac = bytes(value)
    if len(mac) != 6:
        raise ValueError(f"{what} must be 6 bytes, got {len(mac)}")
    return mac


def _u64(value: object, what: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= U64_MAX:
        raise ValueError(f"{what} must be an integer in 0..2**64-1, got {value!r}")
    return value


def _encode(msg: Message) -> tuple[MsgType, bytes]:
    match msg:
        case Hello(text):
            if len(text) > MAX_HELLO:
                raise ValueError(f"HELLO text longer than {MAX_HELLO} bytes")
            return MsgType.HELLO, bytes(text)
        case Offer(ramdisk_size, data_size, sha256, dataset):
            if len(sha256) != 32:
                raise ValueError("OFFER sha256 must be 32 bytes")
            if len(dataset) != DATASET_LEN:
                raise ValueError(f"OFFER dataset must be {DATASET_LEN} bytes")
            return MsgType.OFFER, _OFFER.pack(
                _u64(ramdisk_size, "ramdisk_size"),
                _u64(data_size, "data_size"),
                bytes(sha256),
                bytes(dataset),
            )
        case Read(noffsets, slots):
            if not isinstance(noffsets, int) or not 0 <= noffsets <= SLOTS:
                raise ValueError(f"READ noffsets must be in 0..{SLOTS}")
            if len(slots) != SLOTS:
                raise ValueError(f"READ needs exactly {SLOTS} slots")
            try:
                return MsgType.READ, _READ.pack(noffsets, *slots)
            except struct.error:
                for slot in slots:  # name the culprit
                    _u64(slot, "READ slot")
                raise ValueError("READ slots must be integers in 0..2**64-1") from None
        case Data(offset, payload):
            if len(payload) > MAX_DATA:
                raise ValueError(f"DATA payload longer than {MAX_DATA} bytes")
            return MsgType.DATA, _U64.pack(_u64(offset, "DATA offset")) + bytes(payload)
        case Finished():
            return MsgType.FINISHED, b""
        case Reset():
            return MsgType.RESET, b""
    raise TypeError(f"not a protocol message: {type(msg).__name__}")


def pack_frame(dst: bytes, src: bytes, msg: Message) -> bytes:
    """Encode a frame; the exact inverse of :func:`parse_frame` (no padding).

    Raises ValueError for out-of-range fields, TypeError for a non-message.
    """
    dst, src = check_mac(dst, "dst"), check_mac(src, "src")
    kind, payload = _encode(msg)
    return _FRAME_HDR.pack(dst, src, ETHERTYPE, MAGIC, kind, len(payload)) + payload


def encode_dataset(name: str | bytes) -> bytes:
    """The 128-byte OFFER dataset field: ``name`` NUL-padded, byte 127 zero."""
    raw = name.encode() if isinstance(name, str) else bytes(name)
    if len(raw) >= DATASET_LEN or b"\0" in raw:
        raise ValueError(f"dataset name must be < {DATASET_LEN} bytes without NUL")
    return raw.ljust(DATASET_LEN, b"\0")

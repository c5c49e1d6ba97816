"""Oxide network boot protocol (ethertype 0x1DE0), as a sans-I/O layer.

Nothing here touches a socket, a thread or a clock: callers feed frames in
and get decisions out, with the time passed as ``now`` (seconds, any epoch).
That keeps the wire format, the server's policy and a model of the OS client
testable in memory, and lets the I/O layer stay a thin loop.

* Wire format: :func:`parse_frame` / :func:`pack_frame`, frozen message
  dataclasses, :class:`FrameError`.
* Server helpers: :func:`due_offsets` (what one READ asks for),
  :func:`data_extent` / :func:`data_frame` (what one DATA carries).
* :class:`BootServer`: decides what to send; never sends.
* :class:`ClientSession`: the illumos client (``oxide_boot_net.c``) modelled
  turn for turn, including its quirks, so servers can be tested against it.
"""

from __future__ import annotations

import enum
import math
import struct
from array import array
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass

from oxboot._native import Sha256, check_constants
from oxboot.format import MIN_OFFER_SIZE

__all__ = [
    "ACTIVE_WINDOW",
    "BROADCAST",
    "CHUNK",
    "DATASET_LEN",
    "DATA_HDR_LEN",
    "DEFAULT_READ_RATE",
    "ETHERTYPE",
    "ETH_HLEN",
    "HDR_LEN",
    "HELLO_INTERVAL",
    "HELLO_TEXT",
    "MAGIC",
    "MAX_DATA",
    "MAX_HELLO",
    "MIN_DATA_PAYLOAD",
    "MIN_OFFER_SIZE",
    "NETBOOT_ALIGN",
    "OFFER_LEN",
    "READ_LEN",
    "RETRANSMIT_AFTER",
    "SLOTS",
    "Action",
    "BootServer",
    "ClientSession",
    "ClientState",
    "Data",
    "Finished",
    "Frame",
    "FrameError",
    "Hello",
    "Ignored",
    "Message",
    "MsgType",
    "Offer",
    "Read",
    "Reset",
    "SendOffer",
    "SendReset",
    "ServeData",
    "Session",
    "SessionFinished",
    "SessionStarted",
    "data_extent",
    "data_frame",
    "due_offsets",
    "encode_dataset",
    "offer_acceptable",
    "pack_frame",
    "parse_frame",
]

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
NETBOOT_ALIGN = SLOTS * CHUNK  # 131072: the OS hashes up to a batch boundary
HELLO_TEXT = b"Hello!  I'd like to buy a ramdisk please."
HELLO_INTERVAL = 4.0
RETRANSMIT_AFTER = 1.0
DATA_HDR_LEN = ETH_HLEN + HDR_LEN + 8  # 34
#: Frames per second one host may send a server by default (bootserver
#: --read-rate): an OS client sends one READ per 128 KiB batch, so this is
#: ~1 GB/s per sled before a single frame of it is refused.
DEFAULT_READ_RATE = 8000.0

_U64_MAX = (1 << 64) - 1
_PAGE_SIZE = 4096  # the OS rounds the ramdisk up to whole pages

# The C core builds and parses the same frames (csrc/oxboot.h): its values
# are checked against these once, at import, so the two cannot drift apart.
check_constants({
    "ETHERTYPE": ETHERTYPE, "MAGIC": MAGIC, "ETH_HLEN": ETH_HLEN, "HDR_LEN": HDR_LEN,
    "DATA_HLEN": DATA_HDR_LEN, "CHUNK": CHUNK, "MAX_DATA": MAX_DATA,
    "MIN_DATA_PAYLOAD": MIN_DATA_PAYLOAD, "SLOTS": SLOTS, "READ_LEN": READ_LEN,
    **{f"T_{t.name}": t.value for t in MsgType},
})


def ramdisk_capacity(ramdisk_size: int) -> int:
    """Size of the ramdisk the OS creates for an OFFER's ramdisk_size."""
    return -(-ramdisk_size // _PAGE_SIZE) * _PAGE_SIZE

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


def _mac(value: object, what: str) -> bytes:
    # bytes(6) would silently make a zero MAC out of an int: insist on bytes.
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    mac = bytes(value)
    if len(mac) != 6:
        raise ValueError(f"{what} must be 6 bytes, got {len(mac)}")
    return mac


def _u64(value: object, what: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= _U64_MAX:
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
    dst, src = _mac(dst, "dst"), _mac(src, "src")
    kind, payload = _encode(msg)
    return _FRAME_HDR.pack(dst, src, ETHERTYPE, MAGIC, kind, len(payload)) + payload


def encode_dataset(name: str | bytes) -> bytes:
    """The 128-byte OFFER dataset field: ``name`` NUL-padded, byte 127 zero."""
    raw = name.encode() if isinstance(name, str) else bytes(name)
    if len(raw) >= DATASET_LEN or b"\0" in raw:
        raise ValueError(f"dataset name must be < {DATASET_LEN} bytes without NUL")
    return raw.ljust(DATASET_LEN, b"\0")


# --- Protocol rules ------------------------------------------------------------


def offer_acceptable(offer: Offer, want_sha256: bytes) -> bool:
    """The OS client's acceptance rule for an OFFER (its len already checked)."""
    return (
        len(offer.dataset) == DATASET_LEN
        and offer.dataset[DATASET_LEN - 1] == 0
        and offer.ramdisk_size >= MIN_OFFER_SIZE
        and offer.data_size >= MIN_OFFER_SIZE
        and offer.data_size <= offer.ramdisk_size
        and offer.sha256 == want_sha256
    )


def due_offsets(read: Read) -> list[int]:
    """Offsets a server must answer for one READ, in slot order, each once.

    All 128 slots are scanned because the OS puts each due offset in its own
    slot index (after a loss, ``noffsets = 2`` may mean slots 17 and 90). A
    zero slot is ambiguous; offset 0 can only live in slot 0, and it is due
    exactly when fewer slots are non-zero than ``noffsets`` says.
    """
    nonzero = [slot for slot in read.slots if slot]
    due = list(dict.fromkeys(nonzero))
    if len(nonzero) < read.noffsets:
        due.insert(0, 0)
    return due


def data_extent(image_size: int, offset: int) -> tuple[int, int]:
    """(image bytes to send, payload length after zero padding) for ``offset``.

    Past the end nothing is sent (an EOF reply); a 1..25 byte tail is padded
    to :data:`MIN_DATA_PAYLOAD` so the frame needs no Ethernet padding.
    """
    if image_size < 0 or offset < 0:
        raise ValueError("image_size and offset must be >= 0")
    n = min(CHUNK, image_size - offset) if offset < image_size else 0
    return n, (MIN_DATA_PAYLOAD if 0 < n < MIN_DATA_PAYLOAD else n)


def data_frame(dst: bytes, src: bytes, image: bytes | bytearray | memoryview, offset: int) -> bytes:
    """The DATA frame a server sends for ``offset`` of raw ``image`` bytes."""
    n, length = data_extent(len(image), offset)
    chunk = bytes(image[offset : offset + n]) if n else b""
    return pack_frame(dst, src, Data(offset, chunk + bytes(length - n)))


# --- Server --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendOffer:
    """Transmit ``offer`` (image index ``image``) from ``src`` to ``dst``."""

    dst: bytes
    src: bytes
    image: int
    offer: Offer

    def frame(self) -> Frame:
        return Frame(self.dst, self.src, self.offer)


@dataclass(frozen=True, slots=True)
class ServeData:
    """Transmit one DATA frame per offset of image ``image`` (see data_frame)."""

    dst: bytes
    src: bytes
    image: int
    offsets: tuple[int, ...]

    def frames(self, image: bytes | bytearray | memoryview) -> Iterator[bytes]:
        """The packed DATA frames, given the raw image bytes."""
        for offset in self.offsets:
            yield data_frame(self.dst, self.src, image, offset)


@dataclass(frozen=True, slots=True)
class SendReset:
    """Transmit a RESET (the client panics and reboots)."""

    dst: bytes
    src: bytes

    def frame(self) -> Frame:
        return Frame(self.dst, self.src, Reset())


@dataclass(frozen=True, slots=True)
class SessionStarted:
    """First READ of a session (notification only)."""

    mac: bytes
    image: int


@dataclass(frozen=True, slots=True)
class SessionFinished:
    """FINISHED received (notification only, once per session)."""

    mac: bytes
    image: int


@dataclass(frozen=True, slots=True)
class Ignored:
    """A frame was dropped, and why (notification only)."""

    mac: bytes
    reason: str


Action = SendOffer | ServeData | SendReset | SessionStarted | SessionFinished | Ignored


@dataclass(slots=True)
class Session:
    """One host's boot, from its HELLO (or resumed READ) to FINISHED."""

    mac: bytes
    image: int | None  # None until the first READ names the image MAC
    started_at: float
    last_seen: float
    reads: int = 0
    offsets_served: int = 0
    retransmits: int = 0  # offsets requested again
    finished: bool = False
    high_water: int = 0  # end of the highest chunk requested so far


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float
    limited: bool = False


# An OS client mid-transfer sends a READ at least every second (that is its
# retransmission timer), so one silent for this long is stalled or gone.
ACTIVE_WINDOW = 5.0


class BootServer:
    """The boot server's decisions: frames in, :data:`Action` lists out.

    ``images[i]`` is offered from ``server_macs[i]``; because the client
    sends its READs to the MAC of the offer it accepted, the destination of
    a READ says which image that client took. ``allow=None`` serves any host.
    """

    def __init__(
        self,
        images: Sequence[Offer],
        server_macs: Sequence[bytes],
        allow: Collection[bytes] | None,
        *,
        read_rate: float = DEFAULT_READ_RATE,
        read_burst: int = 256,
        max_sessions: int = 1024,
        idle_timeout: float = 60.0,
    ) -> None:
        if not images or len(images) != len(server_macs):
            raise ValueError("need one server MAC per image, and at least one image")
        macs = tuple(_mac(m, "server MAC") for m in server_macs)
        if len(set(macs)) != len(macs):
            raise ValueError("server MACs must be distinct")
        if any(m[0] & 1 for m in macs):
            raise ValueError("server MACs must be unicast")
        for image, mac in zip(images, macs, strict=True):
            pack_frame(BROADCAST, mac, image)  # reject unsendable offers now
        if read_rate <= 0 or read_burst < 1 or max_sessions < 1 or idle_timeout <= 0:
            raise ValueError("rates, burst, max_sessions and idle_timeout must be > 0")
        self.images: tuple[Offer, ...] = tuple(images)
        self.server_macs: tuple[bytes, ...] = macs
        self.allow: frozenset[bytes] | None = (
            None if allow is None else frozenset(_mac(m, "allowed MAC") for m in allow)
        )
        self.read_rate = float(read_rate)
        self.read_burst = float(read_burst)
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        # Both dicts are kept in least-recently-seen-first order (touch = move
        # to end) so eviction scans from the front and usually stops at once.
        self.sessions: dict[bytes, Session] = {}
        self.counters: Counter[str] = Counter()
        self._image_of = {mac: i for i, mac in enumerate(macs)}
        self._buckets: dict[bytes, _Bucket] = {}
        self._max_buckets = max(4 * max_sessions, 64)

    # -- entry points --

    def receive(self, frame: Frame, now: float) -> list[Action]:
        """Decide what to do about one received frame."""
        self.counters["frames"] += 1
        src = frame.src
        if (refusal := self._refusal(src)) is not None:
            return self._ignore(src, refusal)
        match frame.msg:
            case Hello():
                return self._on_hello(frame, now)
            case Read() as read:
                return self._on_read(src, frame.dst, due_offsets(read), now)
            case Finished():
                return self._on_finished(frame, now)
        return self._ignore(src, f"{type(frame.msg).__name__.upper()} is not a client message")

    def receive_read(self, src: bytes, dst: bytes, offsets: list[int],
                     now: float) -> list[Action]:
        """A READ already reduced to its :func:`due_offsets` (the I/O layer's
        fast path does that in the C core); same decisions as :meth:`receive`."""
        self.counters["frames"] += 1
        if (refusal := self._refusal(src)) is not None:
            return self._ignore(src, refusal)
        return self._on_read(src, dst, offsets, now)

    def _refusal(self, src: bytes) -> str | None:
        """Why frames from `src` are not for us to answer, if they are not."""
        if src in self._image_of:
            # Our own transmissions come back on a packet socket.
            return "own frame"
        if not src or src[0] & 1:
            return "multicast source"
        if self.allow is not None and src not in self.allow:
            return "host not allowed"
        return None

    def receive_bytes(self, buf: bytes | bytearray | memoryview, now: float) -> list[Action]:
        """Parse then :meth:`receive`; a bad frame is counted and ignored."""
        try:
            frame = parse_frame(buf)
        except FrameError as err:
            self.counters["bad_frames"] += 1
            try:
                src = bytes(memoryview(buf).cast("B")[6:12])
            except (TypeError, ValueError):
                src = b""
            return [Ignored(src, f"bad frame: {err}")]
        return self.receive(frame, now)

    def expire(self, now: float) -> list[Session]:
        """Forget sessions idle for more than ``idle_timeout``; return them."""
        dead = [s for s in self.sessions.values() if now - s.last_seen > self.idle_timeout]
        for session in dead:
            del self.sessions[session.mac]
        self.counters["sessions_expired"] += len(dead)
        # A bucket idle long enough to be full again is the same as a new one.
        refill = self.read_burst / self.read_rate
        for mac in [m for m, b in self._buckets.items() if now - b.stamp >= refill]:
            del self._buckets[mac]
        return dead

    # -- message handlers --

    def _on_hello(self, frame: Frame, now: float) -> list[Action]:
        src = frame.src
        if frame.dst != BROADCAST and frame.dst not in self._image_of:
            return self._ignore(src, "HELLO not addressed to us")
        # Each HELLO costs len(images) OFFERs, so it is metered like a READ.
        if not self._take_token(src, now):
            return self._rate_limited(src)
        # A fresh HELLO means the sled rebooted: whatever it had is gone.
        self.sessions.pop(src, None)
        if self._new_session(src, now) is None:
            return self._ignore(src, "session table full")
        self.counters["offers"] += len(self.images)
        return [
            SendOffer(src, mac, i, offer)
            for i, (offer, mac) in enumerate(zip(self.images, self.server_macs, strict=True))
        ]

    def _on_read(self, src: bytes, dst: bytes, offsets: list[int], now: float) -> list[Action]:
        image = self._image_of.get(dst)
        if image is None:
            # Likely a READ for another boot server on the segment: not ours
            # to answer, and certainly not to RESET.
            return self._ignore(src, "READ not addressed to an image MAC")
        if not self._take_token(src, now):
            return self._rate_limited(src)

        actions: list[Action] = []
        session = self.sessions.get(src)
        if session is None:
            if len(self.images) != 1:
                # Several images and no HELLO seen: we cannot vouch for what
                # the client was offered, so make it start over.
                self.counters["resets"] += 1
                return [SendReset(src, dst)]
            # One image: the sled is resuming after a server restart.
            session = self._new_session(src, now)
            if session is None:
                return self._ignore(src, "session table full")
        self._touch(session, now)
        if session.finished:
            return self._ignore(src, "READ after FINISHED")
        if session.image is None:
            session.image = image
            actions.append(SessionStarted(src, image))
        elif session.image != image:
            del self.sessions[src]  # the client will panic and HELLO again
            self.counters["resets"] += 1
            return [SendReset(src, dst)]

        session.reads += 1
        self.counters["reads"] += 1
        if not offsets:
            return [*actions, *self._ignore(src, "READ with no offsets")]
        # The OS client's batches only move forward, so an offset below the
        # high-water mark is one it is asking for again.
        high = session.high_water
        again = 0 if min(offsets) >= high else sum(1 for offset in offsets if offset < high)
        session.high_water = max(high, max(offsets) + CHUNK)
        session.retransmits += again
        session.offsets_served += len(offsets)
        self.counters["offsets"] += len(offsets)
        self.counters["retransmits"] += again
        actions.append(ServeData(src, dst, image, tuple(offsets)))
        return actions

    def _on_finished(self, frame: Frame, now: float) -> list[Action]:
        src = frame.src
        image = self._image_of.get(frame.dst)
        if image is None:
            return self._ignore(src, "FINISHED not addressed to an image MAC")
        session = self.sessions.get(src)
        if session is None:
            return self._ignore(src, "FINISHED without a session")
        self._touch(session, now)
        if session.finished:
            return self._ignore(src, "duplicate FINISHED")
        if session.image != image:
            return self._ignore(src, "FINISHED for another image")
        session.finished = True
        self.counters["finished"] += 1
        return [SessionFinished(src, image)]

    # -- bookkeeping --

    def _ignore(self, mac: bytes, reason: str) -> list[Action]:
        self.counters["ignored"] += 1
        return [Ignored(mac, reason)]

    def _rate_limited(self, mac: bytes) -> list[Action]:
        self.counters["rate_limited"] += 1
        bucket = self._buckets[mac]
        if bucket.limited:
            return []  # report a flood once, not once per frame
        bucket.limited = True
        return [Ignored(mac, "rate limited")]

    def _take_token(self, mac: bytes, now: float) -> bool:
        bucket = self._buckets.pop(mac, None)
        if bucket is None:
            if len(self._buckets) >= self._max_buckets:
                del self._buckets[next(iter(self._buckets))]
            bucket = _Bucket(self.read_burst, now)
        else:
            elapsed = max(0.0, now - bucket.stamp)  # tolerate a clock step back
            bucket.tokens = min(self.read_burst, bucket.tokens + elapsed * self.read_rate)
            bucket.stamp = max(bucket.stamp, now)
        self._buckets[mac] = bucket
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        bucket.limited = False
        return True

    def _touch(self, session: Session, now: float) -> None:
        session.last_seen = now
        self.sessions[session.mac] = self.sessions.pop(session.mac)

    def _new_session(self, mac: bytes, now: float) -> Session | None:
        if len(self.sessions) >= self.max_sessions and not self._evict(now):
            self.counters["sessions_full"] += 1
            return None
        session = Session(mac, None, now, now)
        self.sessions[mac] = session
        self.counters["sessions"] += 1
        return session

    def _evict(self, now: float) -> bool:
        # Least recently seen first, but only finished or idle sessions: a
        # newcomer retries its HELLO every 4 s, whereas evicting a transfer
        # in progress would cost that sled its boot.
        for mac, s in self.sessions.items():
            if s.finished or s.image is None or now - s.last_seen > ACTIVE_WINDOW:
                del self.sessions[mac]
                self.counters["sessions_evicted"] += 1
                return True
        return False


# --- Client model --------------------------------------------------------------


class ClientState(enum.Enum):
    """Where a :class:`ClientSession` is; RESET and PANIC are where the OS panics."""

    DISCOVERY = "discovery"
    TRANSFER = "transfer"
    DONE = "done"
    RESET = "reset"
    PANIC = "panic"


_ALL_SLOTS = b"\x01" * SLOTS


class ClientSession:
    """The OS network-boot client (``oxide_boot_net.c``), modelled exactly.

    Call :meth:`poll` at least every 50 ms (the OS loop's tick) and after
    feeding frames to :meth:`receive`. Quirks of the OS kept on purpose,
    because a server must survive them: OFFER, DATA and RESET are taken from
    any source (it never checks who sent them), and a DATA frame whose bytes
    do not match its ``len`` makes it panic.

    Slot state lives in plain buffers (``slot_offsets``, ``slot_busy``,
    ``slot_sent``) so a C fast path can share it.
    """

    def __init__(self, mac: bytes, want_sha256: bytes) -> None:
        self.mac = _mac(mac, "mac")
        if len(want_sha256) != 32:
            raise ValueError("want_sha256 must be 32 bytes")
        self.want_sha256 = bytes(want_sha256)
        self._state = ClientState.DISCOVERY
        self.server: bytes | None = None
        self.offer: Offer | None = None
        self.slot_offsets = array("Q", bytes(8 * SLOTS))
        self.slot_busy = bytearray(SLOTS)
        self.slot_sent = array("d", [-math.inf]) * SLOTS  # time.monotonic() seconds
        self.next_offset = 0
        self.eof = False
        self.bytes_received = 0
        self.write_extent = 0  # furthest byte written; the OS checks it at the end
        self.retransmits = 0
        self.dropped = 0  # DATA for offsets not outstanding
        self.last_hello: float | None = None
        self.panic_reason: str | None = None

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def ramdisk_len(self) -> int:
        """Length the OS hashes: its next offset, a multiple of 131072."""
        return self.next_offset

    @property
    def ramdisk_capacity(self) -> int:
        """Size of the ramdisk the OS creates for the accepted offer."""
        return 0 if self.offer is None else ramdisk_capacity(self.offer.ramdisk_size)

    def poll(self, now: float) -> list[Frame]:
        """Frames the client sends at time ``now``."""
        if self._state is ClientState.DISCOVERY:
            if self.last_hello is None or now - self.last_hello > HELLO_INTERVAL:
                self.last_hello = now
                return [Frame(BROADCAST, self.mac, Hello(HELLO_TEXT))]
            return []
        if self._state is not ClientState.TRANSFER:
            return []
        assert self.offer is not None and self.server is not None
        busy, offsets, sent = self.slot_busy, self.slot_offsets, self.slot_sent
        empty = not any(busy)
        past_end = self.eof or self.next_offset >= self.offer.data_size
        if empty and past_end:
            self._state = ClientState.DONE
            finished = [Frame(self.server, self.mac, Finished())]
            # The OS sends FINISHED, then sets the ramdisk length to its next
            # offset, which fails if a DATA wrote beyond it.
            if self.write_extent > self.next_offset:
                self._panic("could not set final image length")
            return finished
        if empty:
            # A new batch only once every slot is empty, even past the end.
            base = self.next_offset
            if base + SLOTS * CHUNK <= _U64_MAX:
                # All of it due at once: one READ naming every slot (the
                # loops below, in bulk; this runs once per 128 KiB).
                offsets[:] = array("Q", range(base, base + SLOTS * CHUNK, CHUNK))
                busy[:] = _ALL_SLOTS
                sent[:] = array("d", [now]) * SLOTS
                self.next_offset = base + SLOTS * CHUNK
                return [Frame(self.server, self.mac, Read(SLOTS, tuple(offsets)))]
            for i in range(SLOTS):
                offsets[i] = self.next_offset & _U64_MAX
                busy[i] = 1
                sent[i] = -math.inf
                self.next_offset += CHUNK
        # Sending is triggered by a slot older than 1 s but then includes
        # slots exactly 1 s old: two comparisons in the OS, kept as they are.
        if not any(busy[i] and now - sent[i] > RETRANSMIT_AFTER for i in range(SLOTS)):
            return []
        row = [0] * SLOTS
        count = 0
        for i in range(SLOTS):
            if busy[i] and now - sent[i] >= RETRANSMIT_AFTER:
                if sent[i] != -math.inf:
                    self.retransmits += 1
                sent[i] = now
                row[i] = offsets[i]
                count += 1
        return [Frame(self.server, self.mac, Read(count, tuple(row)))]

    def receive(self, frame: Frame, now: float, frame_len: int | None = None) -> bool:
        """Take one frame; True means: write ``frame.msg.payload`` at its offset.

        ``frame_len`` is the length of the frame as received (with any
        Ethernet padding); without it the OS's length check is skipped.
        """
        del now  # the OS acts on received frames without looking at the time
        if self._state not in (ClientState.DISCOVERY, ClientState.TRANSFER):
            return False
        if frame.dst not in (self.mac, BROADCAST):
            return False  # the NIC filters these out
        msg = frame.msg
        if isinstance(msg, Reset):
            self._state = ClientState.RESET
            return False
        if self._state is ClientState.DISCOVERY:
            if isinstance(msg, Offer) and offer_acceptable(msg, self.want_sha256):
                self.offer = msg
                self.server = frame.src
                self._state = ClientState.TRANSFER
            return False
        if not isinstance(msg, Data):
            return False
        n = len(msg.payload)
        if not self.on_data(msg.offset, n):
            return False
        # The OS checks the length only for a matched, non-empty DATA, so a
        # padded EOF reply (34 bytes -> 60 on the wire) is harmless.
        if frame_len is not None and frame_len != DATA_HDR_LEN + n:
            self._panic(f"DATA frame is {frame_len} bytes, len says {DATA_HDR_LEN + n}")
            return False
        if msg.offset + n > self.ramdisk_capacity:
            self._panic(f"write failure pos {msg.offset}")
            return False
        return True

    def on_data(self, offset: int, n: int) -> bool:
        """Match a DATA against the slots; True means write the payload.

        The single place of slot matching (a C fast path mirrors it). The OS
        marks an empty slot with offset 2**64-1, so a DATA for that offset
        "matches" any empty slot; that quirk is kept.
        """
        busy, offsets = self.slot_busy, self.slot_offsets
        for i in range(SLOTS):
            if (offsets[i] == offset) if busy[i] else (offset == _U64_MAX):
                busy[i] = 0
                if n == 0:
                    self.eof = True  # still waits for the other slots
                    return False
                self.bytes_received += n
                self.write_extent = max(self.write_extent, offset + n)
                return True
        self.dropped += 1
        return False

    def ramdisk_digest(self, ramdisk: bytes | bytearray | memoryview) -> bytes:
        """SHA-256 of ``ramdisk[:ramdisk_len]``, zeros past the buffer's end."""
        view = memoryview(ramdisk).cast("B")
        have = min(len(view), self.ramdisk_len)
        # The C core's SHA-256: 30% faster than hashlib's on a ramdisk that
        # has left the CPU caches (see ox_sha256_update).
        digest = Sha256()
        digest.update(view[:have])
        remaining = self.ramdisk_len - have
        zeros = memoryview(bytes(min(remaining, NETBOOT_ALIGN)))
        while remaining:
            step = min(remaining, len(zeros))
            digest.update(zeros[:step])
            remaining -= step
        return digest.digest()

    def verify(self, ramdisk: bytes | bytearray | memoryview) -> bool:
        """The OS's final integrity check of the ramdisk."""
        if self._state is not ClientState.DONE:
            return False
        # It reads ramdisk_len bytes back; past the ramdisk that read fails.
        if self.ramdisk_len > self.ramdisk_capacity:
            return False
        return self.ramdisk_digest(ramdisk) == self.want_sha256

    def _panic(self, reason: str) -> None:
        self._state = ClientState.PANIC
        self.panic_reason = reason

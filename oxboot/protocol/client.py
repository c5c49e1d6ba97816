"""A model of the OS network-boot client (:class:`ClientSession`).

The illumos client (``oxide_boot_net.c``) turn for turn, with its quirks,
so servers can be tested against it; the sled emulator (:mod:`oxboot.sled`)
runs it over a real link.
"""

from __future__ import annotations

import enum
import math
from array import array

from oxboot._native import Sha256
from oxboot.format import NETBOOT_ALIGN
from oxboot.protocol.rules import (
    HELLO_INTERVAL,
    RETRANSMIT_AFTER,
    offer_acceptable,
    ramdisk_capacity,
)
from oxboot.protocol.wire import (
    BROADCAST,
    CHUNK,
    DATA_HDR_LEN,
    HELLO_TEXT,
    SLOTS,
    U64_MAX,
    Data,
    Finished,
    Frame,
    Hello,
    Offer,
    Read,
    Reset,
    check_mac,
)


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
        self.mac = check_mac(mac, "mac")
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
        # DATA for offsets not outstanding: the OS prints "dropped data
        # packet for offset N" on its console for each (a duplicate, mostly).
        self.dropped = 0
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
            if base + SLOTS * CHUNK <= U64_MAX:
                # All of it due at once: one READ naming every slot (the
                # loops below, in bulk; this runs once per 128 KiB).
                offsets[:] = array("Q", range(base, base + SLOTS * CHUNK, CHUNK))
                busy[:] = _ALL_SLOTS
                sent[:] = array("d", [now]) * SLOTS
                self.next_offset = base + SLOTS * CHUNK
                return [Frame(self.server, self.mac, Read(SLOTS, tuple(offsets)))]
            for i in range(SLOTS):
                offsets[i] = self.next_offset & U64_MAX
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
            if (offsets[i] == offset) if busy[i] else (offset == U64_MAX):
                busy[i] = 0
                if n == 0:
                    self.eof = True  # still waits for the other slots
                    return False
                self.bytes_received += n
                self.write_extent = max(self.write_extent, offset + n)
                return True
        self.dropped += 1
        return False

    def absorb_fast_path(self, *, received: int, extent: int, eof: bool,
                         next_offset: int | None = None, dropped: int = 0) -> None:
        """Take in what a C fast path did with this session's slot buffers:
        ``received`` more payload bytes written, up to ``extent``, the EOF
        reply seen, (when it started batches itself) its next offset, and
        ``dropped`` more DATA for no outstanding slot."""
        if received < 0 or dropped < 0 or \
                (next_offset is not None and next_offset < self.next_offset):
            raise ValueError("a fast path only moves a session forward")
        self.bytes_received += received
        self.dropped += dropped
        self.write_extent = max(self.write_extent, extent)
        self.eof = self.eof or eof
        if next_offset is not None:
            self.next_offset = next_offset

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

"""One receive path of the boot server: a raw socket drained in C.

Each :class:`Receiver` owns a receive socket (one member of a
``PACKET_FANOUT`` group split by source MAC, when there are several), a
per-source policer and, on the fast path, a session table with which the C
core answers the READs of established sessions itself, sending the DATA on
its transmit worker's socket with the GIL released. A sled's frames always
reach the same receiver, so its session, its bucket and its DATA stay on
one worker and one core.

The C state of a receiver is only ever touched by the thread that runs it
(its *owner*); other threads ask for a session to be dropped and it is done
before the owner's next drain, and read counters from snapshots the owner
takes.
"""

from __future__ import annotations

import errno
import math
import threading
import time
from dataclasses import dataclass

from oxboot._native import ffi, lib
from oxboot.errors import BootError
from oxboot.link import MAX_BLOCKED, RawLink
from oxboot.protocol import CHUNK, NETBOOT_ALIGN
from oxboot.protocol.repair import (
    REPAIR_FIRST_WAIT_NS,
    REPAIR_MARGIN_NS,
    REPAIR_MAX_WAIT_NS,
    REPAIR_MIN_WAIT_NS,
)
from oxboot.serve.txworkers import Mapped, TxWorker

#: Sessions whose READs the C core answers without Python, per receiver.
FAST_SESSIONS = 4096
RX_SLOT = 2048  # bytes per received frame kept (a READ is 1058)
RX_KEEP = 64  # frames kept per drain: back to the socket before it overflows
RX_DRAIN = 1 << 20  # frames read per drain at most: in effect, until the socket is empty
#: Each source's bucket holds this many frames (its rate is the server's --read-rate).
READ_BURST = 512
POLICED_SOURCES = 4096
#: READs/s per source above which no source is ever taken for a flood (by
#: either of the policer's rules, so never blocked): 128 frames each, more
#: than a 100 Gbit/s link carries (benchmarks use it to measure capacity
#: with clients that never wait for their DATA). Frames over the rate are
#: still dropped one by one.
UNLIMITED_READ_RATE = 100_000

#: Overdue READs taken from the C core per call (the rest on the next).
OVERDUE_BATCH = 64

POLICE_FIELDS = ("frames", "accepted", "foreign", "policed", "flagged", "served")
TOTAL_FIELDS = ("reads", "offsets", "retransmits", "repeats", "frames", "bytes", "syscalls",
                "errors")


@dataclass
class FastProgress:
    """What the C core did for one sled since it took over its READs."""

    last_seen: float  # monotonic seconds of its last READ answered in C (0: none)
    high: int  # end of the furthest chunk sent
    frames: int  # DATA frames sent
    reads: int = 0  # READs answered
    offsets: int = 0  # offsets they asked for
    retransmits: int = 0  # of them, asked again (below the high-water mark)
    repeats: int = 0  # READs that asked again for at least one offset
    bytes: int = 0  # DATA frame bytes sent (headers included)


@dataclass
class Overdue:
    """A READ answered in C after which the sled's next READ is overdue."""

    sled: bytes
    offsets: tuple[int, ...]
    read_at: float  # monotonic seconds
    wait: float  # seconds after it at which it was overdue


class Receiver:
    """A receive socket drained in C, its policer and (fast path) sessions."""

    def __init__(self, link: RawLink, tx: TxWorker, read_rate: float, fast: bool,
                 repair: bool = False) -> None:
        self.link = link
        self.tx = tx
        self._police = self._new_policer(read_rate)
        self._new_rate: float | None = None
        self._buf = ffi.new(f"uint8_t[{RX_KEEP * RX_SLOT}]")
        self._view = ffi.buffer(self._buf)
        self._lens = ffi.new(f"uint32_t[{RX_KEEP}]")
        self._pstats = ffi.new("ox_police_stats *")
        self._flagged_seen = 0
        self._flagbuf = ffi.new(f"uint8_t[{6 * MAX_BLOCKED}]")
        self._table = ffi.NULL
        self._tx_fd = -1
        if fast:
            table = lib.ox_serve_new(FAST_SESSIONS)
            if table == ffi.NULL:
                raise BootError("cannot allocate the session table")
            self._table = ffi.gc(table, lib.ox_serve_free)
            self._tx_fd, ring = tx.link.tx_ring()
            if ring != ffi.NULL:
                lib.ox_serve_use_ring(table, ring)
            xsk = tx.link.tx_xsk()
            if xsk != ffi.NULL:
                lib.ox_serve_use_xsk(table, xsk)
            if repair:
                # The C core times its READs as protocol.repair's RoundTrip
                # does; the protocol layer decides what an overdue one gets.
                params = ffi.new("ox_repair_params *", {
                    "first_ns": REPAIR_FIRST_WAIT_NS, "min_ns": REPAIR_MIN_WAIT_NS,
                    "max_ns": REPAIR_MAX_WAIT_NS, "margin_ns": REPAIR_MARGIN_NS})
                if lib.ox_serve_repair(table, params) != 0:
                    raise BootError("bad repair parameters")
        self._overdue = ffi.new(f"ox_serve_overdue_rec[{OVERDUE_BATCH}]")
        self._info = ffi.new("ox_serve_info *")
        self._totals = ffi.new("ox_serve_totals *")
        # The sleds whose READs the C core answers, each with the image it
        # serves them: kept here until the C table lets go of its pointer
        # (a drop asked from another thread waits for the owner's next
        # drain), so that no mapping is freed under the C core.
        self.fast_macs: dict[bytes, Mapped] = {}
        self._drops: list[bytes] = []
        self._lock = threading.Lock()  # _drops and the sock_* counters
        self.owner = threading.get_ident()
        # Counters as of the owner's last snapshot (read by any thread).
        self.police_counts: dict[str, int] = dict.fromkeys(POLICE_FIELDS, 0)
        self.totals: dict[str, int] = dict.fromkeys(TOTAL_FIELDS, 0)
        self.sock_packets = self.sock_drops = 0
        self.last_errno = 0
        self.errors_reported = 0  # transmit errors the server has logged

    @staticmethod
    def _new_policer(read_rate: float) -> object:
        police = lib.ox_police_new(read_rate, float(READ_BURST), POLICED_SOURCES)
        if police == ffi.NULL:
            raise BootError("cannot allocate the receive policer")
        lib.ox_police_flagging(police, read_rate <= UNLIMITED_READ_RATE)
        return ffi.gc(police, lib.ox_police_free)

    def set_read_rate(self, read_rate: float) -> None:
        """Police each source at `read_rate` from the owner's next drain on
        (a new policer: every source starts with a full bucket)."""
        self._new_rate = read_rate

    @property
    def fast(self) -> bool:
        return self._table != ffi.NULL

    def receive(self, timeout: float = 0.0, spin: float = 0.0,
                wake_fd: int = -1) -> list[memoryview]:
        """Frames that passed the policer and were not READs the C core
        answered, waiting up to `timeout` seconds for some (or for a source
        flagged, a signal, `wake_fd` readable), polling without sleeping for
        `spin` seconds after each READ answered; owner only."""
        if self._drops:
            self._apply_drops()
        if self._new_rate is not None:
            self._police, self._new_rate = self._new_policer(self._new_rate), None
        n = lib.ox_rx_serve_wait(self.link.fileno(), self._police, self._table, self._tx_fd,
                                 self._buf, RX_SLOT, self._lens, RX_KEEP, RX_DRAIN,
                                 self._pstats, int(spin * 1e9), math.ceil(timeout * 1000),
                                 wake_fd)
        if n < 0:
            if ffi.errno == errno.ENETDOWN:
                # The link was set down: the socket is told once, and gets
                # frames again when it comes back up. The server rides it
                # out (its /healthz says the link is down meanwhile).
                return []
            raise OSError(ffi.errno, f"{self.link.ifname}: receive failed")
        view, lens = self._view, self._lens
        return [view[i * RX_SLOT:i * RX_SLOT + lens[i]] for i in range(n)]

    def flagged(self) -> list[bytes]:
        """Sources the policer found flooding since the last call; owner only."""
        if self._pstats.flagged == self._flagged_seen:
            return []
        self._flagged_seen = self._pstats.flagged
        n = lib.ox_police_flagged(self._police, self._flagbuf, MAX_BLOCKED)
        flat = bytes(ffi.buffer(self._flagbuf, 6 * n))
        return [flat[i:i + 6] for i in range(0, len(flat), 6)]

    def serve(self, sled: bytes, image_mac: bytes, image: Mapped, high: int) -> bool:
        """Answer `sled`'s READs to `image_mac` in C from now on, from
        `image` (kept alive until dropped); owner only."""
        if not self.fast or sled in self.fast_macs:
            return False
        if lib.ox_serve_set(self._table, sled, image_mac, image.ptr, image.size, high) != 0:
            return False  # table full: the Python path serves it
        self.fast_macs[sled] = image
        return True

    def drop(self, sled: bytes) -> None:
        """Stop answering `sled` in C (at once on the owner, else before its
        next drain)."""
        if sled not in self.fast_macs:
            return
        if threading.get_ident() == self.owner:
            lib.ox_serve_drop(self._table, sled)
            del self.fast_macs[sled]
        else:
            with self._lock:
                self._drops.append(sled)

    def _apply_drops(self) -> None:
        with self._lock:
            drops, self._drops = self._drops, []
        for sled in drops:
            lib.ox_serve_drop(self._table, sled)
            self.fast_macs.pop(sled, None)

    def progress(self, sled: bytes) -> FastProgress | None:
        """The C core's record of `sled`; owner only."""
        if sled not in self.fast_macs or lib.ox_serve_get(self._table, sled, self._info) != 1:
            return None
        info = self._info
        return FastProgress(info.last_ns / 1e9, int(info.high), int(info.frames),
                            int(info.reads), int(info.offsets), int(info.retransmits),
                            int(info.repeats), int(info.bytes))

    def repair_due(self) -> bool:
        """Whether a READ answered in C may be overdue now (cheap)."""
        if not self.fast:
            return False
        wake = lib.ox_serve_wake(self._table)
        return wake != 0 and wake <= time.monotonic_ns()

    def overdue(self) -> list[Overdue]:
        """The READs answered in C that are overdue now, each reported once
        (the C core stops timing it); owner only."""
        if not self.fast:
            return []
        out: list[Overdue] = []
        while True:
            n = lib.ox_serve_overdue(self._table, time.monotonic_ns(), self._overdue,
                                     OVERDUE_BATCH)
            for rec in self._overdue[0:max(n, 0)]:
                mask = int(rec.mask[0]) | int(rec.mask[1]) << 64
                base = int(rec.base)
                offsets = tuple(base + i * CHUNK for i in range(NETBOOT_ALIGN // CHUNK)
                                if mask >> i & 1)
                out.append(Overdue(bytes(ffi.buffer(rec.sled, 6)), offsets,
                                   rec.read_ns / 1e9, rec.wait_ns / 1e9))
            if n < OVERDUE_BATCH:
                return out

    def resent(self, sled: bytes) -> None:
        """The DATA of `sled`'s overdue READ went again just now; owner only."""
        if sled in self.fast_macs:
            lib.ox_serve_resent(self._table, sled, time.monotonic_ns())

    def snapshot(self) -> None:
        """Copy the C counters for other threads to read; owner only."""
        p = self._pstats
        self.police_counts = {k: int(getattr(p, k)) for k in POLICE_FIELDS}
        with self._lock:
            self.sock_packets += int(p.sock_packets)
            self.sock_drops += int(p.sock_drops)
        p.sock_packets = p.sock_drops = 0
        if self.fast:
            lib.ox_serve_totals_get(self._table, self._totals)
            t = self._totals
            self.totals = {k: int(getattr(t, k)) for k in TOTAL_FIELDS}
            self.last_errno = int(t.last_errno)

    def rx_stats(self) -> tuple[int, int]:
        """(frames received, frames dropped for a full queue) since the last
        call, whoever read the kernel's counters (they reset on read)."""
        packets, drops = self.link.rx_stats()
        with self._lock:
            packets += self.sock_packets
            drops += self.sock_drops
            self.sock_packets = self.sock_drops = 0
        return packets, drops

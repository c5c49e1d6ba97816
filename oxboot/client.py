"""The sled emulator's I/O loop around :class:`~oxboot.protocol.ClientSession`.

The session decides (exactly as the OS client does); this loop sends what
it asks for and feeds it what arrives. During the transfer, DATA frames are
drained and landed in the ramdisk by the C core, which mirrors
:meth:`ClientSession.on_data`: read in place from a PACKET_RX_RING
(``ox_rxring_data_wait``) or, with ``receive="recvmmsg"`` or where no ring
can be set up, with recvmmsg (``ox_rx_data_wait``). Every other frame goes
through the session in Python.
"""

from __future__ import annotations

import math
import mmap
import select
import time
from collections.abc import Callable
from dataclasses import dataclass

from oxboot._native import ffi, lib
from oxboot.fsutil import AtomicFile
from oxboot.link import MAX_FRAME, RawLink
from oxboot.protocol import (
    CHUNK,
    SLOTS,
    ClientSession,
    ClientState,
    FrameError,
    parse_frame,
    ramdisk_capacity,
)

TICK = 0.05  # the OS client's loop wakes at least this often
#: How the emulator receives DATA (see the module docstring).
RECEIVE_METHODS = ("ring", "recvmmsg")
#: Ring slots (2 KiB each): 32 READs' worth of DATA, 8 MiB.
RXRING_FRAMES = 4096


@dataclass
class NetbootResult:
    state: ClientState
    verified: bool
    image_size: int
    ramdisk_len: int
    seconds: float  # from the accepted OFFER to FINISHED
    total_seconds: float  # from the first HELLO
    retransmits: int
    frames: int
    server: str | None
    reason: str | None = None

    @property
    def mbps(self) -> float:
        return self.image_size / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "state": self.state.value, "verified": self.verified,
            "image_size": self.image_size, "ramdisk_len": self.ramdisk_len,
            "seconds": round(self.seconds, 4), "total_seconds": round(self.total_seconds, 4),
            "mbps": round(self.mbps, 2), "retransmits": self.retransmits,
            "frames": self.frames, "server": self.server, "reason": self.reason,
        }


def netboot(ifname: str, want_sha256: bytes, *, timeout: float | None = None,
            save: str | None = None,
            on_progress: Callable[[ClientSession, float], None] | None = None,
            receive: str = "ring",
            expect: tuple[int, int] | None = None) -> NetbootResult:
    """Boot like a sled on `ifname`: discover, fetch, verify; optionally save
    the raw image. Returns when the boot is done, reset, panicked or timed out.

    `expect` = (ramdisk_size, data_size) of the image the sled will be
    offered, when known: its RAM is then made and faulted in before the
    first HELLO, as a real sled's memory is there before it boots, so that
    the transfer measures the server and the link rather than this
    emulator's page faults (1-7 us per 4 KiB page on a virtual machine).
    An OFFER of other sizes gets fresh RAM as usual.
    """
    if receive not in RECEIVE_METHODS:
        raise ValueError(f"unknown receive method {receive!r}")
    ready = _prepared_ramdisk(*expect) if expect is not None else None
    link = RawLink(ifname)
    try:
        return _run(link, want_sha256, timeout, save, on_progress, receive == "ring", ready)
    finally:
        link.close()
        if ready is not None and not ready.closed:
            ready.close()


def _ramdisk(size: int) -> mmap.mmap:
    """The sled's RAM for the image: lazily zero-filled, so only what DATA
    lands on costs memory. Private: a shared anonymous mapping is shmem,
    whose page faults cost more (a 256 MiB boot: ~690 vs ~650 MB/s here).
    When the image is known before the boot, its pages are faulted in
    before the first HELLO (_prepared_ramdisk); otherwise the ring receive
    loop faults in each batch's pages in one call as its READ goes out
    (rxring.c: populate), while the server answers. Faulting them all in
    after the OFFER was slower (on the transfer's clock, with nothing to
    overlap), and so were huge pages (a 2 MiB fault here costs as much as
    its 512 small ones, and the first boot stalled on compaction)."""
    return mmap.mmap(-1, max(size, 1), flags=mmap.MAP_PRIVATE)


#: MADV_POPULATE_WRITE (Linux 5.14); the mmap module of Python 3.11 lacks the name.
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


def _prepared_ramdisk(ramdisk_size: int, data_size: int) -> mmap.mmap | None:
    """A ramdisk for an OFFER of these sizes, the pages DATA will land on
    (up to the 128 KiB batch past data_size) faulted in now. None for sizes
    no OS client accepts (the session will say why)."""
    capacity = ramdisk_capacity(ramdisk_size)
    if not 0 < data_size <= capacity:
        return None
    ram = _ramdisk(capacity)
    try:
        batch = SLOTS * CHUNK
        ram.madvise(_MADV_POPULATE_WRITE, 0, min(-(-data_size // batch) * batch, capacity))
    except OSError:
        pass  # an older kernel: DATA faults the pages in as it lands
    return ram


def _run(link: RawLink, want: bytes, timeout: float | None, save: str | None,
         on_progress: Callable[[ClientSession, float], None] | None,
         use_ring: bool, ready: mmap.mmap | None = None) -> NetbootResult:
    sess = ClientSession(link.mac, want)
    start = time.monotonic()
    transfer_start = 0.0
    ram: mmap.mmap | None = None
    ram_ptr = ffi.NULL
    poller = select.poll()
    poller.register(link.fileno(), select.POLLIN)
    stats = ffi.new("ox_rx_stats *")
    busy = ffi.new("uint32_t *")
    other = ffi.new(f"uint8_t[{MAX_FRAME}]")
    other_len = ffi.new("size_t *")
    slot_offsets = ffi.from_buffer("uint64_t[]", sess.slot_offsets)
    slot_busy = ffi.from_buffer("uint8_t[]", sess.slot_busy)
    # With the ring, complete batches are followed by the next in C.
    nxt = ffi.new("ox_rx_next *")
    slot_sent = ffi.from_buffer("double[]", sess.slot_sent)
    nxt.slot_sent = slot_sent
    self_mac = link.mac
    next_report = start + 1.0
    reason: str | None = None
    last_poll = -1.0
    busy[0] = 0
    ring = ffi.NULL

    while True:
        now = time.monotonic()
        # The session only ever acts (new batch, retransmission, FINISHED,
        # HELLO) when every slot is empty or time has passed, so ask it then:
        # at least every tick, and at once when the batch is complete. Its
        # slot scans are Python loops; the DATA in between is the C core's.
        if busy[0] == 0 or now - last_poll >= TICK:
            last_poll = now
            for frame in sess.poll(now):
                link.send(frame.pack())
            busy[0] = sum(sess.slot_busy)
        state = sess.state
        if state not in (ClientState.DISCOVERY, ClientState.TRANSFER):
            break
        if timeout is not None and now - start > timeout:
            reason = f"timed out after {timeout:g} s"
            break
        if on_progress is not None and now >= next_report:
            next_report = now + 1.0
            on_progress(sess, now)
        if state is ClientState.TRANSFER and ram is not None and (busy[0] or ring != ffi.NULL):
            # The rest of the batch is received in C, sleeping there between
            # frames, until it is complete or the session's next tick.
            server = sess.server
            assert server is not None
            before_bytes = stats.bytes
            # Rounded up: a wait of 0 ms would spin until the tick.
            wait_ms = max(0, math.ceil((last_poll + TICK - now) * 1000))
            if ring != ffi.NULL:
                assert sess.offer is not None
                nxt.next_offset = sess.next_offset
                nxt.data_size = sess.offer.data_size
                n = lib.ox_rxring_data_wait(ring, self_mac, server, ram_ptr, len(ram),
                                            slot_offsets, slot_busy, busy, other, MAX_FRAME,
                                            other_len, 1 << 20, wait_ms, stats, nxt)
                sess.next_offset = nxt.next_offset
            else:
                n = lib.ox_rx_data_wait(link.fileno(), self_mac, server, ram_ptr, len(ram),
                                        slot_offsets, slot_busy, busy, other, MAX_FRAME,
                                        other_len, 1 << 20, wait_ms, stats)
            now = time.monotonic()
            if n < 0:
                raise OSError(ffi.errno, "receive failed")
            sess.bytes_received += stats.bytes - before_bytes
            sess.write_extent = max(sess.write_extent, stats.extent)
            if stats.eof:
                sess.eof = True
            if other_len[0]:
                _feed(sess, bytes(ffi.buffer(other, other_len[0])), now, ram)
                busy[0] = sum(sess.slot_busy)
            continue
        if not poller.poll(TICK * 1000):
            continue
        now = time.monotonic()
        for buf in link.recv_pending():
            _feed(sess, buf, now, ram)
            if sess.state is ClientState.TRANSFER and ram is None:
                assert sess.offer is not None
                transfer_start = now
                if ready is not None and len(ready) == max(sess.ramdisk_capacity, 1):
                    ram = ready
                else:
                    if ready is not None:
                        ready.close()  # not the offer it was made for
                    ram = _ramdisk(sess.ramdisk_capacity)
                ready = None
                ram_ptr = ffi.from_buffer("uint8_t[]", ram)
                if use_ring:
                    # Before the first READ goes out: no DATA is missed.
                    # Without a ring (an old kernel), recvmmsg it is.
                    ring = lib.ox_rxring_open(link.fileno(), RXRING_FRAMES)
                    if ring != ffi.NULL:
                        ring = ffi.gc(ring, lib.ox_rxring_close)
                break

    end = time.monotonic()
    if ring != ffi.NULL:
        ffi.release(ring)
    offer = sess.offer
    verified = ram is not None and sess.state is ClientState.DONE and sess.verify(ram)
    if sess.state is ClientState.PANIC:
        reason = sess.panic_reason
    elif sess.state is ClientState.RESET:
        reason = "the server sent RESET"
    elif sess.state is ClientState.DONE and not verified:
        reason = "boot image integrity failure (checksum mismatch)"
    if verified and save is not None and ram is not None and offer is not None:
        with AtomicFile(save) as out:
            out.write_all(memoryview(ram)[:offer.data_size])
            out.commit()
    result = NetbootResult(
        state=sess.state, verified=verified,
        image_size=offer.data_size if offer else 0, ramdisk_len=sess.ramdisk_len,
        seconds=(end - transfer_start) if transfer_start else 0.0,
        total_seconds=end - start, retransmits=sess.retransmits,
        frames=int(stats.frames), server=sess.server.hex(":") if sess.server else None,
        reason=reason,
    )
    if ram is not None:
        del ram_ptr
        ram.close()
    return result


def _feed(sess: ClientSession, buf: bytes, now: float, ram: mmap.mmap | None) -> None:
    try:
        frame = parse_frame(buf)
    except FrameError:
        return
    if sess.receive(frame, now, frame_len=len(buf)) and ram is not None:
        payload = frame.msg.payload  # type: ignore[union-attr]
        offset = frame.msg.offset  # type: ignore[union-attr]
        end = min(offset + len(payload), len(ram))
        if offset < end:
            ram[offset:end] = payload[: end - offset]


def want_from_image(path: str) -> bytes:
    """The checksum a sled built with `path`'s phase-1 archive would want."""
    from oxboot.verify import read_header

    return read_header(path).sha256


__all__ = ["NetbootResult", "netboot", "want_from_image"]

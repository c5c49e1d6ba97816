"""The sled emulator's I/O loop around :class:`~oxboot.protocol.ClientSession`.

The session decides (exactly as the OS client does); this loop sends what
it asks for and feeds it what arrives. During the transfer, DATA frames are
landed in the ramdisk by the C core (:mod:`oxboot.sled.rx`); every other
frame goes through the session in Python.
"""

from __future__ import annotations

import math
import mmap
import select
import time
from collections.abc import Callable
from dataclasses import dataclass

from oxboot.fsutil import AtomicFile
from oxboot.link import RawLink
from oxboot.protocol import ClientSession, ClientState, FrameError, parse_frame
from oxboot.sled.ramdisk import prepared_ramdisk, ramdisk
from oxboot.sled.rx import DataReceiver

TICK = 0.05  # the OS client's loop wakes at least this often
#: How the emulator receives DATA (see the module docstring).
RECEIVE_METHODS = ("ring", "recvmmsg")


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
    #: DATA for no outstanding slot (duplicates, mostly): the OS prints
    #: "dropped data packet for offset N" on its console for each.
    duplicates: int = 0

    @property
    def mbps(self) -> float:
        return self.image_size / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "state": self.state.value, "verified": self.verified,
            "image_size": self.image_size, "ramdisk_len": self.ramdisk_len,
            "seconds": round(self.seconds, 4), "total_seconds": round(self.total_seconds, 4),
            "mbps": round(self.mbps, 2), "retransmits": self.retransmits,
            "frames": self.frames, "duplicates": self.duplicates, "server": self.server,
            "reason": self.reason,
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
    ready = prepared_ramdisk(*expect) if expect is not None else None
    link = RawLink(ifname)
    try:
        return _run(link, want_sha256, timeout, save, on_progress, receive == "ring", ready)
    finally:
        link.close()
        if ready is not None and not ready.closed:
            ready.close()


def _run(link: RawLink, want: bytes, timeout: float | None, save: str | None,
         on_progress: Callable[[ClientSession, float], None] | None,
         use_ring: bool, ready: mmap.mmap | None = None) -> NetbootResult:
    sess = ClientSession(link.mac, want)
    start = time.monotonic()
    transfer_start = 0.0
    ram: mmap.mmap | None = None
    rx: DataReceiver | None = None
    poller = select.poll()
    poller.register(link.fileno(), select.POLLIN)
    next_report = start + 1.0
    reason: str | None = None
    last_poll = -1.0

    try:
        while True:
            now = time.monotonic()
            # The session only ever acts (new batch, retransmission, FINISHED,
            # HELLO) when every slot is empty or time has passed, so ask it
            # then: at least every tick, and at once when the batch is
            # complete. Its slot scans are Python loops; the DATA in between
            # is the C core's.
            if rx is None or rx.busy == 0 or now - last_poll >= TICK:
                last_poll = now
                for frame in sess.poll(now):
                    link.send(frame.pack())
                if rx is not None:
                    rx.sync()
            state = sess.state
            if state not in (ClientState.DISCOVERY, ClientState.TRANSFER):
                break
            if timeout is not None and now - start > timeout:
                reason = f"timed out after {timeout:g} s"
                break
            if on_progress is not None and now >= next_report:
                next_report = now + 1.0
                on_progress(sess, now)
            if rx is not None and (rx.busy or rx.ring):
                # The rest of the batch is received in C, sleeping there
                # between frames, until it is complete or the session's next
                # tick. Rounded up: a wait of 0 ms would spin until the tick.
                wait_ms = max(0, math.ceil((last_poll + TICK - now) * 1000))
                other = rx.wait(wait_ms)
                if other is not None:
                    _feed(sess, other, time.monotonic(), ram)
                    rx.sync()
                continue
            if not poller.poll(TICK * 1000):
                continue
            now = time.monotonic()
            for buf in link.recv_pending():
                _feed(sess, buf, now, ram)
                if sess.state is ClientState.TRANSFER and ram is None:
                    transfer_start = now
                    if ready is not None and len(ready) == max(sess.ramdisk_capacity, 1):
                        ram = ready
                    else:
                        if ready is not None:
                            ready.close()  # not the offer it was made for
                        ram = ramdisk(sess.ramdisk_capacity)
                    ready = None
                    # Before the first READ goes out: no DATA is missed.
                    rx = DataReceiver(link, sess, ram, use_ring)
                    break
    finally:
        if rx is not None:
            rx.close()

    end = time.monotonic()
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
        frames=rx.frames if rx is not None else 0,
        server=sess.server.hex(":") if sess.server else None,
        reason=reason, duplicates=sess.dropped,
    )
    if ram is not None:
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

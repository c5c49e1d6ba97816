"""The sled's DATA path in C: DATA frames land in the ramdisk without a
trip through Python, read in place from a PACKET_RX_RING
(``ox_rxring_data_wait``) or with recvmmsg (``ox_rx_data_wait``).

The C core shares the session's slot buffers and mirrors
:meth:`~oxboot.protocol.ClientSession.on_data`; what it did is handed back
to the session through :meth:`~oxboot.protocol.ClientSession.absorb_fast_path`.
"""

from __future__ import annotations

import mmap

from oxboot._native import ffi, lib
from oxboot.link import MAX_FRAME, RawLink
from oxboot.protocol import ClientSession

#: Ring slots (2 KiB each): 32 READs' worth of DATA, 8 MiB.
RXRING_FRAMES = 4096
#: Frames one call reads at most: in effect, until the batch is complete.
_MAX_FRAMES = 1 << 20


class DataReceiver:
    """One session's DATA path over `link` into `ram` (see module docstring).

    With ``use_ring``, a ring is set up now, before the first READ goes
    out, so no DATA is missed; where that fails (an old kernel), recvmmsg.
    """

    def __init__(self, link: RawLink, sess: ClientSession, ram: mmap.mmap,
                 use_ring: bool) -> None:
        if sess.server is None or sess.offer is None:
            raise ValueError("the session has accepted no offer yet")
        self.sess = sess
        self._fd = link.fileno()
        # Every buffer the C structs point into is kept here: cffi does not
        # keep what a struct field points to alive.
        self._keep = (ffi.from_buffer(link.mac), ffi.from_buffer(sess.server),
                      ffi.from_buffer("uint8_t[]", ram),
                      ffi.from_buffer("uint64_t[]", sess.slot_offsets),
                      ffi.from_buffer("uint8_t[]", sess.slot_busy),
                      ffi.from_buffer("double[]", sess.slot_sent))
        self._busy = ffi.new("uint32_t *")
        self._other = ffi.new(f"uint8_t[{MAX_FRAME}]")
        self._other_len = ffi.new("size_t *")
        self.stats = ffi.new("ox_rx_stats *")
        self._args = ffi.new("ox_rx_args *", {
            "self_mac": self._keep[0], "server": self._keep[1], "ram": self._keep[2],
            "ram_len": len(ram), "slot_offsets": self._keep[3], "slot_busy": self._keep[4],
            "busy_count": self._busy, "other": self._other, "other_cap": MAX_FRAME,
            "other_len": self._other_len, "stats": self.stats})
        # With the ring, complete batches are followed by the next in C.
        self._next = ffi.new("ox_rx_next *", {"slot_sent": self._keep[5],
                                               "data_size": sess.offer.data_size})
        self._ring = ffi.NULL
        if use_ring:
            ring = lib.ox_rxring_open(self._fd, RXRING_FRAMES)
            if ring != ffi.NULL:
                self._ring = ffi.gc(ring, lib.ox_rxring_close)
        self.sync()

    @property
    def ring(self) -> bool:
        """Whether DATA comes through a ring (which also starts batches)."""
        return self._ring != ffi.NULL

    @property
    def busy(self) -> int:
        """Slots still waiting for their DATA."""
        return int(self._busy[0])

    @property
    def frames(self) -> int:
        """Frames the C core has read."""
        return int(self.stats.frames)

    def sync(self) -> None:
        """The session changed its slots (a new batch, a retransmission)."""
        self._busy[0] = sum(self.sess.slot_busy)

    def wait(self, timeout_ms: int) -> bytes | None:
        """Receive until the batch is complete (with a ring: batches, until
        the end is near), a frame for Python arrives (returned) or
        `timeout_ms` pass; the session is brought up to date."""
        sess = self.sess
        before, stray = self.stats.bytes, self.stats.data_stray
        if self._ring != ffi.NULL:
            self._next.next_offset = sess.next_offset
            n = lib.ox_rxring_data_wait(self._ring, self._args, _MAX_FRAMES, timeout_ms,
                                        self._next)
            next_offset: int | None = int(self._next.next_offset)
        else:
            n = lib.ox_rx_data_wait(self._fd, self._args, _MAX_FRAMES, timeout_ms)
            next_offset = None
        if n < 0:
            raise OSError(ffi.errno, "receive failed")
        sess.absorb_fast_path(received=self.stats.bytes - before, extent=self.stats.extent,
                              eof=bool(self.stats.eof), next_offset=next_offset,
                              dropped=self.stats.data_stray - stray)
        if self._other_len[0]:
            return bytes(ffi.buffer(self._other, self._other_len[0]))
        return None

    def close(self) -> None:
        """Unmap the ring (the socket may stay open) and let go of the buffers."""
        if self._ring != ffi.NULL:
            ffi.release(self._ring)
            self._ring = ffi.NULL
        for buf in self._keep:
            ffi.release(buf)  # the ramdisk's mapping can be closed now
        self._keep = ()

"""The link layer: one AF_PACKET raw socket per interface, ethertype 0x1DE0.

Thin on purpose: it opens, binds and tunes the socket, reads the
interface's MAC from the kernel, and hands batches of frames to the C core
(transmit of DATA, receive of DATA on the client). All protocol decisions
live in :mod:`oxboot.protocol`.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from oxboot._native import ffi, lib
from oxboot.errors import LinkError
from oxboot.protocol import CHUNK, ETHERTYPE

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_UNICAST = 3
PACKET_STATISTICS = 6
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
MAX_FRAME = 2048

#: DATA transmit mechanisms, the default first (BENCHMARKS.md): ``auto``
#: takes an AF_XDP socket in copy mode where one can be set up on the
#: worker's device queue (one copy into the UMEM, a descriptor per frame, a
#: sendto() after 16 frames, then per 32; 10-20% more frames than sendmmsg
#: on veth, bench/notes.md)
#: and sendmmsg otherwise (no AF_XDP in the kernel, a queue per worker
#: taken, no locked memory allowed). The others force one mechanism, for
#: diagnosis: sendmmsg with iovecs into the image mapping (no user-space
#: copy), a PACKET_TX_RING (one copy into the ring; on veth it waits for the
#: peer to free each frame, which costs more than it saves), plain send per
#: frame, and AF_XDP.
TX_METHODS = ("auto", "xdp", "sendmmsg", "ring", "send")
RING_FRAMES = 512
XSK_FRAMES = 1024  # UMEM chunks of an AF_XDP socket (a power of two)
MAX_BLOCKED: int = lib.OX_MAX_BLOCKED  # sources one socket filter can drop
#: RawLink.send's waits while the device queue is full: the first and the
#: longest, doubling in between (a queue drains in microseconds to
#: milliseconds), and how long before it takes the link for broken.
SEND_BACKOFF = (50e-6, 5e-3)
SEND_PATIENCE = 5.0


AF_XDP = 44  # socket family (Linux); the socket module does not name it


def af_xdp_unavailable() -> str | None:
    """Why this kernel cannot open AF_XDP sockets (``--tx xdp``), or None."""
    try:
        socket.socket(AF_XDP, socket.SOCK_RAW, 0).close()
    except OSError as e:
        return f"the kernel offers no AF_XDP sockets: {e.strerror}"
    return None


def mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def parse_mac(text: str) -> bytes:
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(1 <= len(p) <= 2 for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"not a MAC address: {text!r}") from None


def image_mac(base: bytes, index: int) -> bytes:
    """The source MAC that image `index` is offered from.

    The OS client sends its READs to the MAC of the OFFER it accepted, and
    READs carry nothing else that names an image; so each image gets its own
    address. Image 0 uses the interface's own MAC; the others are locally
    administered addresses derived from it.
    """
    if index == 0:
        return base
    if not 0 < index < 1 << 16:
        raise ValueError("too many images")
    mac = bytearray(base)
    mac[0] = (mac[0] | 0x02) & 0xFE  # locally administered, unicast
    mac[4] ^= index >> 8
    mac[5] ^= index & 0xFF
    mac[3] ^= 0x5A  # never equal to another host's burned-in address pattern
    return bytes(mac)


@dataclass
class TxStats:
    frames: int = 0
    bytes: int = 0
    syscalls: int = 0


class RawLink:
    """A raw packet socket bound to `ifname` for the oxboot ethertype."""

    def __init__(self, ifname: str, extra_macs: Sequence[bytes] = (), *,
                 buffer_bytes: int = 8 << 20, qdisc_bypass: bool = False,
                 tx_method: str = "sendmmsg", receive: bool = True,
                 tx_queue: int = 0) -> None:
        """`tx_queue`: the device queue an AF_XDP socket binds to (``xdp``);
        each queue takes one such socket."""
        if tx_method not in TX_METHODS:
            raise ValueError(f"unknown transmit method {tx_method!r}")
        self.ifname = ifname
        #: The mechanism in use (``auto`` resolved); `tx_fallback` says why
        #: auto did not get AF_XDP ("" if it did or was not asked).
        self.tx_method = tx_method
        self.tx_fallback = ""
        self._receive = receive
        self._ring = ffi.NULL
        self._xsk = ffi.NULL
        self._txsock: socket.socket | None = None
        try:
            self.ifindex = socket.if_nametoindex(ifname)
        except OSError:
            raise LinkError(errno.ENODEV, f"no such network interface: {ifname}") from None
        try:
            # A transmit-only socket is created with protocol 0 (nothing is
            # queued for it) and gets a filter that accepts nothing before
            # it is bound to our ethertype: bound, the kernel takes each
            # sent frame's protocol from the socket instead of parsing it.
            proto = socket.htons(ETHERTYPE) if receive else 0
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, proto)
            if not receive and lib.ox_receive_nothing(sock.fileno()) != 0:
                sock.close()
                raise OSError(ffi.errno, "cannot attach a socket filter")
        except PermissionError:
            raise LinkError(errno.EPERM, "raw sockets need CAP_NET_RAW (run as root, or "
                            "grant the capability)") from None
        self.sock = sock
        try:
            sock.bind((ifname, ETHERTYPE))
            # Our own transmitted frames would otherwise come back to us.
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            for opt, fallback in ((SO_SNDBUFFORCE, socket.SO_SNDBUF),
                                  (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, buffer_bytes)
                except PermissionError:
                    sock.setsockopt(socket.SOL_SOCKET, fallback, buffer_bytes)
            if qdisc_bypass:
                sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            self.mac: bytes = sock.getsockname()[4][:6]
            for mac in extra_macs:
                if mac != self.mac:
                    self.add_unicast(mac)
        except OSError as e:
            sock.close()
            raise LinkError(e.errno or errno.EIO, f"{ifname}: {e.strerror or e}") from None
        self._stats = ffi.new("ox_tx_stats *")
        self.tx = TxStats()
        if tx_method == "ring":
            self._open_ring()
        elif tx_method in ("xdp", "auto"):
            try:
                self._open_xsk(tx_queue)
                self.tx_method = "xdp"
            except LinkError as e:
                if tx_method == "xdp":
                    self.sock.close()
                    raise
                self.tx_method = "sendmmsg"
                self.tx_fallback = e.strerror or str(e)

    def _open_ring(self) -> None:
        # A TX ring turns send() into "flush the ring", so it needs a socket
        # that sends nothing else: this one, if it only transmits, or one of
        # its own (protocol 0: it receives nothing).
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) if self._receive else self.sock
        try:
            if tx is not self.sock:
                tx.bind((self.ifname, 0))
            # Straight to the driver: no qdisc for frames we pace ourselves.
            tx.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            ring = lib.ox_txring_open(tx.fileno(), RING_FRAMES)
            if ring == ffi.NULL:
                code = ffi.errno
                raise LinkError(code, f"{self.ifname}: cannot set up a TX ring: "
                                f"{os.strerror(code)}")
        except BaseException:
            if tx is not self.sock:
                tx.close()
            self.sock.close()
            raise
        self._txsock = tx if tx is not self.sock else None
        self._ring = ring

    def _open_xsk(self, queue: int) -> None:
        # An AF_XDP socket of its own, for DATA only: frames we receive and
        # the other frames we send stay on the packet socket.
        xsk = lib.ox_xsk_open(self.ifindex, queue, XSK_FRAMES)
        if xsk == ffi.NULL:
            code = ffi.errno
            hint = ""
            if code == errno.EAFNOSUPPORT:
                hint = (" (the kernel has no AF_XDP, or a sandbox forbids it: systemd's "
                        "RestrictAddressFamilies= must list AF_XDP)")
            elif code in (errno.ENOBUFS, errno.ENOMEM):
                hint = (" (its buffer is locked memory: raise the limit, systemd's "
                        "LimitMEMLOCK= or ulimit -l, to 2 MiB per worker or more)")
            elif code in (errno.EBUSY, errno.EINVAL) and queue > 0:
                hint = " (one AF_XDP socket per device queue: use fewer workers)"
            raise LinkError(code, f"{self.ifname}: cannot set up AF_XDP transmit on queue "
                            f"{queue}: {os.strerror(code)}{hint}")
        self._xsk = xsk

    def add_unicast(self, mac: bytes) -> None:
        """Receive frames sent to `mac` too (a secondary unicast address)."""
        mreq = struct.pack("iHH8s", self.ifindex, PACKET_MR_UNICAST, 6, mac)
        self.sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)

    def block_sources(self, macs: Sequence[bytes]) -> None:
        """Have the kernel drop every frame from these source MACs before
        it reaches this socket (a socket filter; at most MAX_BLOCKED; an
        empty list lifts it)."""
        if len(macs) > MAX_BLOCKED:
            raise ValueError(f"at most {MAX_BLOCKED} sources can be blocked")
        if lib.ox_set_blocklist(self.sock.fileno(), b"".join(macs), len(macs)) != 0:
            code = ffi.errno
            raise OSError(code, f"{self.ifname}: cannot set the socket filter: "
                          f"{os.strerror(code)}")

    def tx_ring(self) -> tuple[int, object]:
        """(the socket DATA leaves by, its PACKET_TX_RING or NULL)."""
        sock = self._txsock if self._txsock is not None else self.sock
        return sock.fileno(), self._ring

    def tx_xsk(self) -> object:
        """The AF_XDP socket DATA leaves by (``xdp``), or NULL."""
        return self._xsk

    def join_fanout(self, group: int | None) -> int:
        """Share this socket's frames with the other members of a fanout
        group, split by source MAC (``lib.ox_fanout_index``): None creates
        the group (this socket first); returns its id."""
        got = lib.ox_fanout_by_source(self.sock.fileno(), -1 if group is None else group)
        if got < 0:
            code = ffi.errno
            raise LinkError(code, f"{self.ifname}: cannot join a fanout group: "
                            f"{os.strerror(code)}")
        return got

    def rx_stats(self) -> tuple[int, int]:
        """(frames received, frames the kernel dropped for a full queue) since
        the last call (PACKET_STATISTICS resets on read)."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        packets, drops = struct.unpack("II", raw)
        return packets, drops

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        if self._xsk != ffi.NULL:
            lib.ox_xsk_close(self._xsk)
            self._xsk = ffi.NULL
        if self._ring != ffi.NULL:
            lib.ox_txring_close(self._ring)
            self._ring = ffi.NULL
        if self._txsock is not None:
            self._txsock.close()
            self._txsock = None
        self.sock.close()

    def __enter__(self) -> RawLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, frame: bytes) -> None:
        """Send one frame. The socket blocks while its buffer is full; while
        the device's queue is (ENOBUFS, or EAGAIN), wait and try again,
        backing off, for up to SEND_PATIENCE seconds: then LinkError."""
        delay, deadline = SEND_BACKOFF[0], 0.0
        while True:
            try:
                self.sock.send(frame)
                return
            except OSError as e:
                if e.errno not in (errno.ENOBUFS, errno.EAGAIN):
                    raise
                # POLLOUT would not tell: it reports room in the socket's
                # buffer, not in the device's queue.
                now = time.monotonic()
                if not deadline:
                    deadline = now + SEND_PATIENCE
                elif now >= deadline:
                    raise LinkError(e.errno, f"{self.ifname}: cannot send: {e.strerror} "
                                    f"for {SEND_PATIENCE:g} s") from None
                time.sleep(delay)
                delay = min(2 * delay, SEND_BACKOFF[1])

    def recv_pending(self, limit: int = 256) -> Iterator[bytes]:
        """Every frame already queued on the socket (at most `limit`)."""
        for _ in range(limit):
            try:
                yield self.sock.recv(MAX_FRAME, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return

    def send_data(self, dst: bytes, src: bytes, image: object, image_size: int,
                  offsets: Sequence[int]) -> int:
        """Build and send one DATA frame per offset in the C core, payload
        taken straight from `image` (a cffi pointer to the raw image)."""
        if not offsets:
            return 0
        offs = ffi.new("uint64_t[]", offsets)
        st = self._stats
        st.frames = st.bytes = st.syscalls = 0
        if self._xsk != ffi.NULL:
            n = lib.ox_xsk_send_data(self._xsk, dst, src, image, image_size, offs,
                                     len(offsets), CHUNK, st)
        elif self._ring != ffi.NULL:
            n = lib.ox_txring_send_data(self._ring, dst, src, image, image_size, offs,
                                        len(offsets), CHUNK, st)
        else:
            method = lib.OX_TX_SEND if self.tx_method == "send" else lib.OX_TX_SENDMMSG
            n = lib.ox_tx_data(self.sock.fileno(), method, dst, src, image, image_size,
                               offs, len(offsets), CHUNK, st)
        self.tx.frames += st.frames
        self.tx.bytes += st.bytes
        self.tx.syscalls += st.syscalls
        if n < 0:
            code = st.last_errno
            raise OSError(code, f"{self.ifname}: {os.strerror(code)}")
        return int(n)

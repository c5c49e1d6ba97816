"""The boot server's I/O loop: images, a raw socket and the sans-I/O
:class:`~oxboot.protocol.BootServer` that decides what to send.

Uncompressed images are served straight from a read-only mmap of the file;
compressed ones (zlib, zstd) are inflated once into an unlinked temporary
file and served from its mapping. Every image is verified (SHA-256) before
it is first offered. A session keeps the mapping it started with, so an
image replaced on disk never mixes two versions within one boot; the next
HELLO sees the new file.
"""

from __future__ import annotations

import json
import mmap
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from oxboot._native import ffi, lib
from oxboot.errors import BootError
from oxboot.format import (
    HEADER_SIZE,
    Header,
    ImageError,
    Warn,
    check_header,
    check_layout,
    header_warnings,
)
from oxboot.link import MAX_BLOCKED, RawLink, image_mac, mac_str
from oxboot.privileges import drop_privileges
from oxboot.progress import human
from oxboot.protocol import (
    CHUNK,
    DEFAULT_READ_RATE,
    SLOTS,
    BootServer,
    Ignored,
    MsgType,
    Offer,
    SendOffer,
    SendReset,
    ServeData,
    SessionFinished,
    SessionStarted,
    encode_dataset,
)
from oxboot.receiver import POLICE_FIELDS, READ_BURST, TOTAL_FIELDS, Receiver
from oxboot.txworkers import Job, TxPool
from oxboot.verify import copy_data

_READ_TYPE = int(MsgType.READ).to_bytes(4, "big")
_U64_MAX = (1 << 64) - 1

#: Transmit workers by default. One, sending from the receive loop itself:
#: measured on a 2-core machine (BENCHMARKS.md), a second worker thread
#: costs more in hand-offs and GIL traffic than it gains, because on veth
#: the receiving side's work lands on the sending core too. --workers N
#: spreads sleds over N sockets and threads where cores are plentiful.
DEFAULT_WORKERS = 1
#: Seconds the server polls its socket without sleeping after a frame (the
#: faithful client's boot: ~400 -> ~490 MB/s here, BENCHMARKS.md).
DEFAULT_BUSY_POLL = 0.001
#: The protocol layer's READ meter against the C policer's rate (both per
#: host): it only sees what the policer let through, and must not refuse a
#: host the policer found within its rate (the policer reads its clock once
#: per drain, the protocol layer once per frame).
PROTOCOL_RATE_MARGIN = 1.25

# A host the policer flags as flooding has its frames dropped by the kernel
# for BLOCK_SECONDS, doubled for each repeat up to BLOCK_MAX_SECONDS: it then
# costs the server nothing, while an OS client (one READ per 128 KiB batch)
# is never flagged. Short enough that a spoofed MAC is not shut out for long.
BLOCK_SECONDS = 2.0
#: How often receive threads other than the main loop copy their C counters
#: for the stats (which the main loop reports each second).
SNAPSHOT_SECONDS = 0.1
BLOCK_MAX_SECONDS = 64.0
STRIKES_KEPT = 4096  # offenders remembered for the doubling


@dataclass(eq=False)
class ServedImage:
    """One version of an image file, mapped and verified, ready to serve."""

    path: Path
    header: Header
    size: int
    stamp: tuple[int, int, int, int]  # dev, inode, size, mtime: "same file?"
    _map: mmap.mmap  # the private copy's mapping: keeps `ptr` valid
    ptr: object = field(repr=False)  # cffi uint8_t* to the raw image

    @property
    def offer(self) -> Offer:
        h = self.header
        return Offer(h.target_size, h.image_size, h.sha256, encode_dataset(h.dataset))

    @property
    def name(self) -> str:
        return self.header.image_name or self.path.name


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def load_image(path: str | os.PathLike[str], scratch: str | None = None) -> ServedImage:
    """Read, check and verify an image for serving (see module docstring).

    The raw image is copied into an unlinked file of our own (in `scratch`,
    default /var/tmp) while it is hashed, and served from a mapping of that
    copy: sessions never see a file that is rewritten, truncated or deleted
    under them, and memory stays page cache, not heap, whatever the size.
    """
    path = Path(path)
    try:
        f = open(path, "rb")  # closed below
    except OSError as e:
        raise ImageError(f"{path}: {e.strerror}") from None
    with f:
        st = os.fstat(f.fileno())
        header = Header.parse(f.read(HEADER_SIZE))
        check_header(header)
        try:
            check_layout(header, st.st_size, raw_tail=True)
        except ImageError as e:
            raise ImageError(f"{path}: {e}") from None
        scratch = scratch or os.environ.get("OXBOOT_SCRATCH") or "/var/tmp"
        with tempfile.TemporaryFile(dir=scratch, prefix="oxboot-serve-") as tmp:
            # Only image_size bytes are ever copied: a longer file's tail is
            # never served.
            try:
                copy_data(f, header, _FileSink(tmp.fileno()))
            except ImageError as e:
                raise ImageError(f"{path}: {e}") from None
            except OSError as e:
                raise ImageError(f"{path}: {e.strerror}") from None
            mm = mmap.mmap(tmp.fileno(), header.image_size, prot=mmap.PROT_READ)
    mm.madvise(mmap.MADV_WILLNEED)
    ptr = ffi.from_buffer("uint8_t[]", mm, require_writable=False)
    return ServedImage(path, header, header.image_size, _stamp(st), mm, ptr)


class _FileSink:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]


def netboot_warnings(image: ServedImage) -> list[str]:
    return [f"{image.path}: {note}"
            for note in header_warnings(image.header, Warn.NETBOOT | Warn.OFFER)]


class EventLog:
    """One line per event on stdout (text or JSON), progress on a tty."""

    def __init__(self, json_mode: bool = False, stream: TextIO | None = None,
                 progress: bool | None = None) -> None:
        self.json = json_mode
        self.stream = stream if stream is not None else sys.stdout
        self.progress = (not json_mode and sys.stderr.isatty()) if progress is None else progress

    _shown = 0  # progress lines on screen below the log

    def show_progress(self, rows: list[str]) -> None:
        """A table of sleds below the log, redrawn in place once a second."""
        out = ["\x1b[1A\x1b[2K"] * self._shown  # erase the previous table
        limit = 16
        lines = rows[:limit] + ([f"... and {len(rows) - limit} more sleds"]
                                if len(rows) > limit else [])
        out += [f"\r\x1b[2K{line}\n" for line in lines]
        self._shown = len(lines)
        sys.stderr.write("".join(out))
        sys.stderr.flush()

    def event(self, kind: str, text: str, **fields: object) -> None:
        if self.json:
            line = json.dumps({"event": kind, "time": round(time.time(), 3), **fields},
                              sort_keys=True)
        else:
            line = f"{time.strftime('%H:%M:%S')} {kind}: {text}"
        if self.progress and self._shown:
            # Events scroll above the progress table: clear it, log, and let
            # the next tick draw it again.
            sys.stderr.write("\x1b[1A\x1b[2K" * self._shown)
            sys.stderr.flush()
            self._shown = 0
        self.stream.write(line + "\n")
        self.stream.flush()


@dataclass
class SledState:
    """What the I/O layer keeps per sled: the image version it boots."""

    image: ServedImage
    index: int
    started: float
    frames: int = 0
    bytes: int = 0
    high: int = 0


class Server:
    """Serve images on one link until stopped (or, with `once`, one boot)."""

    def __init__(self, link: str, images: Sequence[str | os.PathLike[str]],
                 allow: Sequence[bytes] | None, *, once: bool = False,
                 hello_timeout: float | None = None, log: EventLog | None = None,
                 tx_method: str = "auto", scratch: str | None = None,
                 read_rate: float = DEFAULT_READ_RATE, workers: int | None = None,
                 user: str | None = None, busy_poll: float = DEFAULT_BUSY_POLL,
                 fast_path: bool = True,
                 on_ready: Callable[[Server], None] | None = None) -> None:
        self.log = log or EventLog()
        self.paths = [Path(p) for p in images]
        if not self.paths:
            raise ImageError("no image to serve")
        self.scratch = scratch
        loaded: list[ServedImage] = []
        for p in self.paths:
            img = load_image(p, scratch)  # raises if it cannot be served
            for note in netboot_warnings(img):
                self.log.event("warning", note, message=note)
            loaded.append(img)
        # None: an image that became unservable since (see _image_error).
        self.images: list[ServedImage | None] = list(loaded)
        self.link = RawLink(link, [])
        self.macs = [image_mac(self.link.mac, i) for i in range(len(self.paths))]
        for mac in self.macs[1:]:
            self.link.add_unicast(mac)
        n_workers = workers or DEFAULT_WORKERS
        # READs of established sessions are answered in C by the receive
        # loops (AF_XDP or sendmmsg, the default): with N workers, N receive sockets in
        # a fanout group split by source MAC, each drained by its own thread
        # that sends on its own socket. Otherwise one receive loop and N
        # transmit threads fed by Python.
        fast = tx_method != "send" and fast_path
        self.pool = TxPool(link, n_workers, tx_method, threaded=not fast)
        self._read_rate = read_rate
        self.receivers: list[Receiver] = []
        try:
            self.receivers.append(Receiver(self.link, self.pool.inline, read_rate, fast))
            if fast and n_workers > 1:
                group = self.link.join_fanout(None)
                for w in self.pool.workers[1:]:
                    rx = RawLink(link)
                    self.receivers.append(Receiver(rx, w, read_rate, fast))
                    rx.join_fanout(group)
        except BaseException:
            for r in self.receivers[1:]:
                r.link.close()
            self.pool.stop()
            self.link.close()
            raise
        if user is not None:
            drop_privileges(user)
        # Two lines of defence against a flooding host: its frames are
        # policed per source in C as they are drained from the socket, at
        # `read_rate` (so the queue never overflows and costs others their
        # frames), and the protocol layer meters READs and HELLOs per source
        # again, PROTOCOL_RATE_MARGIN times looser.
        self.proto = BootServer([img.offer for img in loaded], self.macs,
                                None if allow is None else list(allow),
                                read_rate=read_rate * PROTOCOL_RATE_MARGIN,
                                read_burst=READ_BURST)
        # The protocol state and the I/O layer's bookkeeping are shared by
        # the receive threads: whoever handles a frame or a tick holds this.
        self._lock = threading.RLock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._failure: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._got_hello = False
        self.blocked: dict[bytes, float] = {}  # MAC -> when the kernel lets it in again
        self._strikes: dict[bytes, int] = {}  # times each recent offender was blocked
        self.blocks = 0
        self.once = once
        self.busy_poll = busy_poll
        self.hello_timeout = hello_timeout
        self.sleds: dict[bytes, SledState] = {}
        self.finished = 0
        self.errors = 0
        self.on_ready = on_ready
        self._offered: dict[tuple[bytes, int], ServedImage] = {}
        self._offsets = ffi.new(f"uint64_t[{SLOTS + 1}]")
        self._rx_packets = self._rx_drops = 0
        self._unreadable: dict[int, bool] = {}
        self._stop = False
        methods = [w.link.tx_method for w in self.pool.workers]
        fallbacks = sorted({w.link.tx_fallback for w in self.pool.workers} - {""})
        self.log.event("transmit", f"DATA leaves by {', '.join(methods)} (worker by worker)"
                       + (f"; AF_XDP not used: {'; '.join(fallbacks)}" if fallbacks else ""),
                       methods=methods, fallbacks=fallbacks)
        for i, img in enumerate(loaded):
            self.log.event("image", f"{img.path} ({human(img.size)}, sha256 "
                           f"{img.header.sha256.hex()[:16]}…) offered from "
                           f"{mac_str(self.macs[i])}", image=str(img.path), index=i,
                           mac=mac_str(self.macs[i]), size=img.size,
                           sha256=img.header.sha256.hex())

    # ---- image versions ---------------------------------------------------

    def _refresh(self, index: int) -> ServedImage | None:
        """Re-open image `index` if the file changed since it was loaded."""
        path = self.paths[index]
        current = self.images[index]
        try:
            st = path.stat()
        except PermissionError:
            # After --user the path may be out of reach: keep serving the
            # verified copy we have (changes cannot be seen; warn once).
            if current is not None and not self._unreadable.get(index):
                self._unreadable[index] = True
                self.log.event("warning", f"{path}: cannot check it for changes as this user "
                               "(permission denied); serving the copy loaded at start-up",
                               image=str(path))
            return current
        except OSError as e:
            self._image_error(index, f"{path}: {e.strerror}")
            return None
        if current is not None and _stamp(st) == current.stamp:
            return current
        try:
            img = load_image(path, self.scratch)
        except (ImageError, OSError, ValueError) as e:
            self._image_error(index, str(e))
            return None
        self.images[index] = img
        proto_images = list(self.proto.images)
        proto_images[index] = img.offer
        self.proto.images = tuple(proto_images)
        self.log.event("reload", f"{path} changed on disk; new version loaded",
                       image=str(path), sha256=img.header.sha256.hex())
        return img

    def _image_error(self, index: int, message: str) -> None:
        if self.images[index] is not None:
            self.log.event("error", f"cannot serve {message}", image=str(self.paths[index]),
                           message=message)
        self.images[index] = None
        self.errors += 1
        if self.once:
            raise ImageError(message)

    # ---- the loop ---------------------------------------------------------

    def stop(self) -> None:
        self._stop = True

    def run(self) -> int:
        try:
            return self._loop()
        finally:
            self._stop = True
            for t in self._threads:
                t.join(5)
            for r in self.receivers:  # their threads are done: counters are final
                r.snapshot()
            self.pool.drain()
            if self.log.json:
                self.log.event("stats", "", final=True, **self.stats())
            self.pool.stop()
            for r in self.receivers[1:]:
                r.link.close()
            self.link.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _loop(self) -> int:
        start = time.monotonic()
        rx = self.receivers[0]
        rx.owner = threading.get_ident()
        for i, other in enumerate(self.receivers[1:], 1):
            t = threading.Thread(target=self._worker, args=(other,), name=f"oxboot-rx{i}",
                                 daemon=True)
            self._threads.append(t)
            t.start()
        next_tick = start + 1.0
        if self.on_ready is not None:
            self.on_ready(self)
        while not self._stop:
            now = time.monotonic()
            if self.hello_timeout is not None and not self._got_hello and \
                    now - start > self.hello_timeout:
                raise BootError(f"no HELLO within {self.hello_timeout:g} seconds")
            # Worker 0 runs here: while it has DATA to send, only peek at the
            # socket between jobs; otherwise wait in C, which answers the
            # READs of established sessions itself, until a frame for
            # Python, a tick or a worker's wake-up.
            inline = rx.tx
            if inline.pending:
                timeout = 0.0
            else:
                timeout = max(0.0, min(next_tick, start + (self.hello_timeout or 1e9)) - now)
            # Busy-poll a moment after each READ while one sled boots: an OS
            # client's next READ comes right after our last DATA, and a
            # sleeping (virtual) CPU takes tens of microseconds to wake. With
            # more sleds there is work waiting most of the time, and spinning
            # would only take CPU from whatever else runs on this host (16
            # emulated sleds on 2 cores: twice as slow with it).
            spin = self.busy_poll if len(self.sleds) <= 1 else 0.0
            if self._handle(rx, timeout, spin, self._wake_r):
                return 0
            now = time.monotonic()
            inline.serve_one()
            if self._failure is not None:
                raise self._failure
            if self.once and self.finished:
                return 0
            if now >= next_tick:
                next_tick = now + 1.0
                with self._lock:
                    self._sync(rx, now)
                    self._tick(now)
        return 0

    def _handle(self, rx: Receiver, timeout: float, spin: float = 0.0,
                wake_fd: int = -1) -> bool:
        """Wait on `rx` (see :meth:`Receiver.receive`) and act on what the C
        core left to Python; True once the single boot asked for (-s) is done."""
        received = rx.receive(timeout, spin, wake_fd)
        flagged = rx.flagged()
        if not received and not flagged:
            return False
        now = time.monotonic()
        with self._lock:
            if flagged:
                self._block(flagged, now)
            for buf in received:
                for action in self._decide(buf, now):
                    self._got_hello |= self._act(action, now, rx)
                    if self.once and self.finished:
                        return True
        return False

    def _worker(self, rx: Receiver) -> None:
        """A receive loop of its own (workers after the first): its share of
        the sleds, split by the fanout, answered on its core."""
        rx.owner = threading.get_ident()
        next_tick = next_snapshot = time.monotonic() + 1.0
        try:
            while not self._stop:
                now = time.monotonic()
                timeout = 0.0 if rx.tx.pending else \
                    min(max(0.0, next_tick - now), SNAPSHOT_SECONDS)
                if self._handle(rx, timeout):
                    os.write(self._wake_w, b"x")  # the main loop returns
                now = time.monotonic()
                rx.tx.serve_one()
                if now >= next_snapshot:
                    # Fresh counters for the main loop's stats (lag < 0.1 s).
                    next_snapshot = now + SNAPSHOT_SECONDS
                    rx.snapshot()
                if now >= next_tick:
                    next_tick = now + 1.0
                    with self._lock:
                        self._sync(rx, now)
        except BaseException as e:  # handed to the main loop
            self._failure = e
            os.write(self._wake_w, b"x")

    def receiver_for(self, mac: bytes) -> Receiver:
        """The receiver (and worker) whose socket gets `mac`'s frames."""
        return self.receivers[lib.ox_fanout_index(mac, len(self.receivers))]

    def _forget_sled(self, mac: bytes, keep_queue: bool = False) -> SledState | None:
        """The sled's session is over here: no more DATA from its state."""
        self.receiver_for(mac).drop(mac)
        if not keep_queue:
            self.pool.forget(mac)
        return self.sleds.pop(mac, None)

    def _sync(self, rx: Receiver, now: float) -> None:
        """Once a second on `rx`'s own thread, with the lock: bring what its
        C core did into the sessions and the progress; report its errors."""
        for mac in list(rx.fast_macs):
            self._sync_fast(rx, mac)
        rx.snapshot()
        if rx.totals["errors"] > rx.errors_reported:
            rx.errors_reported = rx.totals["errors"]
            message = os.strerror(rx.last_errno)
            self.log.event("error", f"transmit failed: {message}", message=message)
            self.errors += 1

    def _sync_fast(self, rx: Receiver, mac: bytes) -> int:
        """Bring what the C core did for `mac`'s READs into the protocol's
        session and the progress; returns the DATA frames it sent (on
        `rx`'s thread only)."""
        fast = rx.progress(mac)
        if fast is None:
            return 0
        session = self.proto.sessions.get(mac)
        if session is not None and fast.last_seen:
            session.last_seen = max(session.last_seen, fast.last_seen)
            session.high_water = max(session.high_water, fast.high)
        sled = self.sleds.get(mac)
        if sled is not None:
            sled.high = max(sled.high, min(fast.high, sled.image.size))
        return fast.frames

    def _block(self, flagged: list[bytes], now: float) -> None:
        """Have the kernel drop the frames of the hosts the policer flagged."""
        for mac in flagged:
            strikes = self._strikes.pop(mac, 0) + 1
            self._strikes[mac] = strikes  # most recent last
            if len(self._strikes) > STRIKES_KEPT:
                del self._strikes[next(iter(self._strikes))]
            secs = min(BLOCK_SECONDS * 2 ** (strikes - 1), BLOCK_MAX_SECONDS)
            self.blocked[mac] = now + secs
            self.blocks += 1
            # Its queued DATA jobs go too: the flood is over for this host.
            self._forget_sled(mac)
            self.log.event("blocked", f"{mac_str(mac)} floods (over {self._read_rate:g} "
                           f"frames/s): its frames are dropped for {secs:g} s",
                           mac=mac_str(mac), seconds=secs, strikes=strikes)
        self._apply_blocklist(now)

    def _apply_blocklist(self, now: float) -> None:
        for mac in [m for m, until in self.blocked.items() if until <= now]:
            del self.blocked[mac]
            self.log.event("unblocked", f"{mac_str(mac)} unblocked", mac=mac_str(mac))
        # The most recent offenders if there are more than one filter holds
        # (the rest are still policed per frame in C).
        latest = sorted(self.blocked, key=self.blocked.__getitem__)[-MAX_BLOCKED:]
        try:
            for r in self.receivers:
                r.link.block_sources(latest)
        except OSError as e:
            self.log.event("error", str(e), message=str(e))

    def _decide(self, buf: bytes, now: float) -> list[object]:
        # READs are nearly all the traffic: the C core reduces them to their
        # due offsets; every other frame is parsed in Python.
        if buf[18:22] == _READ_TYPE:
            n = lib.ox_read_offsets(buf, len(buf), self._offsets)
            if n >= 0:
                return self.proto.receive_read(buf[6:12], buf[0:6],
                                               ffi.unpack(self._offsets, n), now)
        return self.proto.receive_bytes(buf, now)

    def _act(self, action: object, now: float, rx: Receiver) -> bool:
        """Carry out one action decided on a frame `rx` received (on its
        thread, with the lock); True if it answered a HELLO."""
        match action:
            case ServeData(dst=dst, src=src, image=index, offsets=offsets):
                sled = self.sleds.get(dst)
                if sled is None:  # resumed after a restart: the current version
                    img = self.images[index]
                    if img is None:
                        rx.link.send(SendReset(dst, src).frame().pack())
                        return False
                    sled = self.sleds[dst] = SledState(img, index, now)
                img = sled.image
                # The session's own version of the image, even if the file
                # has been replaced since: never a mix of two versions.
                self.pool.submit(Job(dst, src, img, offsets))
                sled.high = max(sled.high, min(max(offsets) + CHUNK, img.size))
                if rx.fast and dst not in rx.fast_macs and src == self.macs[sled.index]:
                    # From now on its READs are answered in C.
                    session = self.proto.sessions.get(dst)
                    high = min(session.high_water if session is not None else 0, _U64_MAX)
                    rx.serve(dst, src, img.ptr, img.size, high)
                return False
            case SendOffer(dst=dst, src=src, image=index):
                img = self._refresh(index)
                if img is None:
                    return True
                rx.link.send(SendOffer(dst, src, index, img.offer).frame().pack())
                self.log.event("offer", f"{mac_str(dst)} offered {img.name}",
                               mac=mac_str(dst), image=str(img.path), index=index)
                # A HELLO starts over: the sled will boot what it was offered now.
                self._forget_sled(dst)
                # Remember which version this OFFER carried, for the session.
                self._offered[(dst, index)] = img
                return True
            case SendReset(dst=dst):
                rx.link.send(action.frame().pack())
                self._forget_sled(dst)
                self.log.event("reset", f"{mac_str(dst)} reset (no session for its READ)",
                               mac=mac_str(dst))
            case SessionStarted(mac=mac, image=index):
                sled = self._offered.pop((mac, index), None)
                img = sled or self.images[index]
                if img is not None:
                    self.sleds[mac] = SledState(img, index, now)
                    self.log.event("start", f"{mac_str(mac)} is booting {img.name}",
                                   mac=mac_str(mac), image=str(img.path))
            case SessionFinished(mac=mac, image=index):
                fast_frames = self._sync_fast(rx, mac)
                sled = self._forget_sled(mac, keep_queue=True)
                self.finished += 1
                if sled is not None:
                    secs = max(now - sled.started, 1e-6)
                    sled.frames = self.pool.frames_for(mac) + fast_frames
                    self.log.event(
                        "finished",
                        f"{mac_str(mac)} finished {sled.image.name}: {human(sled.image.size)} "
                        f"in {secs:.2f} s ({sled.image.size / secs / 1e6:.1f} MB/s, "
                        f"{sled.frames} frames)",
                        mac=mac_str(mac), image=str(sled.image.path), seconds=round(secs, 3),
                        frames=sled.frames, bytes=sled.image.size)
                else:
                    self.log.event("finished", f"{mac_str(mac)} finished", mac=mac_str(mac))
            case Ignored():
                pass
        return False


    def stats(self) -> dict[str, object]:
        """Counters for monitoring and benchmarks (JSON-ready)."""
        t = os.times()
        for r in self.receivers:
            packets, drops = r.rx_stats()
            self._rx_packets += packets
            self._rx_drops += drops
        police = {k: sum(r.police_counts[k] for r in self.receivers) for k in POLICE_FIELDS}
        fast = {k: sum(r.totals[k] for r in self.receivers) for k in TOTAL_FIELDS}
        counters = dict(self.proto.counters)
        # READs answered in C count as the protocol layer would have.
        for key in ("reads", "offsets", "retransmits"):
            counters[key] = counters.get(key, 0) + fast[key]
        counters["frames"] = counters.get("frames", 0) + fast["reads"]
        tx = self.pool.totals()
        for key in ("frames", "bytes", "syscalls", "errors"):
            tx[f"tx_{key}"] += fast[key]
        tx["tx_jobs"] += fast["reads"]
        return {**counters, "sessions_created": counters.get("sessions", 0),
                "rx_packets": self._rx_packets, "rx_drops": self._rx_drops,
                "rx_policed": police["policed"], "rx_foreign": police["foreign"],
                "rx_accepted": police["accepted"],
                "sources_blocked": self.blocks, "blocked_now": len(self.blocked),
                "rx_served_in_c": police["served"],
                "rx_served_per_worker": [r.police_counts["served"] for r in self.receivers],
                **tx, "workers": len(self.pool.workers),
                "tx_methods": [w.link.tx_method for w in self.pool.workers],
                "cpu_user": t.user,
                "cpu_system": t.system,
                # Live values last: the protocol's counters of the same names
                # count events, these are states.
                "sessions": len(self.proto.sessions), "finished": self.finished}

    def _tick(self, now: float) -> None:
        if self.log.json:
            self.log.event("stats", "", **self.stats())
        for message in self.pool.errors():
            self.log.event("error", f"transmit failed: {message}", message=message)
            self.errors += 1
            if self.once:
                raise BootError(f"transmit failed: {message}")
        self.proto.expire(now)
        if any(until <= now for until in self.blocked.values()):
            self._apply_blocklist(now)
        for key in [k for k in self._offered if k[0] not in self.proto.sessions]:
            del self._offered[key]
        rows = []
        for mac, sled in list(self.sleds.items()):
            if mac not in self.proto.sessions:
                self._forget_sled(mac)
                continue
            secs = max(now - sled.started, 1e-6)
            done = sled.high
            rate = done / secs
            pct = 100.0 * done / sled.image.size
            eta = (sled.image.size - done) / rate if rate else 0.0
            if self.log.json:
                self.log.event("progress", "", mac=mac_str(mac), image=str(sled.image.path),
                               percent=round(pct, 1), mbps=round(rate / 1e6, 2),
                               eta=round(eta, 1))
            rows.append(f"{mac_str(mac)}  {sled.image.name[:24]:<24} {pct:5.1f}%  "
                        f"{rate / 1e6:7.1f} MB/s  ETA {eta:4.0f} s")
        if self.log.progress:
            self.log.show_progress(rows)

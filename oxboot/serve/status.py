"""Each sled's boot as an operator sees it, the link health, and the
server's status document (``/status``, ``/metrics``, the live table).

The server loop tells the :class:`StatusBoard` what happens, with its lock
held, from whichever receive thread handles the sled: an OFFER, a session
started, DATA sent from Python, the C core's counters for the sled, the
end. :meth:`StatusBoard.publish` then builds one JSON-ready document and
swaps it in as :attr:`StatusBoard.document`; other threads (the HTTP
listener, the live table) only ever read that reference, so they never
take the frame path's lock.

Link health: the OS client asks again for an offset only when its DATA has
not come within a second, and starts no new batch until the current one is
complete, so each lost DATA frame stalls that sled about a second. The
board counts, per sled, the offsets asked again (below the session's
high-water mark: the OS client's batches only move forward) and the READs
that did so, and warns (``lossy_link``) when the share of offsets asked
again over the last few seconds passes :data:`LOSSY_SHARE`.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from oxboot import __version__
from oxboot.link import mac_str
from oxboot.protocol import DATA_HDR_LEN, RETRANSMIT_AFTER, Session
from oxboot.serve.events import EventLog
from oxboot.serve.images import ServedImage
from oxboot.serve.receiver import FastProgress

#: A booting sled silent for this long is shown stalled (the OS client
#: sends a READ at least every second while it waits for DATA).
STALL_SECONDS = 3.0
#: Sleds that finished, were reset or went silent stay on the board, in
#: /status and in the per-sled metrics this long, then are dropped: a
#: server that runs for months keeps no more than the last minutes.
KEEP_SECONDS = 300.0
#: At most this many sleds on the board; past it the longest-ended go first.
MAX_SLEDS = 4096
#: Seconds of progress a sled's (and the server's) MB/s is measured over.
RATE_WINDOW = 2.0
#: lossy_link: the share of offsets asked again over LOSSY_WINDOW seconds
#: above which a sled's link is reported, at most every LOSSY_REPEAT seconds.
LOSSY_SHARE = 0.001
LOSSY_WINDOW = 5.0
LOSSY_REPEAT = 30.0
#: Warnings (and errors) kept for the table and /status.
RECENT_WARNINGS = 8
#: Image versions remembered for the sessions still on them.
KNOWN_VERSIONS = 64
#: The HTTP listener's port when --listen names none, and where `oxboot
#: status` looks by default (on 127.0.0.1).
DEFAULT_STATUS_PORT = 9187
#: How often the document is rebuilt while someone watches (the live
#: table, the HTTP listener); otherwise once a second.
PUBLISH_SECONDS = 0.25

# States, as the table and /status name them.
OFFERED, BOOTING, FINISHED, RESET, STALLED = "offered", "booting", "finished", "reset", "stalled"
ENDED = (FINISHED, RESET, STALLED)


@dataclass
class Counts:
    """What one source (a Python session, a C session table entry) counted
    for a sled's boot."""

    reads: int = 0
    offsets: int = 0  # offsets asked for
    reasked: int = 0  # of them, asked again (below the high-water mark)
    repeats: int = 0  # READs that asked again for at least one offset
    frames: int = 0  # DATA frames sent
    bytes: int = 0  # DATA payload bytes sent (each resend counted again)

    def plus(self, other: Counts) -> Counts:
        return Counts(self.reads + other.reads, self.offsets + other.offsets,
                      self.reasked + other.reasked, self.repeats + other.repeats,
                      self.frames + other.frames, self.bytes + other.bytes)

    @classmethod
    def of_fast(cls, fast: FastProgress) -> Counts:
        # The C core counts frame bytes; the payload is what the metrics say.
        return cls(fast.reads, fast.offsets, fast.retransmits, fast.repeats, fast.frames,
                   fast.bytes - fast.frames * DATA_HDR_LEN)


@dataclass
class ImageInfo:
    """What the board shows of an image version."""

    index: int
    name: str
    path: str
    size: int
    sha256: str
    version: int  # 1 for the file loaded at start-up, +1 per new version

    def as_dict(self) -> dict[str, object]:
        return {"index": self.index, "name": self.name, "path": self.path, "size": self.size,
                "sha256": self.sha256, "version": self.version}


@dataclass
class SledRecord:
    """One sled on the board: its current (or last) boot and, for the
    metrics, what it was sent over all its boots while on the board."""

    mac: bytes
    state: str
    seen: float  # monotonic: its last frame (HELLO, READ, FINISHED)
    image: ImageInfo | None = None
    offered: list[ImageInfo] = field(default_factory=list)
    started: float | None = None  # monotonic
    started_wall: float | None = None
    ended: float | None = None  # monotonic: finished, reset or given up on
    ended_wall: float | None = None
    high: int = 0  # end of the furthest chunk asked for
    python: Counts = field(default_factory=Counts)  # READs answered in Python
    session: Counts = field(default_factory=Counts)  # the protocol's session's
    fast: Counts = field(default_factory=Counts)  # the C table entry's, live
    banked: Counts = field(default_factory=Counts)  # C entries since dropped
    earlier: Counts = field(default_factory=Counts)  # earlier boots on the board
    boots: int = 0
    samples: deque[tuple[float, int, int, int]] = field(default_factory=deque)
    warned: float | None = None  # monotonic: the last lossy_link warning
    warnings: int = 0
    repair_frames: int = 0  # DATA resent by batch repair this boot (lost frames, or a slow sled)
    repair_frames_earlier: int = 0  # in earlier boots on the board

    # -- what happened --

    def new_boot(self, state: str, now: float) -> None:
        """A HELLO (or a session resumed) starts over: last boot's counts
        go to the cumulative ones."""
        self.earlier = self.earlier.plus(self.boot_counts())
        self.repair_frames_earlier += self.repair_frames
        self.repair_frames = 0
        self.state = state
        self.seen = now
        self.image = None
        self.offered = []
        self.started = self.started_wall = self.ended = self.ended_wall = None
        self.high = 0
        self.python, self.session, self.fast, self.banked = Counts(), Counts(), Counts(), Counts()
        self.samples = deque()
        self.warned = None

    def offer(self, image: ImageInfo, now: float) -> None:
        self.seen = now
        self.offered.append(image)

    def start(self, image: ImageInfo, now: float) -> None:
        self.state = BOOTING
        self.image = image
        self.started = self.seen = now
        self.started_wall = time.time()
        self.boots += 1
        self.samples.append((now, 0, 0, 0))

    def end(self, state: str, now: float) -> None:
        self.state = state
        self.ended = now
        self.ended_wall = time.time()
        if state == FINISHED:
            self.seen = now

    def sent_python(self, frames: int, payload: int) -> None:
        self.python = self.python.plus(Counts(frames=frames, bytes=payload))

    def take_fast(self, fast: FastProgress) -> None:
        self.fast = Counts.of_fast(fast)
        self.high = max(self.high, fast.high)
        if fast.last_seen:
            self.seen = max(self.seen, fast.last_seen)

    def bank_fast(self) -> None:
        """The C entry goes (a new one would count from zero): keep its counts."""
        self.banked = self.banked.plus(self.fast)
        self.fast = Counts()

    def take_session(self, session: Session) -> None:
        self.session = Counts(session.reads, session.offsets_served, session.retransmits,
                              session.repeats)
        self.high = max(self.high, session.high_water)
        self.seen = max(self.seen, session.last_seen)
        self.repair_frames = session.repair.resent

    def sample(self, now: float) -> None:
        c = self.boot_counts()
        self.samples.append((now, self.done, c.offsets, c.reasked))
        horizon = now - max(RATE_WINDOW, LOSSY_WINDOW)
        while len(self.samples) > 2 and self.samples[1][0] <= horizon:
            self.samples.popleft()

    # -- what it adds up to --

    def boot_counts(self) -> Counts:
        # The session counts READs answered in Python; its frames and bytes
        # are what the transmit queue took of them.
        s = self.session
        py = Counts(s.reads, s.offsets, s.reasked, s.repeats, self.python.frames,
                    self.python.bytes)
        return py.plus(self.banked).plus(self.fast)

    @property
    def size(self) -> int | None:
        return self.image.size if self.image is not None else None

    @property
    def done(self) -> int:
        return min(self.high, self.image.size) if self.image is not None else 0

    def _since(self, now: float, window: float) -> tuple[float, int, int, int] | None:
        """The oldest sample within `window` seconds before `now`."""
        for s in self.samples:
            if s[0] >= now - window:
                return s
        return self.samples[-1] if self.samples else None

    def rate(self, now: float) -> float:
        """Bytes per second: recent progress while booting, the boot's
        average once finished."""
        if self.state == FINISHED and self.started is not None and self.ended is not None:
            return self.done / max(self.ended - self.started, 1e-6)
        if self.state != BOOTING or now - self.seen > STALL_SECONDS:
            return 0.0
        base = self._since(now, RATE_WINDOW)
        if base is None or now - base[0] < 0.2:
            # Too early for a window: the average since the start.
            if self.started is None:
                return 0.0
            return self.done / max(now - self.started, 1e-3)
        return max(0, self.done - base[1]) / (now - base[0])

    def lossy(self, now: float) -> tuple[float, int, int] | None:
        """(share, asked again, asked) over the last LOSSY_WINDOW seconds,
        when the share passes LOSSY_SHARE."""
        base = self._since(now, LOSSY_WINDOW)
        if base is None:
            return None
        c = self.boot_counts()
        asked, again = c.offsets - base[2], c.reasked - base[3]
        if again <= 0 or asked <= 0 or again / asked <= LOSSY_SHARE:
            return None
        return again / asked, again, asked

    def state_at(self, now: float) -> str:
        if self.state == BOOTING and now - self.seen > STALL_SECONDS:
            return STALLED
        return self.state

    def as_dict(self, now: float, wall: float) -> dict[str, object]:
        c = self.boot_counts()
        total = self.earlier.plus(c)
        size = self.size
        rate = self.rate(now)
        state = self.state_at(now)
        eta = (size - self.done) / rate if state == BOOTING and rate > 0 and size else None
        image = self.image.as_dict() if self.image is not None else None
        return {
            "mac": mac_str(self.mac), "state": state, "image": image,
            "offered": [i.name for i in self.offered],
            "size": size, "bytes": self.done,
            "percent": round(100.0 * self.done / size, 1) if size else 0.0,
            "mbps": round(rate / 1e6, 2), "eta": None if eta is None else round(eta, 1),
            "bytes_sent": c.bytes, "frames_sent": c.frames, "reads": c.reads,
            "offsets": c.offsets, "reasked": c.reasked, "repeated_reads": c.repeats,
            "reasked_share": round(c.reasked / c.offsets, 6) if c.offsets else 0.0,
            "since_last_frame": round(max(0.0, now - self.seen), 1),
            "started": self.started_wall, "finished": self.ended_wall,
            "seconds": None if self.started is None else
            round((self.ended if self.ended is not None else now) - self.started, 3),
            "boots": self.boots, "lossy_link_warnings": self.warnings,
            # Over every boot of this sled while it is on the board (metrics).
            "total_bytes_sent": total.bytes, "total_frames_sent": total.frames,
            "total_reasked": total.reasked, "total_repeated_reads": total.repeats,
            "repair_frames": self.repair_frames,
            "total_repair_frames": self.repair_frames_earlier + self.repair_frames,
            "ended_ago": None if self.ended is None else round(now - self.ended, 1),
            "updated": wall,
        }


class StatusBoard:
    """The sleds, their boots and the server's totals; see the module doc.

    Every method but :attr:`document` is called with the server's lock
    held (the protocol state and this board are shared by its receive
    threads)."""

    def __init__(self, log: EventLog, server: dict[str, object]) -> None:
        self.log = log
        self.server = dict(server)  # link, mac, read_rate, workers, tx_methods...
        self.sleds: dict[bytes, SledRecord] = {}
        self.images: dict[int, ImageInfo] = {}  # by slot (a slot may be empty)
        self._versions: dict[tuple[int, str], ImageInfo] = {}
        self.boots_started = 0
        self.boots_finished = 0
        self.boots_reset = 0
        self.lossy_warnings = 0
        self.up_since = time.monotonic()
        self.up_since_wall = time.time()
        self._totals: deque[tuple[float, int]] = deque()  # (time, payload bytes sent)
        self.document: dict[str, object] = {}

    def describe(self, **info: object) -> None:
        """More about the server for the document (e.g. its listen URL)."""
        self.server.update(info)

    # -- images --

    def image_loaded(self, index: int, img: ServedImage) -> ImageInfo:
        """Image `index` has a (new) version: the board's view of it."""
        previous = self.images.get(index)
        version = previous.version + 1 if previous is not None else 1
        info = ImageInfo(index, img.name, str(img.path), img.size, img.header.sha256.hex(),
                         version)
        self.images[index] = info
        # Sessions keep the version they were offered, replaced or not.
        self._versions[(index, info.sha256)] = info
        while len(self._versions) > KNOWN_VERSIONS:
            del self._versions[next(iter(self._versions))]
        return info

    def _image(self, index: int, img: ServedImage) -> ImageInfo:
        info = self._versions.get((index, img.header.sha256.hex()))
        if info is None:  # a version long replaced: version unknown (0)
            info = ImageInfo(index, img.name, str(img.path), img.size,
                             img.header.sha256.hex(), 0)
        return info

    # -- what happened --

    def _record(self, mac: bytes, now: float, state: str) -> SledRecord:
        rec = self.sleds.get(mac)
        if rec is None:
            rec = self.sleds[mac] = SledRecord(mac, state, now)
            self._bound()
        return rec

    def offered(self, mac: bytes, index: int, img: ServedImage, now: float) -> None:
        """An OFFER of image `index` went to `mac` (one per image per HELLO)."""
        rec = self._record(mac, now, OFFERED)
        if rec.state != OFFERED or rec.seen != now:
            rec.new_boot(OFFERED, now)  # a new HELLO: whatever it did before is over
        rec.offer(self._image(index, img), now)

    def started(self, mac: bytes, index: int, img: ServedImage, now: float) -> None:
        rec = self._record(mac, now, BOOTING)
        if rec.state != OFFERED:
            rec.new_boot(BOOTING, now)  # resumed without a HELLO (a server restart)
        rec.start(self._image(index, img), now)
        self.boots_started += 1

    def sent_python(self, mac: bytes, frames: int, payload: int) -> None:
        rec = self.sleds.get(mac)
        if rec is not None:
            rec.sent_python(frames, payload)

    def fast(self, mac: bytes, fast: FastProgress) -> None:
        """The C core's counters for `mac`'s session entry (its owner's thread)."""
        rec = self.sleds.get(mac)
        if rec is not None and rec.state == BOOTING:
            rec.take_fast(fast)

    def bank_fast(self, mac: bytes) -> None:
        rec = self.sleds.get(mac)
        if rec is not None:
            rec.bank_fast()

    def observe(self, mac: bytes, session: Session | None, now: float) -> None:
        """Bring in the protocol session's counters; sample; check the link."""
        rec = self.sleds.get(mac)
        if rec is None or rec.state != BOOTING:
            return
        if session is not None:
            rec.take_session(session)
        rec.sample(now)
        self._check_link(rec, now)

    def finished(self, mac: bytes, now: float) -> None:
        self.boots_finished += 1
        rec = self.sleds.get(mac)
        if rec is not None and rec.state == BOOTING:
            rec.sample(now)
            self._check_link(rec, now, final=True)
            rec.end(FINISHED, now)

    def reset(self, mac: bytes, now: float) -> None:
        self.boots_reset += 1
        rec = self._record(mac, now, RESET)
        rec.end(RESET, now)

    def gone(self, mac: bytes, now: float) -> None:
        """Its session ended without FINISHED (expired, blocked): stalled for good."""
        rec = self.sleds.get(mac)
        if rec is not None and rec.state in (OFFERED, BOOTING):
            rec.end(STALLED, now)

    # -- link health --

    def _check_link(self, rec: SledRecord, now: float, final: bool = False) -> None:
        if rec.warned is not None and now - rec.warned < LOSSY_REPEAT:
            return
        lossy = rec.lossy(now)
        if lossy is None:
            return
        share, again, asked = lossy
        rec.warned = now
        rec.warnings += 1
        self.lossy_warnings += 1
        total = rec.boot_counts().reasked
        mac = mac_str(rec.mac)
        window = min(LOSSY_WINDOW, now - (rec.started or now))
        self.log.event(
            "lossy_link",
            f"{mac} link is lossy: {total} lost frame{'s' if total != 1 else ''} this boot"
            f"{' in all' if final else ' so far'} (~{total * RETRANSMIT_AFTER:.0f} s: each "
            f"lost frame stalls the OS client about {RETRANSMIT_AFTER:g} s); {share:.2%} of "
            f"the offsets it asked for in the last {window:.0f} s were asked again ({again} "
            f"of {asked})",
            mac=mac, share=round(share, 6), reasked=again, offsets=asked,
            window=round(window, 1), reasked_boot=total,
            stall_seconds=round(total * RETRANSMIT_AFTER, 1))

    # -- bounds --

    def prune(self, now: float) -> None:
        """Drop the sleds ended (or only offered) more than KEEP_SECONDS ago."""
        for mac, rec in list(self.sleds.items()):
            last = rec.ended if rec.ended is not None else rec.seen
            if rec.state != BOOTING and now - last > KEEP_SECONDS:
                del self.sleds[mac]

    def _bound(self) -> None:
        if len(self.sleds) <= MAX_SLEDS:
            return
        idle = sorted((r for r in self.sleds.values() if r.state != BOOTING),
                      key=lambda r: r.ended if r.ended is not None else r.seen)
        for rec in idle[:len(self.sleds) - MAX_SLEDS]:
            del self.sleds[rec.mac]

    # -- the document --

    def publish(self, now: float, stats: dict[str, object], images: Sequence[dict[str, object]],
                link: str | None) -> dict[str, object]:
        """Build the status document from the board and the server's
        counters (:func:`~oxboot.serve.stats.server_stats`) and make it
        the current one."""
        wall = time.time()
        sleds = [rec.as_dict(now, wall) for rec in self.sleds.values()]
        states = [s["state"] for s in sleds]
        frames = _int(stats.get("tx_frames"))
        payload = _int(stats.get("tx_bytes")) - frames * DATA_HDR_LEN
        self._totals.append((now, payload))
        while len(self._totals) > 2 and self._totals[1][0] <= now - RATE_WINDOW:
            self._totals.popleft()
        t0, b0 = self._totals[0]
        mbps = (payload - b0) / (now - t0) / 1e6 if now - t0 > 0.1 else 0.0
        warnings = list(self.log.warnings)[-RECENT_WARNINGS:]
        doc: dict[str, object] = {
            "server": {**self.server, "version": __version__, "link_up": link is None,
                       "link_problem": link,
                       "uptime": round(now - self.up_since, 1), "started": self.up_since_wall,
                       "time": wall},
            "images": list(images),
            "sleds": sleds,
            "totals": {
                "sleds": len(sleds), "offered": states.count(OFFERED),
                "booting": states.count(BOOTING), "stalled": states.count(STALLED),
                "finished": states.count(FINISHED), "reset": states.count(RESET),
                "boots_started": self.boots_started, "boots_finished": self.boots_finished,
                "boots_reset": self.boots_reset,
                "frames_sent": frames, "bytes_sent": payload,
                "mbps": round(max(0.0, mbps), 2),
                "reads": _int(stats.get("reads")), "offsets": _int(stats.get("offsets")),
                "offsets_reasked": _int(stats.get("retransmits")),
                "repeated_reads": _int(stats.get("repeats")),
                "sources_blocked": _int(stats.get("blocked_now")),
                "sources_blocked_total": _int(stats.get("sources_blocked")),
                "lossy_link_warnings": self.lossy_warnings,
                "rx_frames": _int(stats.get("rx_packets")), "rx_drops": _int(stats.get("rx_drops")),
                "rx_policed": _int(stats.get("rx_policed")),
                "tx_errors": _int(stats.get("tx_errors")),
            },
            "warnings": warnings,
        }
        self.document = doc
        return doc


_SIOCGIFFLAGS = 0x8913
_IFF_UP, _IFF_RUNNING = 0x1, 0x40
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: the name, then ifr_flags


def link_problem(ifname: str, fd: int | None = None) -> str | None:
    """None while `ifname` is up and has a carrier, else what is wrong.
    Asked on `fd` (any socket in the link's namespace), else on a socket of
    its own (AF_UNIX: allowed wherever the server runs)."""
    req = _IFREQ.pack(ifname.encode()[:15], 0)
    try:
        if fd is None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                out = fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req)
        else:
            out = fcntl.ioctl(fd, _SIOCGIFFLAGS, req)
    except OSError as e:
        return f"link {ifname}: {e.strerror}"
    flags = _IFREQ.unpack(out)[1]
    if not flags & _IFF_UP:
        return f"link {ifname} is down"
    if not flags & _IFF_RUNNING:
        return f"link {ifname} has no carrier"
    return None


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) else 0

"""The boot server's decisions (:class:`BootServer`): frames in, actions out.

It never sends: the I/O layer (:mod:`oxboot.serve`) carries out the
:data:`Action` values and tells it what happened through its methods.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field

from oxboot.protocol.repair import (
    DEFAULT_REPAIR,
    REPAIR_BACKOFF,
    REPAIR_MODES,
    REPAIR_ROUNDS,
    REPAIR_SHARE,
    RepairState,
)
from oxboot.protocol.rules import data_frame, due_offsets
from oxboot.protocol.wire import (
    BROADCAST,
    CHUNK,
    SLOTS,
    Finished,
    Frame,
    FrameError,
    Hello,
    Offer,
    Read,
    Reset,
    check_mac,
    pack_frame,
    parse_frame,
)

#: Frames per second one host may send a server by default (bootserver
#: --read-rate): an OS client sends one READ per 128 KiB batch, so this is
#: ~1 GB/s per sled before a single frame of it is refused.
DEFAULT_READ_RATE = 8000.0

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
    repeats: int = 0  # READs that requested at least one offset again
    finished: bool = False
    high_water: int = 0  # end of the highest chunk requested so far
    offered: tuple[int, ...] = ()  # the images its HELLO was offered (one of them it boots)
    repair: RepairState = field(default_factory=RepairState)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float
    limited: bool = False


def _image_table(images: Sequence[Offer | None], server_macs: Sequence[bytes],
                 assignments: Sequence[Collection[bytes] | None] | None,
                 ) -> tuple[tuple[Offer | None, ...], tuple[bytes, ...],
                            tuple[frozenset[bytes] | None, ...]]:
    """Check a :class:`BootServer`'s image table; returns it as tuples."""
    if not images or len(images) != len(server_macs):
        raise ValueError("need one server MAC per image, and at least one image")
    if assignments is None:
        assignments = [None] * len(images)
    if len(assignments) != len(images):
        raise ValueError("need one assignment (or None) per image")
    macs = tuple(check_mac(m, "server MAC") for m in server_macs)
    if len(set(macs)) != len(macs):
        raise ValueError("server MACs must be distinct")
    if any(m[0] & 1 for m in macs):
        raise ValueError("server MACs must be unicast")
    for image, mac in zip(images, macs, strict=True):
        if image is not None:
            pack_frame(BROADCAST, mac, image)  # reject unsendable offers now
    assigned = tuple(None if hosts is None else frozenset(check_mac(m, "assigned MAC")
                                                          for m in hosts)
                     for hosts in assignments)
    return tuple(images), macs, assigned


# An OS client mid-transfer sends a READ at least every second (that is its
# retransmission timer), so one silent for this long is stalled or gone.
ACTIVE_WINDOW = 5.0


class BootServer:
    """The boot server's decisions: frames in, :data:`Action` lists out.

    ``images[i]`` is offered from ``server_macs[i]``; because the client
    sends its READs to the MAC of the offer it accepted, the destination of
    a READ says which image that client took. ``allow=None`` serves any host.

    ``images[i]`` may be None: a slot that offers nothing (an image removed
    while sleds may still be booting it, or not loaded yet); sessions already
    on it go on. ``assignments[i]`` is the set of hosts image ``i`` is offered
    to, None for every host: a host is offered only the images assigned to
    it, and a host assigned none gets no OFFER at all.
    """

    def __init__(
        self,
        images: Sequence[Offer | None],
        server_macs: Sequence[bytes],
        allow: Collection[bytes] | None,
        *,
        assignments: Sequence[Collection[bytes] | None] | None = None,
        read_rate: float = DEFAULT_READ_RATE,
        read_burst: int = 256,
        max_sessions: int = 1024,
        idle_timeout: float = 60.0,
        repair: str = DEFAULT_REPAIR,
    ) -> None:
        table = _image_table(images, server_macs, assignments)
        if read_rate <= 0 or read_burst < 1 or max_sessions < 1 or idle_timeout <= 0:
            raise ValueError("rates, burst, max_sessions and idle_timeout must be > 0")
        if repair not in REPAIR_MODES:
            raise ValueError(f"repair must be one of {', '.join(REPAIR_MODES)}")
        self.repair = repair
        self.images: tuple[Offer | None, ...] = table[0]
        self.server_macs: tuple[bytes, ...] = table[1]
        self.assignments: tuple[frozenset[bytes] | None, ...] = table[2]
        self.allow: frozenset[bytes] | None = (
            None if allow is None else frozenset(check_mac(m, "allowed MAC") for m in allow)
        )
        self.read_rate = float(read_rate)
        self.read_burst = float(read_burst)
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        # Both dicts are kept in least-recently-seen-first order (touch = move
        # to end) so eviction scans from the front and usually stops at once.
        self.sessions: dict[bytes, Session] = {}
        self.counters: Counter[str] = Counter()
        self._image_of = {mac: i for i, mac in enumerate(self.server_macs)}
        self._buckets: dict[bytes, _Bucket] = {}
        self._max_buckets = max(4 * max_sessions, 64)
        # (due, tie-break, mac) of pending repairs; an entry whose session's
        # due time has changed since is stale and skipped.
        self._repairs: list[tuple[float, int, bytes]] = []
        self._repair_seq = 0

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

    def replace_offer(self, index: int, offer: Offer) -> None:
        """Offer ``offer`` as image ``index`` from now on (a new version of
        its file); sessions already on that image keep their MAC and go on."""
        if not 0 <= index < len(self.images):
            raise IndexError(f"no image {index}")
        pack_frame(BROADCAST, self.server_macs[index], offer)  # reject unsendable offers now
        self.images = (*self.images[:index], offer, *self.images[index + 1:])

    def set_images(self, images: Sequence[Offer | None], server_macs: Sequence[bytes],
                   assignments: Sequence[Collection[bytes] | None] | None = None) -> None:
        """Replace the whole image table (a re-read configuration, a changed
        image folder), as in the constructor. Sessions in progress go on: a
        slot a session booted or was offered must keep its MAC (a client
        goes on sending its READs there), so only new slots may be added."""
        images_, macs, assigned = _image_table(images, server_macs, assignments)
        for i in self.slots_in_use():
            if i >= len(macs) or macs[i] != self.server_macs[i]:
                raise ValueError(f"image {i} is in use: its MAC cannot change")
        self.images, self.server_macs, self.assignments = images_, macs, assigned
        self._image_of = {mac: i for i, mac in enumerate(macs)}

    def slots_in_use(self) -> set[int]:
        """The image slots some session boots or was offered (and may take)."""
        used: set[int] = set()
        for s in self.sessions.values():
            if s.image is not None:
                used.add(s.image)
            else:
                used.update(s.offered)
        return used

    def set_read_rate(self, read_rate: float) -> None:
        """Meter each host's READs and HELLOs at ``read_rate`` from now on."""
        if not read_rate > 0:
            raise ValueError("the read rate must be > 0")
        self.read_rate = float(read_rate)

    def offerable(self, mac: bytes) -> list[int]:
        """The images a HELLO from ``mac`` is offered: loaded, and assigned
        to it or to every host."""
        return [i for i, (offer, hosts) in enumerate(zip(self.images, self.assignments,
                                                          strict=True))
                if offer is not None and (hosts is None or mac in hosts)]

    def note_progress(self, mac: bytes, last_seen: float, high_water: int) -> None:
        """READs of ``mac`` answered outside :meth:`receive` (the C core's
        fast path): its session was seen at ``last_seen`` and asked up to
        ``high_water``. Neither ever moves back."""
        session = self.sessions.get(mac)
        if session is not None:
            session.last_seen = max(session.last_seen, last_seen)
            session.high_water = max(session.high_water, high_water)
            if last_seen > session.repair.read_at:
                # A later READ was answered there: nothing of ours is overdue.
                session.repair.offsets, session.repair.due = (), None

    # -- batch repair (oxboot.protocol.repair) --

    def note_read(self, mac: bytes, offsets: Sequence[int], read_at: float,
                  wait: float) -> None:
        """A READ of ``mac`` answered outside :meth:`receive` (the C core)
        at ``read_at`` asking for ``offsets``, after which no READ came for
        ``wait`` seconds: repair it as one of ours (see :meth:`due_repairs`)."""
        session = self.sessions.get(mac)
        if session is None or not offsets or read_at <= session.repair.read_at:
            return
        session.last_seen = max(session.last_seen, read_at)
        session.high_water = max(session.high_water, max(offsets) + CHUNK)
        self._arm(session, tuple(offsets), read_at, wait)

    def next_repair(self) -> float | None:
        """When :meth:`due_repairs` next has something to do (None: never)."""
        heap = self._repairs
        while heap:
            due, _, mac = heap[0]
            session = self.sessions.get(mac)
            if session is not None and session.repair.due == due:
                return due
            heapq.heappop(heap)
        return None

    def repairs_due(self, now: float) -> list[bytes]:
        """The sleds :meth:`due_repairs` would send a round to at ``now``
        (for the I/O to bring in what it knows of them first)."""
        return [mac for due, _, mac in self._repairs if due <= now
                and (s := self.sessions.get(mac)) is not None and s.repair.due == due]

    def due_repairs(self, now: float,
                    accept: Callable[[bytes], bool] | None = None) -> list[ServeData]:
        """The repair rounds due at ``now``: for each established session
        whose next READ is overdue, the DATA of its last READ again, then
        again later with back-off,
        at most REPAIR_ROUNDS times. Only sessions ``accept`` takes are
        handled now (the others stay due)."""
        out: list[ServeData] = []
        later: list[tuple[float, int, bytes]] = []
        heap = self._repairs
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            due, _, mac = entry
            session = self.sessions.get(mac)
            if session is None or session.repair.due != due:
                continue  # stale
            if accept is not None and not accept(mac):
                later.append(entry)
                continue
            action = self._repair_round(session, now)
            if action is not None:
                out.append(action)
        for entry in later:
            heapq.heappush(heap, entry)
        return out

    def _arm(self, session: Session, offsets: tuple[int, ...], read_at: float,
             wait: float) -> None:
        r = session.repair
        r.offsets, r.read_at, r.wait, r.rounds = offsets, read_at, wait, 0
        r.sent_at = read_at
        if self.repair == "off" or session.finished or session.image is None:
            r.due = None
            return
        r.due = read_at + wait
        self._repair_seq += 1
        heapq.heappush(self._repairs, (r.due, self._repair_seq, session.mac))

    def _repair_round(self, session: Session, now: float) -> ServeData | None:
        r = session.repair
        r.due = None
        if session.finished or session.image is None or not r.offsets:
            return None
        offsets = r.offsets
        image = session.image
        chunks = min(session.high_water, self.images[image].data_size) // CHUNK
        if r.resent + len(offsets) > REPAIR_SHARE * (chunks + SLOTS):
            self.counters["repairs_refused"] += 1
            return None
        r.rounds += 1
        r.sent_at = now
        r.resent += len(offsets)
        self.counters["repairs"] += 1
        self.counters["repair_frames"] += len(offsets)
        if r.rounds < REPAIR_ROUNDS:
            r.due = now + r.wait * REPAIR_BACKOFF ** r.rounds
            self._repair_seq += 1
            heapq.heappush(self._repairs, (r.due, self._repair_seq, session.mac))
        return ServeData(session.mac, self.server_macs[image], image, offsets)

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
        slots = self.offerable(src)
        if not slots:
            # Assigned nothing: not even an OFFER, the sled waits as it
            # would with no server at all.
            return self._ignore(src, "no image for this host")
        session = self._new_session(src, now)
        if session is None:
            return self._ignore(src, "session table full")
        session.offered = tuple(slots)
        self.counters["offers"] += len(slots)
        return [SendOffer(src, self.server_macs[i], i, offer)
                for i in slots if (offer := self.images[i]) is not None]

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
            if self.offerable(src) != [image]:
                # Several images (or this one is not the host's) and no
                # HELLO seen: we cannot vouch for what the client was
                # offered, so make it start over.
                self.counters["resets"] += 1
                return [SendReset(src, dst)]
            # Its one image: the sled is resuming after a server restart.
            session = self._new_session(src, now)
            if session is None:
                return self._ignore(src, "session table full")
            session.offered = (image,)
        self._touch(session, now)
        if session.finished:
            return self._ignore(src, "READ after FINISHED")
        if session.image is None:
            if image not in session.offered:
                # An image this host was not offered: start over.
                del self.sessions[src]
                self.counters["resets"] += 1
                return [SendReset(src, dst)]
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
        r = session.repair
        if not again and r.offsets and now > r.sent_at:
            # A fresh batch after a READ, or after its last repair round
            # (which it most likely answers: on a link that loses a frame
            # of every batch, no sample would come otherwise), is a round
            # trip. (A re-ask's gap is the client's timer.)
            r.rtt.sample(round((now - r.sent_at) * 1e9))
        self._arm(session, tuple(offsets), now, r.rtt.wait() / 1e9)
        session.high_water = max(high, max(offsets) + CHUNK)
        session.retransmits += again
        session.repeats += again != 0
        session.offsets_served += len(offsets)
        self.counters["offsets"] += len(offsets)
        self.counters["retransmits"] += again
        self.counters["repeats"] += again != 0
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
        session.repair.due = None
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

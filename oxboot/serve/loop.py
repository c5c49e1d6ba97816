"""The boot server's loop: a raw socket, the C receive loops, and the
sans-I/O :class:`~oxboot.protocol.BootServer` that decides what to send.

This module only moves frames and carries out the protocol's actions; what
is on offer (:mod:`.catalog`: the image set, its slots, the folder), the
images and their versions (:mod:`.images`), the event log (:mod:`.events`),
the block policy (:mod:`.policy`), the counters (:mod:`.stats`) and the
operator's view (:mod:`.status`) are each their own module.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable, Collection, Sequence

from oxboot._native import ReadOffsets, fanout_index
from oxboot.errors import BootError
from oxboot.link import RawLink, image_mac, mac_str
from oxboot.privileges import drop_privileges
from oxboot.progress import human
from oxboot.protocol import (
    CHUNK,
    DEFAULT_READ_RATE,
    U64_MAX,
    BootServer,
    Ignored,
    MsgType,
    SendOffer,
    SendReset,
    ServeData,
    SessionFinished,
    SessionStarted,
    data_extent,
)
from oxboot.protocol.repair import DEFAULT_REPAIR
from oxboot.serve.catalog import ImageCatalog, norm
from oxboot.serve.config import DEFAULT_WORKERS, ImageEntry, ServerConfig
from oxboot.serve.events import EventLog
from oxboot.serve.images import ImageStore, ServedImage
from oxboot.serve.policy import BlockPolicy
from oxboot.serve.receiver import READ_BURST, Receiver
from oxboot.serve.stats import RxTotals, SledState, server_stats
from oxboot.serve.status import PUBLISH_SECONDS, StatusBoard, link_problem
from oxboot.serve.txworkers import Job, TxPool
from oxboot.serve.watch import DirWatch

_READ_TYPE = int(MsgType.READ).to_bytes(4, "big")
_HELLO_TYPE = int(MsgType.HELLO).to_bytes(4, "big")

#: Seconds the server polls its socket without sleeping after a frame (the
#: faithful client's boot: ~400 -> ~490 MB/s here, BENCHMARKS.md).
DEFAULT_BUSY_POLL = 0.001
#: The protocol layer's READ meter against the C policer's rate (both per
#: host): it only sees what the policer let through, and must not refuse a
#: host the policer found within its rate (the policer reads its clock once
#: per drain, the protocol layer once per frame).
PROTOCOL_RATE_MARGIN = 1.25

#: How often receive threads other than the main loop copy their C counters
#: for the stats (which the main loop reports each second).
SNAPSHOT_SECONDS = 0.1


class Server(ImageCatalog):
    """Serve images on one link until stopped (or, with `once`, one boot).

    `assignments[i]`, if given, is the set of sleds `images[i]` is offered
    to (None: every sled). With `image_dir`, every valid image in that
    folder is served too (offered to every sled), and files added, replaced
    or removed there count from the next HELLO. On SIGHUP, `reload` (a
    re-read configuration file) gives the images, their assignments and the
    read rate anew; boots in progress go on with the version they started.
    SIGTERM and SIGINT stop the server cleanly (:meth:`run` returns 0).
    `listen` (``ADDR:PORT`` of the HTTP status/metrics listener) is kept
    for the listener, which is not part of this class.
    """

    def __init__(self, link: str, images: Sequence[str | os.PathLike[str]],
                 allow: Sequence[bytes] | None, *, once: bool = False,
                 hello_timeout: float | None = None, log: EventLog | None = None,
                 tx_method: str = "auto", scratch: str | None = None,
                 read_rate: float = DEFAULT_READ_RATE, workers: int | None = None,
                 user: str | None = None, busy_poll: float = DEFAULT_BUSY_POLL,
                 fast_path: bool = True, repair: str = DEFAULT_REPAIR,
                 on_ready: Callable[[Server], None] | None = None,
                 assignments: Sequence[Collection[bytes] | None] | None = None,
                 image_dir: str | os.PathLike[str] | None = None,
                 listen: str | None = None,
                 reload: Callable[[], ServerConfig] | None = None) -> None:
        self.log = log or EventLog()
        self.listen = listen
        self._reloader = reload
        self._reload_pending = False
        self.stopped_by: str | None = None
        if assignments is not None and len(assignments) != len(images):
            raise ValueError("one assignment (or None) per image")
        sleds = assignments or [None] * len(images)
        self._plan = tuple(ImageEntry(norm(p), None if a is None else frozenset(a))
                           for p, a in zip(images, sleds, strict=True))
        self._image_dir = norm(image_dir) if image_dir is not None else None
        self._watch = DirWatch(self._image_dir) if self._image_dir is not None else None
        self.store = ImageStore(images, scratch, self.log, strict=once,
                                on_new_version=self._new_version,
                                required=image_dir is None)
        if self._watch is not None:
            if self._watch.fallback:
                self.log.event("warning", f"{self._image_dir}: changes found by comparing "
                               f"its listing ({self._watch.fallback})",
                               message=self._watch.fallback)
            wanted = self._wanted()
            for path in wanted:
                if self._slot_of(path) is None:
                    free = [i for i, q in enumerate(self.store.paths) if q is None]
                    self.store.add(path, free)
        self.link = RawLink(link, [])
        self.macs = [image_mac(self.link.mac, i) for i in range(len(self.store))]
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
        self._tx_method = tx_method
        self._user = user
        self.receivers: list[Receiver] = []
        try:
            timed = repair != "off"  # the C core times the READs it answers
            self.receivers.append(Receiver(self.link, self.pool.inline, read_rate, fast, timed))
            if fast and n_workers > 1:
                group = self.link.join_fanout(None)
                for w in self.pool.workers[1:]:
                    rx = RawLink(link)
                    self.receivers.append(Receiver(rx, w, read_rate, fast, timed))
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
        self.proto = BootServer(self._offers(), self.macs,
                                None if allow is None else list(allow),
                                assignments=self._assignments(self._wanted()),
                                read_rate=read_rate * PROTOCOL_RATE_MARGIN,
                                read_burst=READ_BURST, repair=repair)
        # The protocol state and the I/O layer's bookkeeping are shared by
        # the receive threads: whoever handles a frame or a tick holds this.
        self._lock = threading.RLock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._failure: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._got_hello = False
        self.policy = BlockPolicy()
        self.once = once
        self.busy_poll = busy_poll
        self.hello_timeout = hello_timeout
        self.sleds: dict[bytes, SledState] = {}
        self.finished = 0
        self.errors = 0  # transmit errors (the store counts the images')
        self.on_ready = on_ready
        self._offered: dict[tuple[bytes, int], ServedImage] = {}
        self._read_offsets = ReadOffsets()
        self._rx_totals = RxTotals()
        self._stop = False
        methods = [w.link.tx_method for w in self.pool.workers]
        # What the operator sees (the live table, /status, /metrics).
        self.status = StatusBoard(self.log, {
            "link": link, "mac": mac_str(self.link.mac), "read_rate": read_rate,
            "workers": n_workers, "tx_methods": methods})
        #: Rebuild the status document PUBLISH_SECONDS apart (someone
        #: watches: the live table, the HTTP listener), not once a second.
        self.live_status = False
        self._link_problem: str | None = None
        for i, img in enumerate(self.store.images):
            if img is not None:
                self.status.image_loaded(i, img)
        fallbacks = sorted({w.link.tx_fallback for w in self.pool.workers} - {""})
        self.log.event("transmit", f"DATA leaves by {', '.join(methods)} (worker by worker)"
                       + (f"; AF_XDP not used: {'; '.join(fallbacks)}" if fallbacks else ""),
                       methods=methods, fallbacks=fallbacks)
        for i, img in enumerate(self.store.images):
            if img is not None:
                self._image_event(i, img)
        if not any(self.store.images):
            self.log.event("warning", f"no image to serve yet: waiting for one in "
                           f"{self._image_dir}", message="no image to serve yet")

    def _apply_read_rate(self, read_rate: float) -> None:
        """Police each host at `read_rate` from now on (both lines of defence)."""
        self._read_rate = read_rate
        self.proto.set_read_rate(read_rate * PROTOCOL_RATE_MARGIN)
        for r in self.receivers:
            r.set_read_rate(read_rate)

    # ---- the loop ---------------------------------------------------------

    def stop(self, reason: str | None = None) -> None:
        """End :meth:`run` (from a signal handler, or another thread)."""
        self.stopped_by = self.stopped_by or reason
        self._stop = True

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum == signal.SIGHUP:
            # Done by the loop, between frames, within a second.
            self._reload_pending = True
            return
        self.stop(signal.Signals(signum).name)
        try:
            os.write(self._wake_w, b"x")  # the main loop's wait returns now
        except OSError:
            pass

    def _install_signals(self) -> Callable[[], None]:
        """SIGTERM, SIGINT: stop cleanly; SIGHUP: re-read the configuration.
        Returns what puts the previous handlers back (only the main thread
        may set them: run elsewhere, nothing changes)."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return restore

    def run(self) -> int:
        restore = self._install_signals()
        try:
            return self._loop()
        finally:
            self._stop = True
            for t in self._threads:
                t.join(5)
            for r in self.receivers:  # their threads are done: counters are final
                r.snapshot()
            self.pool.drain()
            self._final_publish()
            stats = self.stats()
            if self.stopped_by is not None:
                self.log.event("stopped", f"stopped by {self.stopped_by}: {self.finished} "
                               f"boots finished", signal=self.stopped_by,
                               finished=self.finished)
            self.log.event("stats", f"boots finished: {self.finished}, DATA frames sent: "
                           f"{stats.get('tx_frames', 0)}", final=True, **stats)
            self.pool.stop()
            for r in self.receivers[1:]:
                r.link.close()
            self.link.close()
            if self._watch is not None:
                self._watch.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            restore()

    def _final_publish(self) -> None:
        """The status as the server ends (the live table's last picture)."""
        try:
            with self._lock:
                self._publish(self.receivers[0], time.monotonic())
        except Exception as e:  # never hides why the server stopped
            self.log.event("error", f"final status: {e}", message=str(e))

    def _loop(self) -> int:
        start = time.monotonic()
        rx = self.receivers[0]
        rx.owner = threading.get_ident()
        for i, other in enumerate(self.receivers[1:], 1):
            t = threading.Thread(target=self._worker, args=(other,), name=f"oxboot-rx{i}",
                                 daemon=True)
            self._threads.append(t)
            t.start()
        next_tick = next_publish = start + 1.0
        with self._lock:
            self._publish(rx, start)
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
                timeout = max(0.0, min(next_tick, next_publish,
                                       start + (self.hello_timeout or 1e9),
                                       self._next_repair()) - now)
            # Busy-poll a moment after each READ while one sled boots: an OS
            # client's next READ comes right after our last DATA, and a
            # sleeping (virtual) CPU takes tens of microseconds to wake. With
            # more sleds there is work waiting most of the time, and spinning
            # would only take CPU from whatever else runs on this host (16
            # emulated sleds on 2 cores: twice as slow with it).
            spin = self.busy_poll if len(self.sleds) <= 1 else 0.0
            if self._handle(rx, timeout, spin, self._wake_r):
                return 0
            if self._reload_pending:
                self._reload_pending = False
                with self._lock:
                    self._reload()
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
            if now >= next_publish:
                next_publish = now + (PUBLISH_SECONDS if self.live_status else 1.0)
                with self._lock:
                    self._publish(rx, now)
        return 0

    def _handle(self, rx: Receiver, timeout: float, spin: float = 0.0,
                wake_fd: int = -1) -> bool:
        """Wait on `rx` (see :meth:`Receiver.receive`) and act on what the C
        core left to Python; True once the single boot asked for (-s) is done."""
        received = rx.receive(timeout, spin, wake_fd)
        flagged = rx.flagged()
        now = time.monotonic()
        with self._lock:
            if flagged:
                self._block(flagged, now)
            # Frames first: a READ or FINISHED that came while a repair fell
            # due (a busy or slow machine) means there is nothing to repair.
            for buf in received:
                if buf[18:22] == _HELLO_TYPE:
                    # Offers are made from the image folder as it is now.
                    self._refresh_images()
                for action in self._decide(buf, now):
                    self._got_hello |= self._act(action, now, rx)
                    if self.once and self.finished:
                        return True
            if rx.repair_due() or self._next_repair() <= now:
                self._repair(rx, now)
        return False

    def _next_repair(self) -> float:
        """When the protocol layer next has a repair round to send (inf: none)."""
        with self._lock:
            due = self.proto.next_repair()
        return math.inf if due is None else due

    def _repair(self, rx: Receiver, now: float) -> None:
        """Batch repair for `rx`'s sleds (on its thread, with the lock): the
        READs its C core answered and found overdue go to the protocol
        layer, which says what to send again (oxboot.protocol.repair)."""
        for late in rx.overdue():
            self.proto.note_read(late.sled, late.offsets, late.read_at, late.wait)
        mine = None if len(self.receivers) == 1 else \
            (lambda mac: self.receiver_for(mac) is rx)
        for mac in self.proto.repairs_due(now):
            if mac in rx.fast_macs:
                # A later READ answered in C since? Then nothing is overdue.
                self._sync_fast(rx, mac)
        for action in self.proto.due_repairs(now, mine):
            sled = self.sleds.get(action.dst)
            if sled is not None:  # the session's own version of the image
                self.pool.submit(Job(action.dst, action.src, sled.image, action.offsets))
                rx.resent(action.dst)

    def _worker(self, rx: Receiver) -> None:
        """A receive loop of its own (workers after the first): its share of
        the sleds, split by the fanout, answered on its core."""
        rx.owner = threading.get_ident()
        next_tick = next_snapshot = next_publish = time.monotonic() + 1.0
        try:
            while not self._stop:
                now = time.monotonic()
                timeout = 0.0 if rx.tx.pending else \
                    min(max(0.0, min(next_tick, self._next_repair()) - now), SNAPSHOT_SECONDS)
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
                elif self.live_status and now >= next_publish:
                    # Its sleds' C counters for the main loop's next document.
                    next_publish = now + PUBLISH_SECONDS
                    with self._lock:
                        for mac in list(rx.fast_macs):
                            self._sync_fast(rx, mac)
                    rx.snapshot()
        except BaseException as e:  # handed to the main loop
            self._failure = e
            os.write(self._wake_w, b"x")

    def receiver_for(self, mac: bytes) -> Receiver:
        """The receiver (and worker) whose socket gets `mac`'s frames."""
        return self.receivers[fanout_index(mac, len(self.receivers))]

    def _forget_sled(self, mac: bytes, keep_queue: bool = False) -> SledState | None:
        """The sled's session is over here: no more DATA from its state."""
        rx = self.receiver_for(mac)
        if mac in rx.fast_macs:
            if threading.get_ident() == rx.owner:
                self._sync_fast(rx, mac)  # its last counts, before they go
            self.status.bank_fast(mac)
        rx.drop(mac)
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
        if fast.last_seen:
            self.proto.note_progress(mac, fast.last_seen, fast.high)
        sled = self.sleds.get(mac)
        if sled is not None:
            sled.high = max(sled.high, min(fast.high, sled.image.size))
        self.status.fast(mac, fast)
        return fast.frames

    def _block(self, flagged: list[bytes], now: float) -> None:
        """Have the kernel drop the frames of the hosts the policer flagged."""
        for mac in flagged:
            secs, strikes = self.policy.block(mac, now)
            # Its queued DATA jobs go too: the flood is over for this host.
            self._forget_sled(mac)
            self.log.event("blocked", f"{mac_str(mac)} floods (over {self._read_rate:g} "
                           f"frames/s): its frames are dropped for {secs:g} s",
                           mac=mac_str(mac), seconds=secs, strikes=strikes)
        self._apply_blocklist(now)

    def _apply_blocklist(self, now: float) -> None:
        for mac in self.policy.release(now):
            self.log.event("unblocked", f"{mac_str(mac)} unblocked", mac=mac_str(mac))
        try:
            for r in self.receivers:
                r.link.block_sources(self.policy.filter_list())
        except OSError as e:
            self.log.event("error", str(e), message=str(e))

    def _decide(self, buf: bytes, now: float) -> list[object]:
        # READs are nearly all the traffic: the C core reduces them to their
        # due offsets; every other frame is parsed in Python.
        if buf[18:22] == _READ_TYPE:
            offsets = self._read_offsets(buf)
            if offsets is not None:
                return self.proto.receive_read(buf[6:12], buf[0:6], offsets, now)
        return self.proto.receive_bytes(buf, now)

    def _act(self, action: object, now: float, rx: Receiver) -> bool:
        """Carry out one action decided on a frame `rx` received (on its
        thread, with the lock); True if it answered a HELLO."""
        match action:
            case ServeData(dst=dst, src=src, image=index, offsets=offsets):
                sled = self.sleds.get(dst)
                if sled is None:  # resumed after a restart: the current version
                    img = self.store.images[index]
                    if img is None:
                        rx.link.send(SendReset(dst, src).frame().pack())
                        return False
                    sled = self.sleds[dst] = SledState(img, index, now)
                img = sled.image
                # The session's own version of the image, even if the file
                # has been replaced since: never a mix of two versions.
                if self.pool.submit(Job(dst, src, img, offsets)):
                    self.status.sent_python(dst, len(offsets), sum(
                        data_extent(img.size, offset)[1] for offset in offsets))
                sled.high = max(sled.high, min(max(offsets) + CHUNK, img.size))
                if rx.fast and dst not in rx.fast_macs and src == self.macs[sled.index]:
                    # From now on its READs are answered in C.
                    session = self.proto.sessions.get(dst)
                    high = min(session.high_water if session is not None else 0, U64_MAX)
                    rx.serve(dst, src, img, high)
                return False
            case SendOffer(dst=dst, src=src, image=index):
                img = self.store.current(index)
                if img is None:
                    return True
                rx.link.send(SendOffer(dst, src, index, img.offer).frame().pack())
                self.log.event("offer", f"{mac_str(dst)} offered {img.name}",
                               mac=mac_str(dst), image=str(img.path), index=index)
                # A HELLO starts over: the sled will boot what it was offered now.
                self._forget_sled(dst)
                self.status.offered(dst, index, img, now)
                # Remember which version this OFFER carried, for the session.
                self._offered[(dst, index)] = img
                return True
            case SendReset(dst=dst):
                rx.link.send(action.frame().pack())
                self._forget_sled(dst)
                self.status.reset(dst, now)
                self.log.event("reset", f"{mac_str(dst)} reset (no session for its READ)",
                               mac=mac_str(dst))
            case SessionStarted(mac=mac, image=index):
                sled = self._offered.pop((mac, index), None)
                img = sled or self.store.images[index]
                if img is not None:
                    self.sleds[mac] = SledState(img, index, now)
                    self.status.started(mac, index, img, now)
                    self.log.event("start", f"{mac_str(mac)} is booting {img.name}",
                                   mac=mac_str(mac), image=str(img.path))
            case SessionFinished(mac=mac, image=index):
                fast_frames = self._sync_fast(rx, mac)
                rx.snapshot()  # the totals as of its last READ, like its own counts
                self.status.observe(mac, self.proto.sessions.get(mac), now)
                sled = self._forget_sled(mac, keep_queue=True)
                self.finished += 1
                self.status.finished(mac, now)
                if sled is not None:
                    secs = max(now - sled.started, 1e-6)
                    sled.frames = self.pool.frames_for(mac) + fast_frames
                    rec = self.status.sleds.get(mac)
                    counts = rec.boot_counts() if rec is not None else None
                    again = counts.reasked if counts is not None else 0
                    self.log.event(
                        "finished",
                        f"{mac_str(mac)} finished {sled.image.name}: {human(sled.image.size)} "
                        f"in {secs:.2f} s ({sled.image.size / secs / 1e6:.1f} MB/s, "
                        f"{sled.frames} frames, {again} offsets asked again)",
                        mac=mac_str(mac), image=str(sled.image.path), seconds=round(secs, 3),
                        frames=sled.frames, bytes=sled.image.size, reasked=again,
                        repeated_reads=counts.repeats if counts is not None else 0)
                else:
                    self.log.event("finished", f"{mac_str(mac)} finished", mac=mac_str(mac))
            case Ignored():
                pass
        return False

    def stats(self) -> dict[str, object]:
        """Counters for monitoring and benchmarks (JSON-ready)."""
        return server_stats(self.proto, self.receivers, self.pool, self._rx_totals,
                            self.policy, self.finished)

    def _tick(self, now: float) -> None:
        self._refresh_images()
        if self.log.json:
            self.log.event("stats", "", **self.stats())
        for message in self.pool.errors():
            self.log.event("error", f"transmit failed: {message}", message=message)
            self.errors += 1
            if self.once:
                raise BootError(f"transmit failed: {message}")
        self.proto.expire(now)
        if self.policy.due(now):
            self._apply_blocklist(now)
        for key in [k for k in self._offered if k[0] not in self.proto.sessions]:
            del self._offered[key]
        for mac, sled in list(self.sleds.items()):
            if mac not in self.proto.sessions:
                self._forget_sled(mac)
                self.status.gone(mac, now)
                continue
            if self.log.json:
                progress = sled.progress(mac, now)
                self.log.event("progress", "", **{k: v for k, v in progress.items()
                                                  if k != "name"})
        self.status.prune(now)

    def _publish(self, rx: Receiver, now: float) -> None:
        """Bring every sled's counters to the status board (the C core's of
        `rx`, the main loop's; the other receivers' bring their own) and
        publish the status document (with the lock)."""
        for mac in list(rx.fast_macs):
            self._sync_fast(rx, mac)
        rx.snapshot()  # its C totals as fresh as the sleds' (the others' are < 0.1 s old)
        for mac in list(self.sleds):
            self.status.observe(mac, self.proto.sessions.get(mac), now)
        images = []
        for i, path in enumerate(self.store.paths):
            if path is None:
                continue  # an empty slot (an image removed from the folder)
            img = self.store.images[i]
            info = self.status.images[i].as_dict() if i in self.status.images else {}
            images.append({**info, "path": str(path), "mac": mac_str(self.macs[i]),
                           "loaded": img is not None})
        problem = link_problem(self.link.ifname, self.link.fileno())
        if problem != self._link_problem:
            self._link_problem = problem
            if problem is not None:
                self.log.event("link_down", problem, link=self.link.ifname, message=problem)
            elif self.status.document:  # not at start-up
                self.log.event("link_up", f"link {self.link.ifname} is up again",
                               link=self.link.ifname)
        self.status.publish(now, self.stats(), images, problem)

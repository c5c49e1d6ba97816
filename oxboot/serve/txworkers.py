"""Transmit workers: DATA for many sleds, on every core, fairly.

The receive loop decides (sans-I/O) what to send; the DATA it asks for is
handed to a worker thread chosen by the sled's MAC, so a sled's session
always stays on one worker. Each worker owns a transmit-only raw socket and
sends through the C core with the GIL released, so workers run truly in
parallel. Within a worker, sleds take turns one READ at a time (round
robin), and each sled may have only a few READs waiting: a host that floods
READs gets its turn like everybody else, and its excess is dropped and
counted rather than queued without bound.
"""

from __future__ import annotations

import errno
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from oxboot._native import fanout_index
from oxboot.link import RawLink

#: READs a sled may have waiting on its worker. The OS client has one READ
#: in flight at a time (plus retransmissions), so more is a misbehaving host.
MAX_PENDING = 4


class Mapped(Protocol):
    """What a worker needs of an image: a C pointer and a size."""

    ptr: object
    size: int


@dataclass
class Job:
    dst: bytes
    src: bytes
    image: Mapped
    offsets: Sequence[int]


@dataclass
class WorkerStats:
    frames: int = 0
    bytes: int = 0
    syscalls: int = 0
    jobs: int = 0
    dropped_jobs: int = 0  # a sled's queue was full
    errors: int = 0
    last_error: str | None = None
    per_sled_frames: dict[bytes, int] = field(default_factory=dict)


class TxWorker(threading.Thread):
    """One transmit thread with its own socket and per-sled round robin.

    An `inline` worker has no thread: the receive loop calls
    :meth:`serve_one` itself between reads, which saves a thread hand-off
    per READ (worker 0 is inline; the others are threads on other cores).
    """

    def __init__(self, ifname: str, tx_method: str, index: int, inline: bool = False) -> None:
        super().__init__(name=f"oxboot-tx{index}", daemon=True)
        self.inline = inline
        # With AF_XDP, worker i transmits on device queue i.
        self.link = RawLink(ifname, receive=False, tx_method=tx_method, tx_queue=index)
        self.stats = WorkerStats()
        self._queues: dict[bytes, deque[Job]] = {}
        self._turns: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._idle = threading.Event()
        self._idle.set()

    def submit(self, job: Job) -> bool:
        """Queue DATA for a sled; False if its queue is full (dropped)."""
        with self._cond:
            q = self._queues.get(job.dst)
            if q is None:
                q = self._queues[job.dst] = deque()
                self._turns.append(job.dst)
            elif len(q) >= MAX_PENDING:
                self.stats.dropped_jobs += 1
                return False
            q.append(job)
            self._idle.clear()
            if not self.inline:
                self._cond.notify()
        return True

    def forget(self, mac: bytes) -> None:
        """Drop what is queued for a sled (it rebooted or was reset)."""
        with self._cond:
            self._queues.pop(mac, None)
            self.stats.per_sled_frames.pop(mac, None)

    def _next(self) -> Job | None:
        """The next sled's next job (round robin); call with the lock held."""
        while self._turns:
            mac = self._turns.popleft()
            q = self._queues.get(mac)
            if not q:
                self._queues.pop(mac, None)
                continue
            job = q.popleft()
            if q:
                self._turns.append(mac)  # back of the line: round robin
            else:
                del self._queues[mac]
            return job
        return None

    @property
    def pending(self) -> bool:
        return bool(self._turns)

    def serve_one(self) -> bool:
        """Send one queued job, if any (inline workers)."""
        with self._cond:
            job = self._next()
            if job is None:
                self._idle.set()
                return False
        self._send(job)
        return True

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._turns and not self._stopping:
                    self._idle.set()
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._next()
            if job is not None:
                self._send(job)

    def _send(self, job: Job) -> None:
        st = self.stats
        try:
            n = self.link.send_data(job.dst, job.src, job.image.ptr, job.image.size,
                                    job.offsets)
        except OSError as e:
            st.errors += 1
            st.last_error = (
                "the image mapping is gone (file truncated?)" if e.errno == errno.EFAULT
                else str(e.strerror or e))
            return
        st.jobs += 1
        st.frames = self.link.tx.frames
        st.bytes = self.link.tx.bytes
        st.syscalls = self.link.tx.syscalls
        st.per_sled_frames[job.dst] = st.per_sled_frames.get(job.dst, 0) + n

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued job is sent."""
        if self.inline:
            while self.serve_one():
                pass
            return True
        return self._idle.wait(timeout)

    def stop(self) -> None:
        if not self.inline:
            with self._cond:
                self._stopping = True
                self._cond.notify()
            self.join(5)
        self.link.close()


class TxPool:
    """N workers; a sled is always served by the same one."""

    def __init__(self, ifname: str, workers: int, tx_method: str, threaded: bool = True) -> None:
        """`threaded`: workers after the first run threads of their own;
        otherwise every worker is inline, served by the caller's threads
        (the boot server's receive loops, one per worker)."""
        if workers < 1:
            raise ValueError("at least one worker")
        self.workers: list[TxWorker] = []
        try:
            for i in range(workers):
                self.workers.append(TxWorker(ifname, tx_method, i,
                                             inline=i == 0 or not threaded))
        except BaseException:
            for w in self.workers:
                w.link.close()
            raise
        for w in self.workers[1:]:
            if not w.inline:
                w.start()
        self.inline = self.workers[0]

    def worker_for(self, mac: bytes) -> TxWorker:
        # The receive fanout's split (source MAC bytes 2..5), so that a
        # sled's DATA goes out on the worker whose socket gets its READs.
        return self.workers[fanout_index(mac, len(self.workers))]

    def submit(self, job: Job) -> bool:
        return self.worker_for(job.dst).submit(job)

    def forget(self, mac: bytes) -> None:
        self.worker_for(mac).forget(mac)

    def frames_for(self, mac: bytes) -> int:
        return self.worker_for(mac).stats.per_sled_frames.get(mac, 0)

    def totals(self) -> dict[str, int]:
        out = {"tx_frames": 0, "tx_bytes": 0, "tx_syscalls": 0, "tx_jobs": 0,
               "tx_dropped_jobs": 0, "tx_errors": 0}
        for w in self.workers:
            s = w.stats
            out["tx_frames"] += s.frames
            out["tx_bytes"] += s.bytes
            out["tx_syscalls"] += s.syscalls
            out["tx_jobs"] += s.jobs
            out["tx_dropped_jobs"] += s.dropped_jobs
            out["tx_errors"] += s.errors
        return out

    def errors(self) -> list[str]:
        """New transmit errors since the last call."""
        out = []
        for w in self.workers:
            if w.stats.last_error is not None:
                out.append(w.stats.last_error)
                w.stats.last_error = None
        return out

    def drain(self, timeout: float = 5.0) -> None:
        for w in self.workers:
            w.drain(timeout)

    def stop(self) -> None:
        for w in self.workers:
            w.stop()

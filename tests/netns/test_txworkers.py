"""The transmit workers' per-sled queues are bounded: a host that has
MAX_PENDING READs waiting gets the rest dropped and counted
(tx_dropped_jobs), while other sleds keep their turns. Unit tests on a
fake link, then the boot server's own counters over a real veth."""


from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.lab import bootserver, events, rawpeer, wait_listening

from oxboot.netlab import Lab, wait_for
from oxboot.serve import txworkers
from oxboot.serve.txworkers import MAX_PENDING, Job, TxPool, TxWorker

A, B, SRC = b"\x02\0\0\0\0\x0a", b"\x02\0\0\0\0\x0b", b"\x02\0\0\0\0\x01"


@dataclass
class Image:
    ptr: object = None
    size: int = 1 << 20


@dataclass
class Counters:
    frames: int = 0
    bytes: int = 0
    syscalls: int = 0


@dataclass
class FakeLink:
    """Records what a worker would send; `gate` (if set) holds each send."""

    sent: list[tuple[bytes, int]] = field(default_factory=list)
    tx: Counters = field(default_factory=Counters)
    gate: threading.Event | None = None
    sending: threading.Event = field(default_factory=threading.Event)

    def send_data(self, dst: bytes, src: bytes, ptr: object, size: int,
                  offsets: list[int]) -> int:
        self.sending.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        self.sent.append((dst, offsets[0]))
        self.tx.frames += len(offsets)
        self.tx.syscalls += 1
        return len(offsets)

    def close(self) -> None:
        pass


@pytest.fixture
def fake_links(monkeypatch: pytest.MonkeyPatch) -> list[FakeLink]:
    made: list[FakeLink] = []

    def link(ifname: str, receive: bool, tx_method: str, tx_queue: int = 0) -> FakeLink:
        made.append(FakeLink())
        return made[-1]

    monkeypatch.setattr(txworkers, "RawLink", link)
    return made


def job(dst: bytes, n: int) -> Job:
    return Job(dst, SRC, Image(), [n * 1024])


def test_inline_worker_refuses_past_the_bound(fake_links: list[FakeLink]) -> None:
    w = TxWorker("fake0", "send", 0, inline=True)
    link = fake_links[0]
    assert [w.submit(job(A, i)) for i in range(MAX_PENDING)] == [True] * MAX_PENDING
    assert w.stats.dropped_jobs == 0
    assert [w.submit(job(A, i)) for i in range(MAX_PENDING, MAX_PENDING + 3)] == [False] * 3
    assert w.stats.dropped_jobs == 3
    # The bound is per sled: another one still gets in, and takes turns.
    assert w.submit(job(B, 0)) and w.submit(job(B, 1))
    assert w.serve_one()  # A's first
    assert w.submit(job(A, 99))  # room for one more of A's
    assert not w.submit(job(A, 100))
    assert w.stats.dropped_jobs == 4
    w.drain()
    assert not w.pending
    # Round robin, and only what was accepted was sent, in order per sled.
    assert link.sent == [(A, 0), (B, 0), (A, 1024), (B, 1024), (A, 2048), (A, 3072),
                         (A, 99 * 1024)]
    assert w.stats.jobs == 7 and w.stats.frames == 7
    assert w.stats.per_sled_frames == {A: 5, B: 2}
    w.stop()


def test_threaded_worker_refuses_past_the_bound(fake_links: list[FakeLink]) -> None:
    """A worker thread busy with one job (its send held): MAX_PENDING more
    of that sled's wait, the next is dropped."""
    w = TxWorker("fake0", "send", 1)
    link = fake_links[0]
    link.gate = threading.Event()
    w.start()
    try:
        assert w.submit(job(A, 0))
        assert link.sending.wait(10)  # taken off the queue, being sent
        assert all(w.submit(job(A, i)) for i in range(1, MAX_PENDING + 1))
        assert not w.submit(job(A, 99))
        assert w.stats.dropped_jobs == 1
    finally:
        link.gate.set()
    assert w.drain(10)
    assert [off for _, off in link.sent] == [i * 1024 for i in range(MAX_PENDING + 1)]
    w.stop()
    assert not w.is_alive()


def test_pool_totals_count_the_dropped_jobs(fake_links: list[FakeLink]) -> None:
    pool = TxPool("fake0", 2, "send", threaded=False)
    try:
        a, b = pool.worker_for(A), pool.worker_for(B)
        for dst in (A, B):
            for i in range(MAX_PENDING + 2):
                pool.submit(job(dst, i))
        totals = pool.totals()
        assert totals["tx_dropped_jobs"] == 4
        assert a.stats.dropped_jobs + b.stats.dropped_jobs == 4
        pool.drain()
        totals = pool.totals()
        assert totals["tx_jobs"] == 2 * MAX_PENDING and totals["tx_dropped_jobs"] == 4
    finally:
        pool.stop()


# ---- the boot server's counters ---------------------------------------------------


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 and os.environ.get("CI") != "true",
    reason="network namespaces need root (CI runs as root)",
)


@needs_root
def test_server_drops_and_counts_a_burst_of_reads(lab: Lab, images: dict,
                                                  tmp_path: Path) -> None:
    """40 READs from one host reach the server at once (it is stopped
    while they are sent; all fit in one drain): with --tx send every READ
    is queued in Python, MAX_PENDING of them are, the rest are dropped and
    counted in the server's stats."""
    srv, peer = lab.pair()
    img, _ = images["small"]
    log = tmp_path / "server.log"
    # Jobs counted exactly: no repair rounds for the last READ, which no
    # READ follows.
    server = bootserver(lab, srv, ["--json", "--tx", "send", "--repair", "off", srv.ifname,
                                   str(img), "any"], log)
    wait_listening(log)
    burst = 40
    os.killpg(server.pid, signal.SIGSTOP)
    try:
        # One image served: READs without a session are answered (a resume).
        rawpeer(peer, [{"send": {"type": "read", "dst": srv.mac(),
                                 "slots": {str(s): (8 * i + s) * 1024 for s in range(1, 9)}}}
                       for i in range(burst)])
    finally:
        os.killpg(server.pid, signal.SIGCONT)
    wait_for(lambda: any(e["event"] == "stats" and e["reads"] >= burst for e in events(log)),
             60, "the server to handle the READs")
    server.terminate()
    server.wait(15)
    stats = [e for e in events(log) if e["event"] == "stats"][-1]
    assert stats.get("final"), stats
    assert stats["reads"] == burst, stats
    assert stats["tx_jobs"] == MAX_PENDING, stats
    assert stats["tx_dropped_jobs"] == burst - MAX_PENDING, stats
    assert stats["tx_frames"] == 8 * MAX_PENDING, stats


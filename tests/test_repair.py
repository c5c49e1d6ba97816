"""Batch repair in the sans-I/O server (oxboot.protocol.repair and
BootServer.due_repairs): when a sled's next READ is overdue, the DATA of
its last READ goes again, in bounded rounds. In memory, with the time
passed in; the last tests run the OS client's model against the server
over a lossy in-memory link."""

from __future__ import annotations

import hashlib

import pytest

from oxboot.protocol import (
    BROADCAST,
    CHUNK,
    NETBOOT_ALIGN,
    SLOTS,
    BootServer,
    ClientSession,
    ClientState,
    Data,
    Finished,
    Frame,
    Hello,
    Offer,
    Read,
    ServeData,
    encode_dataset,
    parse_frame,
)
from oxboot.protocol.repair import (
    REPAIR_BACKOFF,
    REPAIR_FIRST_WAIT_NS,
    REPAIR_MARGIN_NS,
    REPAIR_MAX_WAIT_NS,
    REPAIR_MIN_WAIT_NS,
    REPAIR_ROUNDS,
    REPAIR_SHARE,
    RoundTrip,
)

MIB = 1 << 20
SLED = bytes.fromhex("a84025000001")
SLED2 = bytes.fromhex("a84025000002")
SRV = bytes.fromhex("020000000001")
SRV2 = bytes.fromhex("020000000002")
IMAGE = bytes(range(256)) * (4 * MIB // 256)  # 4 MiB: 32 batches
SHA = hashlib.sha256(IMAGE).digest()
RTT = 0.0002  # a veth's round trip here: 128 KiB in 0.2 ms


def batch(k: int) -> tuple[int, ...]:
    return tuple(k * NETBOOT_ALIGN + i * CHUNK for i in range(SLOTS))


def make(repair: str = "on", images: int = 1) -> BootServer:
    offers = [Offer(8 * MIB, len(IMAGE), SHA if i == 0 else hashlib.sha256(b"x").digest(),
                    encode_dataset("ramdisk")) for i in range(images)]
    return BootServer(offers, [SRV, SRV2][:images], None, repair=repair)


def read(server: BootServer, offsets: tuple[int, ...], now: float, src: bytes = SLED,
         dst: bytes = SRV) -> list[object]:
    slots = {(o % NETBOOT_ALIGN) // CHUNK: o for o in offsets}
    return server.receive(Frame(dst, src, Read.from_slots(slots)), now)  # type: ignore[return-value]


def started(server: BootServer, batches: int = 3, src: bytes = SLED) -> float:
    """A session that asked for `batches` batches one round trip apart;
    returns the time of its last READ."""
    server.receive(Frame(BROADCAST, src, Hello(b"hi")), 0.0)
    now = 0.0
    for k in range(batches):
        now = 1.0 + k * RTT
        read(server, batch(k), now, src)
    return now


def wait_of(server: BootServer, src: bytes = SLED) -> float:
    return server.sessions[src].repair.wait


# ---- the round trip ---------------------------------------------------


def test_round_trip_wait() -> None:
    rtt = RoundTrip()
    assert rtt.wait() == REPAIR_FIRST_WAIT_NS  # nothing measured yet
    for _ in range(50):
        rtt.sample(200_000)
    # A steady 0.2 ms: the margin over it (never under the minimum).
    assert rtt.wait() == 200_000 + REPAIR_MARGIN_NS >= REPAIR_MIN_WAIT_NS
    for _ in range(200):
        rtt.sample(3_000_000)
    assert rtt.srtt == 3_000_000 - 7 and rtt.wait() == rtt.srtt + REPAIR_MARGIN_NS
    # A jittery link waits longer, and never near the client's own 1 s timer.
    for i in range(50):
        rtt.sample(1_000_000_000 if i % 2 else 1)
    assert rtt.wait() == REPAIR_MAX_WAIT_NS



# ---- the rules -----------------------------------------------------------------------


def test_read_in_time_is_not_repaired_and_gives_the_round_trip() -> None:
    server = make()
    last = started(server, batches=20)
    r = server.sessions[SLED].repair
    assert abs(r.rtt.srtt - RTT * 1e9) < 1000
    assert r.wait == r.rtt.wait() / 1e9 < 0.002  # milliseconds, not a second
    assert server.due_repairs(last + r.wait / 2) == []
    read(server, batch(20), last + RTT)
    assert server.due_repairs(last + RTT + r.wait / 2) == []
    assert server.counters["repairs"] == 0
    # Only the last READ is ever overdue.
    assert server.due_repairs(last + 10 * r.wait) == [ServeData(SLED, SRV, 0, batch(20))]


def test_late_read_gets_its_batch_again() -> None:
    server = make()
    last = started(server)
    wait = wait_of(server)
    assert server.next_repair() == pytest.approx(last + wait)
    assert server.due_repairs(last + wait * 0.99) == []
    assert server.due_repairs(last + wait) == [ServeData(SLED, SRV, 0, batch(2))]
    assert (server.counters["repairs"], server.counters["repair_frames"]) == (1, SLOTS)
    # The READ comes after all (the repair filled the batch): the next batch.
    actions = read(server, batch(3), last + wait + 3 * RTT)
    assert actions == [ServeData(SLED, SRV, 0, batch(3))]
    assert server.due_repairs(last + wait + 3 * RTT + wait / 2) == []
    # From the repair to that READ: a round trip (the gap from the READ
    # before it holds the wait, and on a link losing a frame of every batch
    # no sample would come at all otherwise).
    assert server.sessions[SLED].repair.rtt.srtt == (7 * 200_000 + 600_000) // 8


def test_lost_read_rounds_back_off_then_stop_for_good() -> None:
    """The sled's READ was lost (or it stopped): the batch goes again
    REPAIR_ROUNDS times, each wait REPAIR_BACKOFF times longer, then never."""
    server = make()
    last = started(server)
    wait = wait_of(server)
    times, now, step = [], last + wait, wait
    for _ in range(REPAIR_ROUNDS):
        assert server.due_repairs(now - 1e-9) == []
        assert server.due_repairs(now) == [ServeData(SLED, SRV, 0, batch(2))]
        times.append(now)
        step *= REPAIR_BACKOFF
        now += step
    assert server.next_repair() is None
    assert server.due_repairs(now + 3600) == []
    assert server.counters["repairs"] == REPAIR_ROUNDS
    assert server.counters["repair_frames"] == REPAIR_ROUNDS * SLOTS
    assert times[-1] - last < 0.1  # all well before the client's 1 s timer


def test_reask_for_a_repaired_batch_arriving_late() -> None:
    """The client's 1 s re-ask for part of a batch the server already
    repaired: it is answered (the READ asked), and its own repair, should
    it be late too, resends exactly what it asked, not the batch."""
    server = make()
    last = started(server)
    wait = wait_of(server)
    assert server.due_repairs(last + wait)
    srtt = server.sessions[SLED].repair.rtt.srtt
    late = (batch(2)[17], batch(2)[90])
    assert read(server, late, last + 1.0) == [ServeData(SLED, SRV, 0, late)]
    assert server.sessions[SLED].repair.rtt.srtt == srtt  # a re-ask is no round trip
    assert server.due_repairs(last + 1.0 + wait) == [ServeData(SLED, SRV, 0, late)]
    assert server.counters["repair_frames"] == SLOTS + 2
    assert server.counters["retransmits"] == 2


def test_finished_and_hello_end_the_repairs() -> None:
    server = make()
    last = started(server)
    server.receive(Frame(SRV, SLED, Finished()), last + RTT)
    assert server.due_repairs(last + 1.0) == []
    last = started(server)  # a HELLO: the sled rebooted
    read(server, batch(0), last + 0.5)
    server.receive(Frame(BROADCAST, SLED, Hello(b"hi")), last + 0.5 + RTT)
    assert server.due_repairs(last + 2.0) == []
    assert server.counters["repairs"] == 0


def test_repair_off_never_resends() -> None:
    server = make("off")
    last = started(server)
    assert server.next_repair() is None
    assert server.due_repairs(last + 10.0) == []
    assert server.counters["repairs"] == 0


def test_only_established_sessions_are_repaired() -> None:
    server = make(images=2)
    # No session, several images: a RESET, and nothing to repair.
    read(server, batch(0), 1.0, src=SLED2)
    server.receive(Frame(BROADCAST, SLED, Hello(b"hi")), 0.0)  # offered, no READ yet
    assert server.next_repair() is None and server.due_repairs(100.0) == []


def test_flooding_host_cannot_amplify() -> None:
    """A host that asks for a whole batch of far offsets, then waits just
    long enough for a repair each time: per READ never more rounds, nor
    more offsets, than allowed; per session no more than REPAIR_SHARE times
    the image; refusals counted."""
    server = make()
    server.receive(Frame(BROADCAST, SLED, Hello(b"hi")), 0.0)
    now, asked, sent = 1.0, 0, 0
    for k in range(200):
        offsets = batch(1000 + k)  # far past the image: zero-length DATA, but DATA
        answered = read(server, offsets, now)
        assert answered[-1] == ServeData(SLED, SRV, 0, offsets)
        asked += len(offsets)
        rounds = 0
        while (due := server.next_repair()) is not None:
            now = due
            for action in server.due_repairs(now):
                assert action.dst == SLED and set(action.offsets) <= set(offsets)
                sent += len(action.offsets)
                rounds += 1
        assert rounds <= REPAIR_ROUNDS
        now += 0.001
    image_chunks = len(IMAGE) // CHUNK
    assert sent == server.counters["repair_frames"] == server.sessions[SLED].repair.resent
    assert sent <= REPAIR_SHARE * (image_chunks + SLOTS) < asked * REPAIR_ROUNDS
    assert server.counters["repairs_refused"] > 0


def test_read_answered_elsewhere_note_read_and_note_progress() -> None:
    """The C fast path answers READs itself: it reports an overdue one
    (note_read), and a later READ it answered cancels what was pending
    (note_progress)."""
    server = make()
    last = started(server, batches=1)
    server.note_progress(SLED, last + 5 * RTT, 6 * NETBOOT_ALIGN)  # READs 1..5 in C
    assert server.due_repairs(last + 1.0) == []
    server.note_read(SLED, batch(6), last + 6 * RTT, 0.001)
    assert server.due_repairs(last + 6 * RTT + 0.001) == [ServeData(SLED, SRV, 0, batch(6))]
    # An older report is ignored; a newer READ answered in C cancels round 2.
    server.note_read(SLED, batch(5), last + 5 * RTT, 0.001)
    server.note_progress(SLED, last + 7 * RTT, 7 * NETBOOT_ALIGN)
    assert server.next_repair() is None
    assert server.counters["repairs"] == 1


def test_accept_leaves_the_others_due() -> None:
    server = make()
    started(server, src=SLED)
    last = started(server, src=SLED2)
    due = last + wait_of(server, SLED2) + wait_of(server, SLED)
    assert [a.dst for a in server.due_repairs(due, accept=lambda m: m == SLED2)] == [SLED2]
    assert [a.dst for a in server.due_repairs(due)] == [SLED]


# ---- the OS client's model against the server, over a lossy link in memory -------------


def boot(server: BootServer, lose: set[int], lose_reads: set[int] = frozenset()) -> \
        tuple[ClientSession, float, int]:
    """Boot `IMAGE` in simulated time: every frame takes RTT/2 each way,
    DATA numbers in `lose` (counted from 0 as the server sends them) and
    READ numbers in `lose_reads` are lost. Returns the client, the time
    FINISHED left and the DATA frames sent."""
    client = ClientSession(SLED, SHA)
    ram = bytearray(8 * MIB)
    now, data_sent, reads_sent = 0.0, 0, 0
    inbox: list[tuple[float, Frame]] = []  # to the client
    for _ in range(100_000):
        for frame in client.poll(now):
            if isinstance(frame.msg, Read):
                reads_sent += 1
                if reads_sent - 1 in lose_reads:
                    continue
            for action in server.receive(frame, now + RTT / 2):
                if hasattr(action, "frames"):
                    for raw in action.frames(IMAGE):  # type: ignore[attr-defined]
                        if data_sent not in lose:
                            inbox.append((now + RTT, parse_frame(raw)))
                        data_sent += 1
                elif hasattr(action, "frame"):
                    inbox.append((now + RTT, action.frame()))  # type: ignore[attr-defined]
        if client.state is ClientState.DONE:
            return client, now, data_sent
        # The next event: a frame, the client's tick, or a repair.
        due = server.next_repair()
        nxt = min([t for t, _ in inbox] + [now + 0.05] + ([due] if due is not None else []))
        now = max(nxt, now)
        for action in server.due_repairs(now):
            for raw in action.frames(IMAGE):
                if data_sent not in lose:
                    inbox.append((now + RTT / 2, parse_frame(raw)))
                data_sent += 1
        ready = [f for t, f in inbox if t <= now]
        inbox = [(t, f) for t, f in inbox if t > now]
        for frame in ready:
            if client.receive(frame, now) and isinstance(frame.msg, Data):
                o = frame.msg.offset
                ram[o:o + len(frame.msg.payload)] = frame.msg.payload
    raise AssertionError("no end")


def test_model_boot_with_lost_data_repaired_without_the_client_timer() -> None:
    lose = {5 * SLOTS + 17, 9 * SLOTS + 127, 20 * SLOTS + 0, 20 * SLOTS + 64}
    server = make()
    client, took, _ = boot(server, lose)
    assert client.state is ClientState.DONE
    assert client.retransmits == 0  # no slot waited for the 1 s timer
    assert took < 0.5
    # Each repair resent its whole batch: one console line for every frame
    # the client already had.
    assert server.counters["repairs"] == 3
    assert client.dropped == 3 * SLOTS - len(lose)
    # Without repair: the 1 s timer, three times.
    server = make("off")
    client, took, _ = boot(server, lose)
    assert client.state is ClientState.DONE and client.retransmits == len(lose)
    assert took > 3.0 and client.dropped == 0 and server.counters["repairs"] == 0


def test_model_boot_with_a_lost_read() -> None:
    """A lost READ: the repairs of the batch before bring nothing (each a
    batch of console lines) and the client's timer re-asks; bounded."""
    server = make()
    client, took, _ = boot(server, set(), lose_reads={7})
    assert client.state is ClientState.DONE and client.retransmits == SLOTS
    assert server.counters["repairs"] == REPAIR_ROUNDS
    assert client.dropped == REPAIR_ROUNDS * SLOTS

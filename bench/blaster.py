"""A benchmark client that keeps the boot server busy: after HELLO/OFFER it
sends READs of 128 offsets at a fixed rate for a fixed time, without
waiting for the DATA (unlike the OS client, which waits for every chunk).
It never reads the DATA: once it has its OFFER a socket filter has the
kernel discard every frame for it, so the receive side costs the same (and
as little as it can) for every sender measured.

    python3 blaster.py IFNAME SECONDS READS_PER_SECOND [SLEDS]

SLEDS > 1 makes it several sleds at once: each says HELLO and READs from
its own locally administered source MAC, so the server keeps one session
per sled (the frames for the others arrive here too, as on a hub).

With READS_PER_SECOND 0 it only holds its socket open for SECONDS: the
same receiver, for a baseline sender such as trafgen.
"""

from __future__ import annotations

import json
import sys
import time

from oxboot._native import ffi, lib
from oxboot.link import RawLink
from oxboot.protocol import (
    BROADCAST,
    CHUNK,
    HELLO_TEXT,
    SLOTS,
    FrameError,
    Hello,
    Offer,
    Read,
    pack_frame,
    parse_frame,
)


def drop_everything(link: RawLink) -> None:
    """Have the kernel discard every frame for this socket before queueing
    it (the C core's filter that accepts nothing), so that receiving costs
    the sender's core (veth delivers in its context) as little as a real
    NIC's peer would: no queueing, no drop counters shared between cores."""
    if lib.ox_receive_nothing(link.fileno()) != 0:
        raise OSError(ffi.errno, "cannot attach a socket filter")


def sled_macs(base: bytes, n: int) -> list[bytes]:
    if n <= 1:
        return [base]
    return [bytes([0x06, 0xB0, 0x07, 0x00, i >> 8, i & 0xFF]) for i in range(n)]


def main() -> None:
    ifname, seconds, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    n_sleds = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    link = RawLink(ifname, buffer_bytes=256 << 10)
    macs = sled_macs(link.mac, n_sleds)
    if rate <= 0:
        drop_everything(link)
        time.sleep(seconds)
        print(json.dumps({"frames": 0}))
        return
    server = None
    size = 0
    deadline = time.monotonic() + 10
    while server is None and time.monotonic() < deadline:
        for mac in macs:
            link.send(pack_frame(BROADCAST, mac, Hello(HELLO_TEXT)))
        time.sleep(0.05)
        for buf in link.recv_pending():
            try:
                frame = parse_frame(buf)
            except FrameError:
                continue
            if isinstance(frame.msg, Offer):
                server, size = frame.src, frame.msg.data_size
    if server is None:
        raise SystemExit("no OFFER")
    drop_everything(link)  # from now on it only sends
    chunks = size // CHUNK
    # READs go out in bursts every TICK seconds rather than one per sleep:
    # waking a virtual CPU 24 000 times a second would cost this client
    # more of the machine than the server it measures.
    tick = 0.002
    tails: dict[int, bytes] = {}
    reads = 0
    start = time.monotonic()
    offset_chunk = 0
    while True:
        now = time.monotonic()
        if now - start >= seconds:
            break
        due = int((now - start) * rate) + 1
        while reads < due:
            tail = tails.get(offset_chunk)
            if tail is None:  # the READ after the MACs, packed once per offset
                slots = tuple(((offset_chunk + i) % chunks) * CHUNK for i in range(SLOTS))
                tail = tails[offset_chunk] = pack_frame(server, server,
                                                        Read(SLOTS, slots))[12:]
            offset_chunk = (offset_chunk + SLOTS) % chunks
            link.send(server + macs[reads % len(macs)] + tail)
            reads += 1
        time.sleep(tick)
    print(json.dumps({"reads": reads, "seconds": time.monotonic() - start}))


if __name__ == "__main__":
    main()

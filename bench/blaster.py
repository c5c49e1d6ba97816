"""A benchmark client that keeps the boot server busy: after HELLO/OFFER it
sends READs of 128 offsets at a fixed rate for a fixed time, without
waiting for the DATA (unlike the OS client, which waits for every chunk).
It never reads the DATA: its small socket queue fills and the kernel drops
the rest, so the receive side costs the same for every sender measured.

    python3 blaster.py IFNAME SECONDS READS_PER_SECOND

With READS_PER_SECOND 0 it only holds its socket open for SECONDS: the
same receiver, for a baseline sender such as trafgen.
"""

from __future__ import annotations

import json
import sys
import time

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


def main() -> None:
    ifname, seconds, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    link = RawLink(ifname, buffer_bytes=256 << 10)
    if rate <= 0:
        time.sleep(seconds)
        print(json.dumps({"frames": 0}))
        return
    server = None
    size = 0
    deadline = time.monotonic() + 10
    while server is None and time.monotonic() < deadline:
        link.send(pack_frame(BROADCAST, link.mac, Hello(HELLO_TEXT)))
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
    chunks = size // CHUNK
    reads = 0
    start = time.monotonic()
    next_at = start
    offset_chunk = 0
    while True:
        now = time.monotonic()
        if now - start >= seconds:
            break
        if now < next_at:
            time.sleep(min(next_at - now, 0.001))
            continue
        slots = tuple(((offset_chunk + i) % chunks) * CHUNK for i in range(SLOTS))
        offset_chunk = (offset_chunk + SLOTS) % chunks
        link.send(pack_frame(server, link.mac, Read(SLOTS, slots)))
        reads += 1
        next_at += 1.0 / rate
    print(json.dumps({"reads": reads, "seconds": time.monotonic() - start}))


if __name__ == "__main__":
    main()

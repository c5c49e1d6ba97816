"""A scriptable raw peer for the network tests, run inside a namespace:

    python3 rawpeer.py IFNAME SCRIPT_JSON

It speaks the protocol frame by frame (so tests can send what the OS
client never would) and prints, as JSON, every frame it received.
Script steps: {"send": {...}} builds a frame from oxboot.protocol messages;
{"wait": seconds} collects frames for that long; {"until": {"type": T,
"count": N}, "wait": seconds} collects frames until N of type T (a name of
oxboot.protocol, e.g. "Offer") arrived in this step, then `seconds` more
(for anything that should not come): a slow machine makes it wait longer,
never miss them. Up to "deadline" seconds (30), then it fails.
"""

from __future__ import annotations

import json
import sys
import time

from oxboot.link import RawLink, parse_mac
from oxboot.protocol import (
    BROADCAST,
    HELLO_TEXT,
    Finished,
    FrameError,
    Hello,
    Read,
    pack_frame,
    parse_frame,
)


def build(step: dict, me: bytes, server: bytes | None) -> bytes:
    if "raw_hex" in step:
        return bytes.fromhex(step["raw_hex"].replace("SRC", me.hex()))
    dst = BROADCAST if step.get("dst") == "broadcast" else \
        server if step.get("dst", "server") == "server" else parse_mac(step["dst"])
    if dst is None:
        raise SystemExit("no server known yet")
    src = parse_mac(step["src"]) if "src" in step else me
    kind = step["type"]
    if kind == "hello":
        return pack_frame(dst, src, Hello(HELLO_TEXT))
    if kind == "read":
        slots = [0] * 128
        for index, offset in step["slots"].items():
            slots[int(index)] = offset
        return pack_frame(dst, src, Read(step.get("noffsets", sum(1 for s in slots if s)),
                                         tuple(slots)))
    if kind == "finished":
        return pack_frame(dst, src, Finished())
    raise SystemExit(f"unknown step {step}")


def arrived(frames: list[dict], until: dict) -> bool:
    return sum(1 for f in frames if f.get("type") == until["type"]) >= until["count"]


def main() -> None:
    ifname, script = sys.argv[1], json.loads(sys.argv[2])
    link = RawLink(ifname)
    server: bytes | None = None
    got: list[dict] = []
    for step in script:
        if "send" in step:
            link.send(build(step["send"], link.mac, server))
            continue
        until = step.get("until")
        first = len(got)
        met = until is None
        deadline = time.monotonic() + (step.get("deadline", 30.0) if until else step["wait"])
        while time.monotonic() < deadline:
            if not met and arrived(got[first:], until):
                met = True
                deadline = time.monotonic() + step["wait"]
            for buf in link.recv_pending():
                item: dict = {"len": len(buf), "dst": buf[0:6].hex(":"), "src": buf[6:12].hex(":")}
                try:
                    frame = parse_frame(buf)
                except FrameError as e:
                    item["error"] = str(e)
                else:
                    msg = frame.msg
                    item["type"] = type(msg).__name__
                    if hasattr(msg, "offset"):
                        item["offset"] = msg.offset
                        item["n"] = len(msg.payload)
                        item["payload_hex"] = msg.payload.hex()
                    if type(msg).__name__ == "Offer":
                        item["sha256"] = msg.sha256.hex()
                        server = server or frame.src
                got.append(item)
            time.sleep(0.002)
        if not met and not arrived(got[first:], until):
            raise SystemExit(f"timed out waiting for {until}: got {got[first:]}")
    print(json.dumps({"mac": link.mac.hex(":"), "frames": got}))


if __name__ == "__main__":
    main()

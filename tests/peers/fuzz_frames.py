"""Hostile traffic for the network tests, run inside a lab namespace:

    python3 fuzz_frames.py fuzz IFNAME --server MAC --image-mac MAC... --spoof MAC
                                       --image-size N [--count N] [--seed S]
    python3 fuzz_frames.py flood IFNAME --server MAC [--seed S]
    python3 fuzz_frames.py hellos IFNAME [--count N] [--pause SECONDS]
    python3 fuzz_frames.py capture IFNAME --image-mac MAC --raw FILE [...]
    python3 fuzz_frames.py relay IF_A IF_B [--dup PCT] [--reorder PCT] [--seed S]

``fuzz`` sends seeded malformed and hostile frames of this protocol as fast
as a raw socket takes them and prints, as JSON, how many of each kind it
sent, and how many of them no parser may accept (``bad``).

``flood`` sends valid READs of 128 offsets to the server as fast as it can
until SIGTERM, then prints how many it sent.

``hellos`` sends one HELLO from each of N distinct MACs, paced so that the
server sees them all (a session-table flood).

``capture`` records every frame the host SENDS on IFNAME (AF_PACKET,
ETH_P_ALL, outgoing only; with ``--arriving``, every frame that arrives
there instead; with ``--skip-data-to``, but the DATA to one host) until
SIGTERM and checks each one on the fly: an
OFFER, DATA or RESET of this protocol from one of the image MACs, exactly
as long as its ``len`` says, every DATA payload equal to the image bytes at
its offset (zeros only as padding past the end). It prints a JSON summary
with the first violations. It prints ``ready`` on stderr once bound.

``relay`` forwards every frame between two interfaces (a middlebox), with
``--dup`` percent of the protocol frames sent twice and ``--reorder``
percent of the DATA frames held back 2 ms (so that later ones overtake
them): the duplicate/reorder part of netem, in user space. Prints JSON
counts on SIGTERM; ``ready`` on stderr once bound.

It deliberately does not use the oxboot package to build or check frames,
so the package's own parser is not the judge of its own output.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import random
import select
import signal
import socket
import struct
import sys
import time
from collections import Counter, deque

ETHERTYPE = 0x1DE0
MAGIC = 0x1DE12345
HELLO, OFFER, READ, DATA, FINISHED, RESET = 0x9001, 0x9102, 0x9003, 0x9104, 0x9005, 0x9106
TYPES = (HELLO, OFFER, READ, DATA, FINISHED, RESET)
CHUNK = 1024
SLOTS = 128
READ_LEN = 8 + 8 * SLOTS
MAX_DATA = 1468
MIN_PAYLOAD = 26
U64 = (1 << 64) - 1
BCAST = b"\xff" * 6
ETH_P_ALL = 3
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
SO_ATTACH_FILTER = 26
MAX_FRAME = 1514


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", "").replace("-", ""))


def hdr(dst: bytes, src: bytes, typ: int, length: int, *, magic: int = MAGIC,
        ethertype: int = ETHERTYPE) -> bytes:
    return dst + src + struct.pack("!HIII", ethertype, magic, typ, length)


def frame(dst: bytes, src: bytes, typ: int, payload: bytes, **kw: int) -> bytes:
    return hdr(dst, src, typ, len(payload), **kw) + payload


def read_payload(noffsets: int, slots: dict[int, int]) -> bytes:
    row = [0] * SLOTS
    for i, off in slots.items():
        row[i] = off
    return struct.pack(f"!Q{SLOTS}Q", noffsets, *row)


class Fuzzer:
    """Seeded generator of hostile frames; records what it made."""

    def __init__(self, rng: random.Random, me: bytes, server: bytes, image_macs: list[bytes],
                 spoof: bytes, image_size: int) -> None:
        self.rng = rng
        self.me = me
        self.server = server
        self.image_macs = image_macs
        self.spoof = spoof
        self.size = image_size
        # A pool of unicast, locally administered sources: a HELLO flood
        # from many "sleds", without filling a table without bound.
        self.pool = [bytes([0x02 | (rng.randrange(64) << 2)]) + rng.randbytes(5)
                     for _ in range(2048)]
        self.kinds: Counter[str] = Counter()
        self.bad = 0  # frames of our ethertype that no parser may accept

    # -- helpers --

    def src(self) -> bytes:
        r = self.rng.random()
        if r < 0.4:
            return self.me
        if r < 0.6:
            return self.spoof
        return self.rng.choice(self.pool)

    def dst(self) -> bytes:
        r = self.rng.random()
        if r < 0.5:
            return self.server
        if r < 0.7:
            return self.rng.choice(self.image_macs)
        if r < 0.9:
            return BCAST
        return self.rng.randbytes(6)

    def offset(self) -> int:
        rng, size = self.rng, self.size
        return rng.choice((
            U64, U64 - 1023, U64 - 1024, 1 << 63, (1 << 63) - 1, 1 << 32, rng.randrange(1 << 64),
            size, size - 1, size - 10, size - 25, size - 26, size + 1, size + CHUNK,
            rng.randrange(size // CHUNK) * CHUNK, rng.randrange(size), 1,
        ))

    # -- kinds --

    def wrong_magic(self) -> bytes:
        magic = self.rng.choice((0, 0x1DE12346, 0x4523E11D, U64 & 0xFFFFFFFF,
                                 self.rng.randrange(1 << 32)))
        if magic == MAGIC:
            magic ^= 1
        typ = self.rng.choice(TYPES)
        body = read_payload(1, {1: 1024}) if typ == READ else self.rng.randbytes(
            self.rng.randrange(0, 200))
        self.bad += 1
        return frame(self.dst(), self.src(), typ, body, magic=magic)

    def lying_len(self) -> bytes:
        rng = self.rng
        typ = rng.choice(TYPES + (0x9002,))
        body = rng.randbytes(rng.randrange(0, 1400))
        real = {READ: READ_LEN, OFFER: 176, FINISHED: 0, RESET: 0}.get(typ)
        if typ == READ:
            body = body[:rng.randrange(0, READ_LEN)]
        choices = [len(body) + 1, len(body) + 8, 0xFFFFFFFF, 0x80000000, 0x7FFFFFFF,
                   len(body) + rng.randrange(1, 1 << 31)]
        if real is not None and real > len(body):
            choices.append(real)
        length = rng.choice(choices)
        self.bad += 1
        return hdr(self.dst(), self.src(), typ, length) + body

    def runt(self) -> bytes:
        rng = self.rng
        n = rng.randrange(14, 27)
        full = frame(self.dst(), self.src(), rng.choice(TYPES), b"")
        buf = bytearray(full[:n] if rng.random() < 0.7 else
                        full[:14] + rng.randbytes(max(0, n - 14)))
        if len(buf) >= 26:  # a whole header: make it lie about the body
            buf[22:26] = struct.pack("!I", rng.randrange(1, 1 << 32))
            if struct.unpack_from("!I", buf, 18)[0] in (FINISHED, RESET):
                buf[18:22] = struct.pack("!I", READ)
        self.bad += 1
        return bytes(buf)

    def read_bad_noffsets(self) -> bytes:
        rng = self.rng
        n = rng.choice((129, 160, 1 << 63, U64, 1 << 32, 200, rng.randrange(129, 1 << 64)))
        slots = {i: self.offset() for i in rng.sample(range(SLOTS), rng.randrange(0, 129))}
        self.bad += 1
        return frame(self.dst(), self.src(), READ, read_payload(n, slots))

    def read_wrong_len(self) -> bytes:
        rng = self.rng
        body = read_payload(1, {0: 0})
        cut = rng.choice((0, 8, 1024, 1031, 1033, 1040))
        body = body[:cut] if cut <= len(body) else body + bytes(cut - len(body))
        self.bad += 1
        return frame(self.dst(), self.src(), READ, body)

    def read_zero(self) -> bytes:
        # Well formed: noffsets 0 (with all slots zero, or not).
        slots = {} if self.rng.random() < 0.5 else {self.rng.randrange(1, SLOTS): self.offset()}
        return frame(self.dst(), self.src(), READ, read_payload(0, slots))

    def read_edge_offsets(self) -> bytes:
        # Well formed, offsets near 2**64, just past the end, unaligned.
        rng = self.rng
        slots = {i: self.offset() for i in rng.sample(range(SLOTS), rng.randrange(1, 129))}
        extra = rng.choice((0, 0, 1))
        return frame(self.dst(), self.src(), READ,
                     read_payload(min(SLOTS, sum(1 for v in slots.values() if v) + extra),
                                  slots))

    def read_valid(self) -> bytes:
        base = self.rng.randrange(self.size // CHUNK) * CHUNK
        slots = {i: (base + i * CHUNK) for i in range(SLOTS) if self.rng.random() < 0.3}
        return frame(self.server if self.rng.random() < 0.7 else self.rng.choice(self.image_macs),
                     self.src(), READ, read_payload(len(slots), slots))

    def unknown_type(self) -> bytes:
        rng = self.rng
        typ = rng.choice((0, 0x9000, 0x9002, 0x9004, 0x9006, 0x9101, 0x9103, 0x9105,
                          0x9107, 0x1DE0, 0x01900000, 0xFFFFFFFF, rng.randrange(1 << 32)))
        if typ in TYPES:
            typ = 0x9007
        self.bad += 1
        return frame(self.dst(), self.src(), typ, rng.randbytes(rng.randrange(0, 100)))

    def server_msgs(self) -> bytes:
        # Well formed OFFER / DATA / RESET sent TO the server.
        rng = self.rng
        typ = rng.choice((OFFER, DATA, RESET))
        if typ == OFFER:
            body = struct.pack("!QQ", rng.randrange(1 << 64), rng.randrange(1 << 64)) + \
                rng.randbytes(32) + rng.randbytes(127) + b"\0"
        elif typ == DATA:
            body = struct.pack("!Q", self.offset()) + rng.randbytes(rng.randrange(0, MAX_DATA))
        else:
            body = b""
        return frame(self.dst(), self.src(), typ, body)

    def spoofed_garbage(self) -> bytes:
        # From the allowed client's MAC, our ethertype, a garbage body.
        rng = self.rng
        body = rng.randbytes(rng.randrange(12, 1500))
        buf = bytearray(self.dst() + self.spoof + struct.pack("!H", ETHERTYPE) + body)
        if struct.unpack_from("!I", buf, 14)[0] == MAGIC:
            buf[14] ^= 0xFF
        self.bad += 1
        return bytes(buf)

    def spoofed_sequence(self) -> bytes:
        # Valid-looking client traffic from the allowed client's MAC.
        rng = self.rng
        r = rng.random()
        if r < 0.3:
            return frame(BCAST, self.spoof, HELLO, b"Hello!  I'd like to buy a ramdisk please.")
        if r < 0.5:
            return frame(rng.choice(self.image_macs), self.spoof, FINISHED, b"")
        base = rng.randrange(self.size // CHUNK) * CHUNK
        return frame(rng.choice(self.image_macs), self.spoof, READ,
                     read_payload(2, {3: base, 100: self.offset()}))

    def own_mac(self) -> bytes:
        src = self.rng.choice(self.image_macs)
        if self.rng.random() < 0.5:
            return frame(BCAST, src, HELLO, b"Hello!")
        return frame(self.server, src, READ, read_payload(1, {5: 4096}))

    def multicast_src(self) -> bytes:
        src = bytes([0x01 | (self.rng.randrange(128) << 1)]) + self.rng.randbytes(5)
        return frame(BCAST, src, HELLO, b"Hello!")

    def hello(self) -> bytes:
        rng = self.rng
        r = rng.random()
        if r < 0.05:  # len over the 1500-byte limit (the frame cannot hold it)
            self.bad += 1
            return hdr(BCAST, self.src(), HELLO, rng.randrange(1501, 1 << 32)) + rng.randbytes(
                rng.randrange(0, 1400))
        text = b"Hello!  I'd like to buy a ramdisk please." if r < 0.7 else \
            rng.randbytes(rng.randrange(0, 1488))
        dst = BCAST if rng.random() < 0.8 else self.dst()
        src = rng.choice(self.pool) if rng.random() < 0.8 else self.src()
        return frame(dst, src, HELLO, text)

    def random_bytes(self) -> bytes:
        rng = self.rng
        n = rng.randrange(14, MAX_FRAME + 1)
        buf = bytearray(rng.randbytes(n))
        buf[6:12] = self.src()
        buf[12:14] = struct.pack("!H", ETHERTYPE)
        if n >= 18 and struct.unpack_from("!I", buf, 14)[0] == MAGIC:
            buf[14] ^= 0xFF
        self.bad += 1
        return bytes(buf)

    def finished(self) -> bytes:
        return frame(self.dst(), self.src(), FINISHED, b"")

    def oversized_tail(self) -> bytes:
        # Valid header and body, then bytes up to the largest frame.
        base = frame(self.server, self.src(), READ, read_payload(1, {7: self.offset()}))
        return base + self.rng.randbytes(MAX_FRAME - len(base))

    KINDS = {
        "wrong_magic": 10, "lying_len": 12, "runt": 8, "read_bad_noffsets": 8,
        "read_wrong_len": 5, "read_zero": 3, "read_edge_offsets": 4, "read_valid": 1,
        "unknown_type": 6, "server_msgs": 4, "spoofed_garbage": 8, "spoofed_sequence": 2,
        "own_mac": 3, "multicast_src": 2, "hello": 12, "random_bytes": 8, "finished": 2,
        "oversized_tail": 2,
    }

    def make(self, count: int) -> list[bytes]:
        names = list(self.KINDS)
        weights = [self.KINDS[n] for n in names]
        out = []
        for name in self.rng.choices(names, weights, k=count):
            self.kinds[name] += 1
            out.append(getattr(self, name)())
        return out


def one_direction(s: socket.socket, outgoing: bool,
                  skip: tuple[bytes, bytes] | None = None) -> None:
    """Classic BPF: keep only the frames this host sends (pkttype OUTGOING),
    or only those it receives. With `skip` (source, destination MACs), drop
    also the DATA frames of this protocol (ethertype, magic and type checked
    here) between those two: a flood's answers, too many to check in Python
    before the socket overflows."""
    def ins(code: int, jt: int, jf: int, k: int) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    ld_w, ld_h, jeq, ret = 0x20, 0x28, 0x15, 0x06
    checks: list[tuple[int, int, int]] = []
    if skip is not None:
        src, dst = skip
        checks = [(ld_h, 12, ETHERTYPE), (ld_w, 14, MAGIC), (ld_w, 18, DATA),
                  (ld_w, 0, int.from_bytes(dst[:4], "big")),
                  (ld_h, 4, int.from_bytes(dst[4:], "big")),
                  (ld_w, 6, int.from_bytes(src[:4], "big")),
                  (ld_h, 10, int.from_bytes(src[4:], "big"))]
    n = len(checks)
    # Layout: 0 load pkttype, 1 direction test, 2.. the checks (each a load
    # and a test: all equal falls through to the drop), 2+2n drop, 3+2n keep.
    on, off = (0 if n else 1), 2 * n  # jump offsets to the checks (or keep), to the drop
    code = [ins(ld_w, 0, 0, 0xFFFFF004),  # ld [SKF_AD_OFF + SKF_AD_PKTTYPE]
            ins(jeq, on, off, PACKET_OUTGOING) if outgoing else
            ins(jeq, off, on, PACKET_OUTGOING)]
    for i, (load, at, want) in enumerate(checks):
        code += [ins(load, 0, 0, at), ins(jeq, 0, 2 * (n - i) - 1, want)]
    code += [ins(ret, 0, 0, 0), ins(ret, 0, 0, 0xFFFF)]
    prog = ctypes.create_string_buffer(b"".join(code))
    s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                 struct.pack("HL", len(code), ctypes.addressof(prog)))


def raw_socket(ifname: str, proto: int = ETHERTYPE, rcvbuf: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
    s.bind((ifname, proto))
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
    s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 8 << 20)
    return s


def send_all(sock: socket.socket, frames: list[bytes]) -> tuple[int, int]:
    sent = errors = 0
    for f in frames:
        while True:
            try:
                sock.send(f)
                sent += 1
                break
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                if e.errno == 105:  # ENOBUFS: a queue is full, try again
                    time.sleep(0.0001)
                    continue
                errors += 1
                break
    return sent, errors


def cmd_fuzz(args: argparse.Namespace) -> None:
    sock = raw_socket(args.ifname, 0)
    me = sock.getsockname()[4][:6]
    fz = Fuzzer(random.Random(args.seed), me, mac(args.server),
                [mac(m) for m in args.image_mac], mac(args.spoof), args.image_size)
    frames = fz.make(args.count)
    started = time.monotonic()
    sent, errors = send_all(sock, frames)
    secs = time.monotonic() - started
    print(json.dumps({"sent": sent, "errors": errors, "bad": fz.bad, "seconds": round(secs, 3),
                      "rate": round(sent / secs), "kinds": dict(fz.kinds),
                      "bytes": sum(len(f) for f in frames)}))


_stop = False


def _on_term(signum: int, frame: object) -> None:
    global _stop
    _stop = True


def cmd_flood(args: argparse.Namespace) -> None:
    signal.signal(signal.SIGTERM, _on_term)
    sock = raw_socket(args.ifname, 0)
    me = sock.getsockname()[4][:6]
    server = mac(args.server)
    rng = random.Random(args.seed)
    send_all(sock, [frame(BCAST, me, HELLO, b"Hello!  I'd like to buy a ramdisk please.")])
    reads = []
    for _ in range(64):
        base = rng.randrange(args.image_size // (CHUNK * SLOTS)) * CHUNK * SLOTS
        reads.append(frame(server, me, READ, read_payload(
            SLOTS, {i: base + i * CHUNK for i in range(SLOTS)})))
    sys.stderr.write("ready\n")
    sys.stderr.flush()
    sent = 0
    started = time.monotonic()
    while not _stop:
        for f in reads:
            try:
                sock.send(f)
                sent += 1
            except OSError:
                pass
    secs = time.monotonic() - started
    print(json.dumps({"sent": sent, "seconds": round(secs, 3), "rate": round(sent / secs)}))


def cmd_hellos(args: argparse.Namespace) -> None:
    """HELLOs from `count` distinct unicast MACs, paced so none is dropped."""
    sock = raw_socket(args.ifname, 0)
    rng = random.Random(args.seed)
    macs: set[bytes] = set()
    while len(macs) < args.count:
        macs.add(bytes([0x02 | (rng.randrange(64) << 2)]) + rng.randbytes(5))
    frames = [frame(BCAST, m, HELLO, b"Hello!  I'd like to buy a ramdisk please.")
              for m in sorted(macs)]
    started = time.monotonic()
    sent = 0
    for i in range(0, len(frames), 50):
        sent += send_all(sock, frames[i:i + 50])[0]
        time.sleep(args.pause)
    print(json.dumps({"sent": sent, "seconds": round(time.monotonic() - started, 3)}))


def cmd_capture(args: argparse.Namespace) -> None:
    signal.signal(signal.SIGTERM, _on_term)
    macs = [mac(m) for m in args.image_mac]
    images = [open(p, "rb").read() for p in args.raw]
    offers = [bytes.fromhex(h) for h in args.offer]
    assert len(macs) == len(images) == len(offers)
    s = raw_socket(args.ifname, ETH_P_ALL, rcvbuf=256 << 20)
    skip = (macs[0], mac(args.skip_data_to)) if args.skip_data_to else None
    one_direction(s, outgoing=not args.arriving, skip=skip)
    s.setblocking(False)
    sys.stderr.write("ready\n")
    sys.stderr.flush()
    counts: Counter[str] = Counter()
    violations: list[str] = []
    dsts: Counter[str] = Counter()
    min_payload = 1 << 30
    max_offset = 0

    def bad(why: str, buf: bytes) -> None:
        counts["violations"] += 1
        if len(violations) < 20:
            violations.append(f"{why}: {buf[:64].hex()} (frame {len(buf)} bytes)")

    poller = select.poll()
    poller.register(s.fileno(), select.POLLIN)
    while True:
        if not poller.poll(50):
            if _stop:
                break
            continue
        for _ in range(4096):
            try:
                buf, addr = s.recvfrom(65536)
            except BlockingIOError:
                break
            if (addr[2] == PACKET_OUTGOING) == args.arriving:
                counts["other_direction"] += 1
                continue
            counts["frames"] += 1
            if len(buf) < 14:
                bad("runt", buf)
                continue
            ethertype = struct.unpack_from("!H", buf, 12)[0]
            if ethertype != ETHERTYPE:
                counts[f"ethertype_{ethertype:04x}"] += 1
                if ethertype != 0x86DD:  # the kernel's own IPv6 (ND, MLD) is not the server's
                    bad(f"foreign ethertype {ethertype:#x}", buf)
                continue
            if len(buf) < 26:
                bad("short frame", buf)
                continue
            src, dst = buf[6:12], buf[0:6]
            magic, typ, length = struct.unpack_from("!III", buf, 14)
            if src not in macs:
                bad("not from an image MAC", buf)
                continue
            if dst[0] & 1:
                bad("to a multicast address", buf)
            if magic != MAGIC:
                bad("bad magic", buf)
                continue
            if len(buf) != 26 + length:
                bad(f"len {length} but {len(buf) - 26} bytes follow", buf)
                continue
            image = images[macs.index(src)]
            dsts[dst.hex(":")] += 1
            if typ == DATA:
                counts["data"] += 1
                if not 8 <= length <= 8 + MAX_DATA:
                    bad("DATA len out of range", buf)
                    continue
                offset = struct.unpack_from("!Q", buf, 26)[0]
                payload = buf[34:]
                take = min(CHUNK, len(image) - offset) if offset < len(image) else 0
                want = image[offset:offset + take]
                if 0 < take < MIN_PAYLOAD:
                    want += bytes(MIN_PAYLOAD - take)
                if payload != want:
                    bad(f"DATA at {offset} is not the image bytes ({len(payload)} bytes, "
                        f"want {len(want)})", buf)
                    continue
                if payload:
                    counts["data_bytes"] += len(payload)
                    min_payload = min(min_payload, len(payload))
                else:
                    counts["data_eof"] += 1
                max_offset = max(max_offset, offset)
            elif typ == OFFER:
                counts["offer"] += 1
                if buf[26:] != offers[macs.index(src)]:
                    bad("OFFER is not the image's", buf)
            elif typ == RESET:
                counts["reset"] += 1
                if length:
                    bad("RESET with a body", buf)
            else:
                bad(f"type {typ:#x} is not a server message", buf)
    packets, drops = struct.unpack("II", s.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    print(json.dumps({"counts": dict(counts), "violations": violations, "kernel_drops": drops,
                      "min_payload": min_payload if min_payload < 1 << 30 else None,
                      "max_offset": max_offset, "destinations": dict(dsts)}))


def cmd_relay(args: argparse.Namespace) -> None:
    signal.signal(signal.SIGTERM, _on_term)
    rng = random.Random(args.seed)
    a = raw_socket(args.if_a, ETH_P_ALL, rcvbuf=64 << 20)
    b = raw_socket(args.if_b, ETH_P_ALL, rcvbuf=64 << 20)
    for s in (a, b):
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        s.setblocking(False)
    peer = {a.fileno(): b, b.fileno(): a}
    held: deque[tuple[float, socket.socket, bytes]] = deque()
    counts: Counter[str] = Counter()
    poller = select.poll()
    poller.register(a.fileno(), select.POLLIN)
    poller.register(b.fileno(), select.POLLIN)
    delay = args.delay / 1000

    def out(sock: socket.socket, buf: bytes) -> None:
        try:
            sock.send(buf)
        except OSError:
            counts["send_errors"] += 1

    sys.stderr.write("ready\n")
    sys.stderr.flush()
    while not _stop:
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, sock, buf = held.popleft()
            out(sock, buf)
            counts["released"] += 1
        timeout = 50 if not held else max(0, int((held[0][0] - now) * 1000))
        for fd, _ in poller.poll(timeout):
            src = a if fd == a.fileno() else b
            for _ in range(256):
                try:
                    buf = src.recv(65536)
                except BlockingIOError:
                    break
                dst = peer[fd]
                ours = len(buf) >= 22 and buf[12:14] == b"\x1d\xe0"
                typ = struct.unpack_from("!I", buf, 18)[0] if ours else 0
                counts["frames"] += 1
                if ours and src is a and typ == DATA and rng.random() * 100 < args.reorder:
                    # Held back; the ones that follow overtake it.
                    held.append((time.monotonic() + delay, dst, buf))
                    counts["reordered"] += 1
                    continue
                out(dst, buf)
                dup = args.dup_read if typ == READ and args.dup_read is not None else args.dup
                if ours and rng.random() * 100 < dup:
                    out(dst, buf)
                    counts[f"duplicated_{typ:x}"] += 1
    for _, sock, buf in held:
        out(sock, buf)
    print(json.dumps(dict(counts)))


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fuzz")
    f.add_argument("ifname")
    f.add_argument("--server", required=True)
    f.add_argument("--image-mac", action="append", required=True)
    f.add_argument("--spoof", required=True)
    f.add_argument("--image-size", type=int, required=True)
    f.add_argument("--count", type=int, default=120_000)
    f.add_argument("--seed", type=int, default=1)
    fl = sub.add_parser("flood")
    fl.add_argument("ifname")
    fl.add_argument("--server", required=True)
    fl.add_argument("--image-size", type=int, required=True)
    fl.add_argument("--seed", type=int, default=1)
    h = sub.add_parser("hellos")
    h.add_argument("ifname")
    h.add_argument("--count", type=int, default=2000)
    h.add_argument("--pause", type=float, default=0.01, help="seconds after each 50")
    h.add_argument("--seed", type=int, default=1)
    c = sub.add_parser("capture")
    c.add_argument("ifname")
    c.add_argument("--image-mac", action="append", required=True)
    c.add_argument("--raw", action="append", required=True)
    c.add_argument("--offer", action="append", required=True, help="OFFER payload, hex")
    c.add_argument("--arriving", action="store_true",
                   help="check the frames arriving on IFNAME (the far end of the server's "
                   "link: whatever path they left by) instead of those it sends")
    c.add_argument("--skip-data-to", metavar="MAC",
                   help="leave unchecked the DATA frames from the first image MAC to MAC "
                   "(dropped in the socket filter, which checks that they are DATA)")
    r = sub.add_parser("relay")
    r.add_argument("if_a", help="the server's side")
    r.add_argument("if_b", help="the sled's side")
    r.add_argument("--dup", type=float, default=10)
    r.add_argument("--dup-read", type=float, help="for READs (default: --dup)")
    r.add_argument("--reorder", type=float, default=25)
    r.add_argument("--delay", type=float, default=2, help="milliseconds")
    r.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    {"fuzz": cmd_fuzz, "flood": cmd_flood, "hellos": cmd_hellos, "capture": cmd_capture,
     "relay": cmd_relay}[args.cmd](args)


if __name__ == "__main__":
    main()

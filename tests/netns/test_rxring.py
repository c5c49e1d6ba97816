"""The sled's two DATA receive paths, side by side on a real veth pair.

``ox_rxring_data_wait`` (frames read in place from a PACKET_RX_RING) must do
exactly what ``ox_rx_data_wait`` (recvmmsg) does with the same frames: land
DATA of busy slots in the ramdisk, skip other hosts' frames, count runts,
strays and padded DATA, and hand every other frame of ours to Python in
order. The same hostile sequence is sent to each, and the results compared.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys

import pytest

from oxboot.netlab import Host, Lab
from oxboot.protocol import (
    CHUNK,
    SLOTS,
    Data,
    Offer,
    Read,
    data_frame,
    encode_dataset,
    pack_frame,
)

IMAGE_SIZE = 3 * SLOTS * CHUNK - 700  # the last chunk short, and offsets past the end

# What both receivers start with: the C core, and its receive call's arguments.
_PRELUDE = r"""
import hashlib, json, socket, sys, time
from oxboot._core import ffi, lib


def rx_args(mac, server, ram, size, offsets, busy, busy_count, other, other_len, st):
    # ox_rx_args; the caller keeps every buffer alive.
    return ffi.new("ox_rx_args *", {
        "self_mac": ffi.from_buffer(mac), "server": ffi.from_buffer(server), "ram": ram,
        "ram_len": size, "slot_offsets": offsets, "slot_busy": busy,
        "busy_count": busy_count, "other": other, "other_cap": 2048,
        "other_len": other_len, "stats": st})
"""

# The receiver: for each batch of slots it is given, reads until the batch
# is complete, collecting the frames handed to Python; prints what it got.
_RX = _PRELUDE + r"""
ifname, method, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x1DE0))
s.setsockopt(socket.SOL_SOCKET, 33, 1 << 22)  # SO_RCVBUFFORCE: room for the burst
s.bind((ifname, 0x1DE0))
s.setblocking(False)
mac = s.getsockname()[4][:6]
ring = ffi.NULL
if method == "ring":
    # Room for one burst, not two: the second round wraps around.
    ring = lib.ox_rxring_open(s.fileno(), 256)
    assert ring != ffi.NULL, ffi.errno
print(json.dumps({"mac": mac.hex()}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    server = bytes.fromhex(job["server"])
    ram = ffi.new("uint8_t[]", size)
    offsets = ffi.new("uint64_t[128]", job["slots"])
    busy = ffi.new("uint8_t[128]", [1] * len(job["slots"]))
    busy_count = ffi.new("uint32_t *", len(job["slots"]))
    other = ffi.new("uint8_t[2048]")
    other_len = ffi.new("size_t *")
    st = ffi.new("ox_rx_stats *")
    print("armed", flush=True)
    others, calls = [], 0
    while busy_count[0] and calls < 200:
        calls += 1
        args = rx_args(mac, server, ram, size, offsets, busy, busy_count, other, other_len, st)
        if ring != ffi.NULL:
            n = lib.ox_rxring_data_wait(ring, args, 1 << 20, 200, ffi.NULL)
        else:
            n = lib.ox_rx_data_wait(s.fileno(), args, 1 << 20, 200)
        assert n >= 0, ffi.errno
        if other_len[0]:
            others.append(ffi.buffer(other, other_len[0])[:].hex())
    print(json.dumps({
        "busy": busy_count[0], "others": others,
        "ram": hashlib.sha256(ffi.buffer(ram)).hexdigest(),
        "stats": {k: getattr(st, k) for k in ("frames", "data_ok", "data_stray", "bad", "bytes",
                                              "eof", "padded", "extent")}}), flush=True)
if ring != ffi.NULL:
    lib.ox_rxring_close(ring)
"""

_TX = r"""
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
for line in sys.stdin:
    s.send(bytes.fromhex(line.strip()))
"""


def _start_receiver(lab: Lab, script: str, *args: str) -> tuple[subprocess.Popen[str], Host,
                                                                 bytes, bytes]:
    """A veth pair and `script` on its receiving end: (the receiver, the
    sending host, the receiver's MAC, the sender's MAC)."""
    rx_host, tx_host = lab.pair()
    rx = subprocess.Popen(rx_host.cmd([sys.executable, "-c", script, rx_host.ifname, *args]),
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                          start_new_session=True)
    lab.procs.append(rx)  # type: ignore[arg-type]
    assert rx.stdin is not None and rx.stdout is not None
    me = bytes.fromhex(json.loads(rx.stdout.readline())["mac"])
    return rx, tx_host, me, bytes.fromhex(tx_host.mac().replace(":", ""))


def _exchange(lab: Lab, method: str, image: bytes, slots: list[int], rounds: int) -> list[dict]:
    rx, tx_host, me, server = _start_receiver(lab, _RX, method, str(len(image)))
    assert rx.stdin is not None and rx.stdout is not None
    frames = _hostile_sequence(me, server, image, slots)
    got = []
    for _ in range(rounds):
        rx.stdin.write(json.dumps({"server": server.hex(), "slots": slots}) + "\n")
        rx.stdin.flush()
        assert rx.stdout.readline().strip() == "armed"
        subprocess.run(tx_host.cmd([sys.executable, "-c", _TX, tx_host.ifname]),
                       input="".join(f.hex() + "\n" for f in frames), text=True, check=True,
                       timeout=60)
        got.append(json.loads(rx.stdout.readline()))
    rx.stdin.close()
    assert rx.wait(10) == 0
    return got


def _hostile_sequence(me: bytes, server: bytes, image: bytes, slots: list[int]) -> list[bytes]:
    stranger = bytes.fromhex("02eeeeeeee01")
    data = [data_frame(me, server, image, o) for o in slots]
    random.Random(7).shuffle(data)
    offer = Offer(4 << 20, 4 << 20, bytes(32), encode_dataset("x"))
    return [
        me + server + b"\x1d\xe0" + bytes(6),                 # a runt: bad
        data_frame(b"\x02\x99\x99\x99\x99\x99", server, image, slots[1]),  # not for us
        data_frame(me, stranger, image, slots[2]),           # a stranger's DATA: Python's
        data_frame(me, server, image, 5 * CHUNK + 1),        # nobody asked for it: stray
        *data[:40],
        pack_frame(me, server, offer),                       # Python's
        # 18 bytes of DATA in a frame padded to Ethernet's 60: the OS panics
        # on it, so Python's (counted as padded).
        pack_frame(me, server, Data(slots[4], image[slots[4]:slots[4] + 10])) + bytes(16),
        data[3],                                             # again, its slot free: stray
        *data[40:],
    ]


@pytest.mark.parametrize("method", ["ring", "recvmmsg"])
def test_sled_receive_paths(method: str) -> None:
    rng = random.Random(1)
    image = rng.randbytes(IMAGE_SIZE)
    last = (IMAGE_SIZE // CHUNK) * CHUNK
    # A scattered batch: the short last chunk, an offset past the end (EOF),
    # and offsets not in increasing order.
    slots = sorted(rng.sample(range(0, last, CHUNK), SLOTS - 2)) + [last, last + CHUNK]
    slots[5], slots[60] = slots[60], slots[5]
    want = bytearray(IMAGE_SIZE)
    for o in slots:
        want[o:o + CHUNK] = image[o:o + CHUNK]
    lab = Lab()
    try:
        rounds = _exchange(lab, method, image, slots, rounds=2)
    finally:
        lab.close()
    for got in rounds:
        st = got["stats"]
        assert got["busy"] == 0, got
        assert st["data_ok"] == SLOTS and st["eof"] == 1 and st["data_stray"] == 2, st
        assert st["bytes"] == sum(min(CHUNK, IMAGE_SIZE - o) for o in slots if o < IMAGE_SIZE)
        # What landed in the ramdisk is the image's bytes at the slots' offsets.
        assert got["ram"] == hashlib.sha256(want).hexdigest()
        assert st["padded"] == 1, st
        # Handed to Python in order: the stranger's DATA, the OFFER, the
        # padded DATA (MACs cut off the hex: bytes 12.. of each frame).
        types = [bytes.fromhex(f)[18:22].hex() for f in got["others"]]
        if method == "ring":
            # Frames read in place: it stops at each, and reads nothing
            # past the end of the batch.
            assert types == ["00009104", "00009102", "00009104"], types
            assert st["bad"] == 1 and st["frames"] == 4 + SLOTS + 3, st
        else:
            # recvmmsg takes up to 64 frames at a time: a second frame for
            # Python in the same batch is counted bad, not handed over.
            assert types == ["00009104", "00009102", "00009104"][:len(types)], types
            assert len(types) >= 1 and st["bad"] == 1 + 3 - len(types), st


# ---- the next batch, in C ---------------------------------------------------------------

_NEXT_RX = _PRELUDE + r"""
ifname, size = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x1DE0))
s.bind((ifname, 0x1DE0))
s.setblocking(False)
mac = s.getsockname()[4][:6]
ring = lib.ox_rxring_open(s.fileno(), 256)
assert ring != ffi.NULL, ffi.errno
print(json.dumps({"mac": mac.hex()}), flush=True)
server = bytes.fromhex(sys.stdin.readline().strip())
ram = ffi.new("uint8_t[]", size)
# The first batch is the session's (Python's) own; the rest follow in C.
offsets = ffi.new("uint64_t[128]", [i * 1024 for i in range(128)])
busy = ffi.new("uint8_t[128]", [1] * 128)
busy_count = ffi.new("uint32_t *", 128)
other = ffi.new("uint8_t[2048]")
other_len = ffi.new("size_t *")
st = ffi.new("ox_rx_stats *")
sent = ffi.new("double[128]", [-1.0] * 128)
nxt = ffi.new("ox_rx_next *", {"next_offset": 128 * 1024, "data_size": size, "slot_sent": sent})
print("armed", flush=True)
calls = 0
while busy_count[0] and calls < 100:
    calls += 1
    args = rx_args(mac, server, ram, size, offsets, busy, busy_count, other, other_len, st)
    n = lib.ox_rxring_data_wait(ring, args, 1 << 20, 200, nxt)
    assert n >= 0 and other_len[0] == 0
done = time.monotonic()
print(json.dumps({
    "busy": busy_count[0], "next_offset": nxt.next_offset, "reads": nxt.reads,
    "send_errors": nxt.send_errors, "ram": hashlib.sha256(ffi.buffer(ram)).hexdigest(),
    "sent_age": [done - sent[i] for i in (0, 127)], "data_ok": st.data_ok,
    "offsets": [offsets[i] for i in (0, 1, 127)]}), flush=True)
lib.ox_rxring_close(ring)
"""

# The server's side: the first batch unasked, then DATA for each READ.
_NEXT_TX = r"""
import json, random, socket, sys
from oxboot.protocol import CHUNK, Read, data_frame, parse_frame
ifname, size, me = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
image = random.Random(1).randbytes(size)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x1DE0))
s.bind((ifname, 0x1DE0))
s.settimeout(5)
src = s.getsockname()[4][:6]
for o in range(0, 128 * CHUNK, CHUNK):
    s.send(data_frame(me, src, image, o))
reads = []
while (128 * CHUNK) * (len(reads) + 1) < size:
    buf = s.recv(2048)
    f = parse_frame(buf)
    if not isinstance(f.msg, Read):
        continue
    reads.append(buf.hex())
    for o in f.msg.slots:
        s.send(data_frame(me, src, image, o))
print(json.dumps(reads))
"""


def test_ring_wait_follows_a_complete_batch_with_the_next() -> None:
    size = 3 * SLOTS * CHUNK - 700  # three batches: the last one short
    image = random.Random(1).randbytes(size)
    lab = Lab()
    try:
        rx, tx_host, me, server = _start_receiver(lab, _NEXT_RX, str(size))
        assert rx.stdin is not None and rx.stdout is not None
        rx.stdin.write(server.hex() + "\n")
        rx.stdin.flush()
        assert rx.stdout.readline().strip() == "armed"
        tx = subprocess.run(tx_host.cmd([sys.executable, "-c", _NEXT_TX, tx_host.ifname,
                                         str(size), me.hex()]),
                            capture_output=True, text=True, timeout=60)
        assert tx.returncode == 0, tx.stderr
        got = json.loads(rx.stdout.readline())
        assert rx.wait(10) == 0
    finally:
        lab.close()
    # Two READs went out from C, each naming a whole batch as the session would.
    reads = [bytes.fromhex(r) for r in json.loads(tx.stdout)]
    assert got["reads"] == 2 and got["send_errors"] == 0 and len(reads) == 2, (got, reads)
    for k, frame in enumerate(reads, start=1):
        base = k * SLOTS * CHUNK
        want = pack_frame(server, me, Read(SLOTS, tuple(range(base, base + SLOTS * CHUNK,
                                                              CHUNK))))
        assert frame == want
    # Past the end: no third READ, the session's state where Python expects it.
    assert got["busy"] == 0 and got["next_offset"] == 3 * SLOTS * CHUNK
    assert got["offsets"] == [2 * SLOTS * CHUNK, 2 * SLOTS * CHUNK + CHUNK,
                              3 * SLOTS * CHUNK - CHUNK]
    assert all(0 <= age < 10 for age in got["sent_age"]), got  # time.monotonic()'s clock
    assert got["data_ok"] == 3 * SLOTS
    assert got["ram"] == hashlib.sha256(image).hexdigest()


def test_build_read_matches_the_protocol_module() -> None:
    from oxboot._native import ffi, lib

    dst, src = bytes.fromhex("02aaaaaaaa01"), bytes.fromhex("02bbbbbbbb02")
    out = ffi.new("uint8_t[]", lib.OX_READ_FRAME)
    for offsets in ([], [0], [5, 2**64 - 1, 1024], list(range(0, SLOTS * CHUNK, CHUNK))):
        arr = ffi.new("uint64_t[]", offsets or [0])
        n = lib.ox_build_read(out, lib.OX_READ_FRAME, dst, src, arr, len(offsets))
        want = pack_frame(dst, src, Read(len(offsets),
                                         tuple(offsets) + (0,) * (SLOTS - len(offsets))))
        assert n == len(want) == lib.OX_READ_FRAME
        assert ffi.buffer(out, n)[:] == want
    arr = ffi.new("uint64_t[]", SLOTS + 1)
    assert lib.ox_build_read(out, lib.OX_READ_FRAME, dst, src, arr, SLOTS + 1) == -1
    assert lib.ox_build_read(out, lib.OX_READ_FRAME - 1, dst, src, arr, 1) == -1
    assert lib.ox_build_read(out, lib.OX_READ_FRAME, dst, src, ffi.NULL, 1) == -1

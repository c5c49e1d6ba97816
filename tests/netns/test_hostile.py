"""Hostile frames at a running boot server, over real kernel networking: a
seeded fuzz run of >100 000 malformed frames with every frame the server
sends checked on the way out, a READ flood next to a legitimate sled, and
frames the server must not answer at all. Each test removes what it made."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from support.lab import (
    FUZZ,
    bootserver,
    clear_loss,
    events,
    finish,
    hold_data,
    netboot,
    raw_image,
    rawpeer,
    start_helper,
    start_netboot,
    stop_helper,
    wait_listening,
)

from oxboot import build_image
from oxboot.netlab import Host, Lab, sh, wait_for
from oxboot.protocol import ETHERTYPE, encode_dataset
from oxboot.verify import read_header

T = TypeVar("T")




def offer_payload(img: Path) -> bytes:
    h = read_header(img)
    return struct.pack("!QQ32s128s", h.target_size, h.image_size, h.sha256,
                       encode_dataset(h.dataset))


def image_macs(log: Path) -> list[str]:
    return [e["mac"] for e in sorted((e for e in events(log) if e["event"] == "image"),
                                     key=lambda e: e["index"])]


def final_stats(server: subprocess.Popen[bytes], log: Path) -> dict:
    server.terminate()
    server.wait(15)
    stats = [e for e in events(log) if e["event"] == "stats"]
    assert stats and stats[-1].get("final"), events(log)[-3:]
    return stats[-1]


def capture(lab: Lab, host: Host, macs: list[str], imgs: list[tuple[Path, bytes]],
            tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    """Check every frame that arrives at `host` (the far end of the server's
    link) from now on (see fuzz_frames.py capture). Not on the server's own
    interface: frames sent by AF_XDP pass no packet socket there."""
    args = ["capture", host.ifname, "--arriving"]
    for i, (mac, (img, raw)) in enumerate(zip(macs, imgs, strict=True)):
        path = tmp_path / f"capture-{i}.raw"
        path.write_bytes(raw)
        args += ["--image-mac", mac, "--raw", str(path), "--offer", offer_payload(img).hex()]
    return start_helper(lab, host, *args, *extra)


def far_end(lab: Lab, host: Host) -> Host:
    """The other end of `host`'s veth (for a host on a bridge, its port)."""
    def links(ns: str) -> list[tuple[str, str, str]]:
        """(index, name, peer index) of each veth in `ns` (indexes are per
        namespace: an end is the one whose index and peer's match)."""
        out = []
        for line in sh("ip", "-n", ns, "-o", "link").stdout.splitlines():
            index, name = line.split(":")[:2]
            if "@if" in name:
                name, peer = name.strip().split("@if")
                out.append((index, name, peer))
        return out

    mine = next(link for link in links(host.ns) if link[1] == host.ifname)
    ends = [Host(ns, name) for ns in lab.namespaces if ns != host.ns
            for index, name, peer in links(ns) if (index, peer) == (mine[2], mine[0])]
    assert len(ends) == 1, (host, ends)
    return ends[0]


def until(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll `predicate` (a few times a second: it may run nft) until it
    returns something other than None; fail after `timeout` seconds, a
    bound for a broken server, never for a slow machine."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.2)


def count_arrivals(host: Host) -> None:
    """Count, in the kernel, every frame of the protocol that arrives at
    `host`'s interface, in all and by source MAC: an nftables netdev
    ingress hook, which sees each frame before any packet socket bound to
    the protocol does (and before a socket filter can drop it). Removed
    with the namespace."""
    rules = (
        f"table netdev oxcount {{\n"
        f" set src {{ type ether_addr; size 65535; flags dynamic; counter; }}\n"
        f" chain in {{\n"
        f"  type filter hook ingress device {host.ifname} priority -10;\n"
        f"  ether type {ETHERTYPE:#x} counter\n"
        f"  ether type {ETHERTYPE:#x} update @src {{ ether saddr }}\n"
        f" }}\n}}\n")
    subprocess.run(["ip", "netns", "exec", host.ns, "nft", "-f", "-"], input=rules, text=True,
                   check=True, capture_output=True)


def arrivals(host: Host) -> tuple[int, dict[str, int]]:
    """(frames of the protocol that arrived at `host` so far, the same by
    source MAC), from :func:`count_arrivals`."""
    out = sh("ip", "netns", "exec", host.ns, "nft", "-j", "list", "table", "netdev",
             "oxcount").stdout
    total, by_src = -1, {}
    for item in json.loads(out)["nftables"]:
        if "rule" in item:
            for expr in item["rule"]["expr"]:
                if "counter" in expr:
                    total = expr["counter"]["packets"]
        elif "set" in item:
            for e in item["set"].get("elem", []):
                by_src[e["elem"]["val"]] = e["elem"]["counter"]["packets"]
    assert total >= 0, out
    return total, by_src


def handled(stats: dict) -> int:
    """Frames the server took off its socket and counted, each in exactly one
    category: parsed (frames, including READs answered in C), malformed
    (bad_frames), not for it (rx_foreign, in C) or over its source's rate
    (rx_policed)."""
    return (stats.get("frames", 0) + stats.get("bad_frames", 0) + stats["rx_foreign"]
            + stats["rx_policed"])


def accounting(srv: Host, stats: dict, log: Path) -> str | None:
    """Why `stats` does not account for every frame that arrived at the
    server's interface (None if it does). Every frame that arrived reached
    the server's socket (rx_packets) unless the socket filter dropped it for
    a blocked source; of those the kernel dropped rx_drops for a full queue,
    and the server counted each of the others in one category."""
    total, by_src = arrivals(srv)
    taken = stats["rx_packets"] - stats["rx_drops"]
    if handled(stats) != taken:
        return f"handled {handled(stats)} of the {taken} frames taken"
    blocked = {e["mac"] for e in events(log) if e["event"] == "blocked"}
    filtered = total - stats["rx_packets"]
    # Frames a socket filter dropped are in no socket counter: at most all
    # that the blocked sources sent, none if nothing was blocked.
    if not 0 <= filtered <= sum(by_src.get(m, 0) for m in blocked):
        return (f"{total} frames arrived, {stats['rx_packets']} reached the socket, "
                f"blocked sources {sorted(blocked)} sent {[by_src.get(m) for m in blocked]}")
    return None


def settled(srv: Host, log: Path, timeout: float = 60) -> dict:
    """The first periodic stats event (from now on) that accounts for every
    frame that arrived at the server (see :func:`accounting`): it has read
    its socket's queue and has no frame left unhandled."""
    before = sum(1 for e in events(log) if e["event"] == "stats")

    def check() -> dict | None:
        stats = [e for e in events(log) if e["event"] == "stats"][before:]
        return stats[-1] if stats and accounting(srv, stats[-1], log) is None else None

    return until(check, timeout, "the server to account for every frame that arrived")


# ---- the fuzz run -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["any-host", "allow-list"])
def test_fuzz_run(lab: Lab, images: dict, tmp_path: Path, mode: str) -> None:
    """>100 000 hostile frames, as fast as a raw socket takes them.

    any-host: attacker and sled are the same host on one veth (every frame
    reaches the server, multicast sources too). allow-list: a bridge, the
    server serves only the sled, the attacker sits beside it and also
    spoofs the sled's MAC."""
    imgs = [images["small"], images["other1"]]
    if mode == "any-host":
        srv, attacker = lab.pair()
        sled = attacker
        spoof = "02:00:00:00:be:ef"
        allow = "any"
    else:
        srv, attacker, sled = lab.bridge(3)
        spoof = sled.mac()
        allow = sled.mac()
    log = tmp_path / "server.log"
    count_arrivals(srv)
    server = bootserver(lab, srv, ["--json", "--image", str(imgs[1][0]), srv.ifname,
                                   str(imgs[0][0]), allow], log)
    wait_listening(log)
    macs = image_macs(log)
    cap = capture(lab, far_end(lab, srv), macs, imgs, tmp_path)

    seed = 20240611 + (mode == "allow-list")
    p = subprocess.run(attacker.cmd([
        sys.executable, str(FUZZ), "fuzz", attacker.ifname, "--server", macs[0],
        "--image-mac", macs[0], "--image-mac", macs[1], "--spoof", spoof,
        "--image-size", str(len(imgs[0][1])), "--count", "110000", "--seed", str(seed)]),
        capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    fuzz = json.loads(p.stdout)
    assert fuzz["sent"] >= 100_000 and fuzz["errors"] == 0, fuzz
    if mode == "any-host":
        # One veth between them: a frame the fuzzer counts as sent was taken
        # by the veth (a full queue refuses it, ENOBUFS, and it is sent
        # again), so every one of them arrives at the server's interface.
        until(lambda: arrivals(srv)[0] >= fuzz["sent"] or None, 60,
              "the fuzz frames to arrive")
        assert arrivals(srv)[0] == fuzz["sent"], (arrivals(srv)[0], fuzz)
    # The server has read and counted every frame that arrived (or the
    # kernel dropped it, counted) before the sled starts.
    settled(srv, log)
    after_fuzz = arrivals(srv)[0]

    assert server.poll() is None, log.read_text()[-2000:]
    status, result, saved = netboot(sled, imgs[0][0], tmp_path, timeout=30)
    assert status == 0 and result["verified"], (json.dumps(result), log.read_text()[-1500:])
    assert saved.read_bytes() == imgs[0][1]
    settled(srv, log)  # the sled's FINISHED too: nothing left to answer
    seen = stop_helper(cap)
    stats = final_stats(server, log)
    total, by_src = arrivals(srv)
    print(f"\nfuzz {mode}: {fuzz['sent']} frames in {fuzz['seconds']} s ({fuzz['rate']}/s), "
          f"{fuzz['bad']} malformed; kinds {fuzz['kinds']}\n"
          f"arrived at the server: {after_fuzz} during the fuzz, {total} in all\n"
          f"server: bad_frames {stats.get('bad_frames')}, frames {stats.get('frames')}, "
          f"rx_drops {stats['rx_drops']}, rx_foreign {stats['rx_foreign']}, "
          f"rx_policed {stats['rx_policed']}, sources_blocked {stats['sources_blocked']}, "
          f"rx_packets {stats['rx_packets']}, ignored {stats.get('ignored')}, "
          f"rate_limited {stats.get('rate_limited')}, resets {stats.get('resets')}, "
          f"tx_frames {stats['tx_frames']}, tx_dropped_jobs {stats['tx_dropped_jobs']}\n"
          f"captured: {seen['counts']}, kernel drops {seen['kernel_drops']}, "
          f"max offset {seen['max_offset']}; then a boot in {result['total_seconds']} s")

    # Only OFFER/DATA/RESET of this protocol, and never a byte outside an
    # image; of every frame sent (the capture's socket lost none).
    assert seen["kernel_drops"] == 0, seen
    assert seen["violations"] == [], seen["violations"]
    counts = seen["counts"]
    assert counts.get("data", 0) > 1000 and counts.get("offer", 0) > 0, seen
    if mode == "any-host":  # (allow-list: only the spoofed frames get that far)
        assert counts.get("data_eof", 0) > 0  # offsets past the end, near 2**64: answered
    assert seen["min_payload"] >= 26  # tails padded, never a runt the OS panics on
    assert not [e for e in events(log) if e["event"] == "error"]
    # Exact accounting, at the end of the run: every frame that arrived at
    # the server's interface (counted in the kernel) reached its socket or
    # was dropped by the socket filter for a blocked source; the kernel
    # dropped what the socket could not hold (counted); every frame the
    # server took is counted once, as parsed, bad (in Python, or foreign in
    # the C receive path) or policed (its source over its rate).
    assert accounting(srv, stats, log) is None, (accounting(srv, stats, log), stats)
    # No malformed frame is ever counted as parsed: at most the well-formed
    # frames the fuzzer sent, and the sled's, are.
    assert stats.get("frames", 0) <= fuzz["sent"] - fuzz["bad"] + (total - after_fuzz), (
        stats, fuzz, total, after_fuzz)
    assert stats.get("bad_frames", 0) + stats["rx_foreign"] > 1000, stats


# ---- a READ flood next to a legitimate sled -------------------------------------------


def test_read_flood_is_blocked_and_a_sled_boots_beside_it(lab: Lab, tmp_path: Path) -> None:
    """Another host on the bridge floods valid 128-offset READs as fast as
    it can: the server flags it (over its rate, or the cause of its
    socket's overflow) and has the kernel drop its frames, its and no one
    else's; beside it a sled boots and verifies twice while the flood goes
    on, and once more after it; nothing but OFFER/DATA/RESET leaves the
    server. How much the flood slows a boot is a benchmark figure
    (bench/test_hostile.py), not a test."""
    raw = raw_image(4 << 20, 11)
    (tmp_path / "flood.raw").write_bytes(raw)
    img = tmp_path / "flood.img"
    build_image(tmp_path / "flood.raw", img, target_size=64 << 20, image_name="flood")
    srv, sled, flooder = lab.bridge(3)
    flooder_mac = flooder.mac()
    count_arrivals(srv)
    log = tmp_path / "server.log"
    server = bootserver(lab, srv, ["--json", srv.ifname, str(img), "any"], log)
    wait_listening(log)
    # Every frame the server sends is checked but the DATA it answers the
    # flood with before the block (a million frames): the capture's filter
    # checks those are DATA from the server to the flooder.
    cap = capture(lab, far_end(lab, srv), image_macs(log), [(img, raw)], tmp_path,
                  "--skip-data-to", flooder_mac)
    flood = start_helper(lab, flooder, "flood", flooder.ifname, "--server", srv.mac(),
                         "--image-size", str(len(raw)))
    # It takes milliseconds; the bound is for a server that never blocks it.
    until(lambda: [e for e in events(log) if e["event"] == "blocked"] or None, 60,
          "the flooder to be blocked")
    flooded = []
    for _ in range(2):
        before = arrivals(srv)[1].get(flooder_mac, 0)
        status, result, saved = netboot(sled, img, tmp_path, timeout=60)
        assert status == 0 and result["verified"], result
        assert saved.read_bytes() == raw
        flooded.append(result)
        # The flood went on during the boot (counted at the server's interface).
        assert arrivals(srv)[1].get(flooder_mac, 0) > before
    sent = stop_helper(flood)
    assert sent["sent"] > 10_000, sent
    assert server.poll() is None, log.read_text()[-2000:]
    # Served normally once the flood stops.
    status, after, saved = netboot(sled, img, tmp_path, timeout=60)
    assert status == 0 and after["verified"] and saved.read_bytes() == raw, after
    settled(srv, log)
    seen = stop_helper(cap)
    stats = final_stats(server, log)
    blocked = [e for e in events(log) if e["event"] == "blocked"]
    total, by_src = arrivals(srv)
    print(f"\nREAD flood of {sent['rate']} READs/s from one host: boots beside it "
          f"{[r['total_seconds'] for r in flooded]} s, after it {after['total_seconds']} s; "
          f"{by_src.get(flooder_mac)} of the flooder's frames arrived, "
          f"{total - stats['rx_packets']} dropped by the socket filter. Server: sources blocked "
          f"{stats['sources_blocked']} ({[e['mac'] for e in blocked]}), rx_policed "
          f"{stats['rx_policed']}, rx_drops {stats['rx_drops']}, reads {stats.get('reads')}, "
          f"tx_dropped_jobs {stats['tx_dropped_jobs']}, tx_frames {stats['tx_frames']}; "
          f"captured {seen['counts']}")
    # Flagged in C (over its rate, or the cause of the socket's overflow),
    # then blocked in the kernel: the flooder, and only the flooder.
    assert stats["sources_blocked"] >= 1, stats
    assert {e["mac"] for e in blocked} == {flooder_mac}, blocked
    # In the kernel: of the frames that arrived, the socket filter dropped
    # some (they reached no socket counter), all of them the flooder's.
    assert accounting(srv, stats, log) is None, (accounting(srv, stats, log), stats)
    assert total - stats["rx_packets"] > 0, (total, stats)
    # Only OFFER/DATA/RESET of this protocol, every DATA byte the image's.
    assert seen["kernel_drops"] == 0, seen
    assert seen["violations"] == [], seen["violations"]
    assert seen["counts"].get("data", 0) >= 3 * len(raw) // 1024, seen
    assert set(seen["destinations"]) <= {sled.mac(), flooder_mac}, seen["destinations"]
    assert not [e for e in events(log) if e["event"] == "error"]


# ---- the policer's backlog rule, on a real packet socket ---------------------------------

_BACKLOG_RX = r"""
import json, socket, sys
from oxboot._core import ffi, lib
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x1DE0))
s.setsockopt(socket.SOL_SOCKET, 33, 1 << 18)  # SO_RCVBUFFORCE: a few hundred frames
s.bind((sys.argv[1], 0x1DE0))
s.setblocking(False)
p = lib.ox_police_new(1e9, 1e9, 64)  # no rate rule: only the backlog rule can flag
out = ffi.new("uint8_t[]", 64 * 2048)
lens = ffi.new("uint32_t[]", 64)
buf = ffi.new("uint8_t[]", 6 * lib.OX_MAX_BLOCKED)
print("ready", flush=True)
for phase in sys.stdin:
    st = ffi.new("ox_police_stats *")
    n = lib.ox_rx_police(s.fileno(), p, 10**12 * (1 + len(phase)), out, 2048, lens, 64,
                         1 << 20, st)  # 64 frames, as the server keeps: leaves the rest queued
    first = {"kept": n, "drops": st.sock_drops, "flagged": st.flagged}
    while lib.ox_rx_police(s.fileno(), p, 0, out, 2048, lens, 64, 1 << 20, st) == 64:
        pass
    k = lib.ox_police_flagged(p, buf, lib.OX_MAX_BLOCKED)
    first["macs"] = ffi.buffer(buf, 6 * k)[:].hex()
    print(json.dumps(first), flush=True)
"""

_BACKLOG_TX = r"""
import socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
for src in sys.argv[2].split(","):
    f = (b"\xff" * 6 + bytes.fromhex(src) + struct.pack("!HIII", 0x1DE0, 0x1DE12345, 0x9001, 0)
         + bytes(40))
    s.send(f)
"""


def backlogs_empty() -> bool:
    """No frame waits in any CPU's receive backlog (softnet_stat: the 12th
    column is its length), where a veth puts each frame it is given."""
    rows = Path("/proc/net/softnet_stat").read_text().splitlines()
    return all(int(row.split()[11], 16) == 0 for row in rows)


def test_backlog_flags_only_a_source_that_dominates_an_overflow(lab: Lab) -> None:
    rx_host, tx_host = lab.pair()
    rx = subprocess.Popen(rx_host.cmd([sys.executable, "-c", _BACKLOG_RX, rx_host.ifname]),
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                          start_new_session=True)
    lab.procs.append(rx)  # type: ignore[arg-type]
    assert rx.stdout is not None and rx.stdin is not None
    assert rx.stdout.readline().strip() == "ready"
    flood, a, b, c = "02f100000001", "02a000000001", "02b000000001", "02c000000001"

    def phase(sources: list[str], tag: str) -> dict:
        subprocess.run(tx_host.cmd([sys.executable, "-c", _BACKLOG_TX, tx_host.ifname,
                                    ",".join(sources)]), check=True, timeout=60)
        # Every frame sent is in the veth's backlog until the kernel delivers
        # it to the socket (or drops it there): wait for the backlogs to empty.
        until(lambda: backlogs_empty() or None, 30, "the kernel to deliver the frames")
        rx.stdin.write(tag + "\n")
        rx.stdin.flush()
        return json.loads(rx.stdout.readline())

    # One host sends 9 frames in 10 into a queue that overflows: flagged.
    got = phase(([flood] * 9 + [a]) * 400, "x")
    assert got["drops"] > 0 and got["kept"] == 64, got
    assert got["flagged"] == 1 and got["macs"] == flood, got
    # Four hosts in turn overflow it: none sent most of it, none flagged.
    got = phase([flood, a, b, c] * 1000, "xx")
    assert got["drops"] > 0 and got["flagged"] == 1 and got["macs"] == "", got
    # One host alone, without an overflow (a backlog is not a flood): not flagged.
    got = phase([b] * 100, "xxx")
    assert got["drops"] == 0 and got["kept"] == 64 and got["flagged"] == 1, got
    rx.stdin.close()
    assert rx.wait(10) == 0


# ---- frames the server must not answer --------------------------------------------------


def _hex(dst: str, src: str, typ: int, payload: bytes = b"") -> str:
    def m(x: str) -> bytes:
        return bytes.fromhex(x.replace(":", ""))

    return (m(dst) + m(src) + struct.pack("!HIII", 0x1DE0, 0x1DE12345, typ, len(payload))
            + payload).hex()


def _read(*offsets: int) -> bytes:
    slots = list(offsets) + [0] * (128 - len(offsets))
    return struct.pack("!Q128Q", len(offsets), *slots)


HELLO = b"Hello!  I'd like to buy a ramdisk please."


@pytest.mark.parametrize("allow", ["any", "other-mac"])
def test_foreign_frames_are_ignored(lab: Lab, images: dict, tmp_path: Path, allow: str) -> None:
    srv, peer = lab.pair()
    allowed = "02:00:00:00:00:01"
    log = tmp_path / "server.log"
    bootserver(lab, srv, ["--json", "--image", str(images["other1"][0]), srv.ifname,
                          str(images["small"][0]), "any" if allow == "any" else allowed], log)
    wait_listening(log)
    own, image1 = image_macs(log)
    me = peer.mac()
    bcast = "ff:ff:ff:ff:ff:ff"
    hostile = [
        # the server's own MAC and its second image's MAC as the source
        _hex(bcast, own, 0x9001, HELLO), _hex(own, own, 0x9003, _read(1024)),
        _hex(bcast, image1, 0x9001, HELLO), _hex(image1, image1, 0x9003, _read(2048)),
        _hex(own, image1, 0x9005), _hex(image1, own, 0x9001, HELLO),
        # broadcasts of DATA (and of the other server messages), from anyone
        _hex(bcast, me, 0x9104, struct.pack("!Q", 0) + bytes(1024)),
        _hex(bcast, allowed, 0x9104, struct.pack("!Q", 4096) + bytes(100)),
        _hex(bcast, allowed, 0x9102, bytes(176)), _hex(bcast, allowed, 0x9106),
        # multicast sources
        _hex(bcast, "03:00:00:00:00:01", 0x9001, HELLO),
        _hex(own, "01:00:5e:00:00:01", 0x9003, _read(1024)),
        # READ/FINISHED not addressed to an image MAC (another server's sled)
        _hex(bcast, allowed, 0x9003, _read(1024)),
        _hex("02:99:99:99:99:99", allowed, 0x9003, _read(1024)),
        _hex("02:99:99:99:99:99", allowed, 0x9001, HELLO),
    ]
    if allow == "other-mac":  # a host that is not the allowed one
        hostile += [_hex(bcast, me, 0x9001, HELLO), _hex(own, me, 0x9003, _read(1024)),
                    _hex(image1, me, 0x9003, _read(0, 1024)), _hex(own, me, 0x9005)]
    control = allowed if allow == "other-mac" else me
    got = rawpeer(peer, [
        *({"send": {"raw_hex": h}} for h in hostile), {"wait": 1.0},
        # The control: a HELLO that must be answered, so silence above means something
        # (waited for: both OFFERs, then half a second more for anything else).
        {"send": {"raw_hex": _hex(bcast, control, 0x9001, HELLO)}},
        {"until": {"type": "Offer", "count": 2}, "wait": 0.5},
    ])
    frames = got["frames"]
    assert [(f.get("type"), f["dst"]) for f in frames] == [("Offer", control)] * 2, frames
    assert {f["src"] for f in frames} == {own, image1}
    assert not [e for e in events(log) if e["event"] in ("start", "reset", "finished")]
    offers = [e for e in events(log) if e["event"] == "offer"]
    assert {e["mac"] for e in offers} == {control}


def test_only_the_given_interface_is_served(lab: Lab, images: dict, tmp_path: Path) -> None:
    """The server's namespace has a second interface, to another host: a
    HELLO and READs sent to it there get nothing back (the other host
    captures every frame of the protocol that comes out of it), while the
    same frames on the configured interface are answered."""
    srv, sled = lab.pair()
    x, other = lab.pair()
    sh("ip", "-n", x.ns, "link", "set", x.ifname, "netns", srv.ns)
    second = Host(srv.ns, x.ifname)
    sh("ip", "-n", srv.ns, "link", "set", second.ifname, "up")
    img, raw = images["small"]
    log = tmp_path / "server.log"
    bootserver(lab, srv, ["--json", srv.ifname, str(img), "any"], log)
    wait_listening(log)

    def script(server_macs: list[str], answered: bool) -> list[dict]:
        # A READ from a host without a session is answered when one image
        # is served (a resume), so READs alone would be answered too. On the
        # served interface the answers are waited for (then as long again
        # for anything more); on the other, the same time passes first.
        def wait(kind: str, secs: float) -> dict:
            return {"until": {"type": kind, "count": 1}, "wait": secs} if answered else \
                {"wait": secs}

        return [{"send": {"type": "hello", "dst": "broadcast"}}, wait("Offer", 0.3),
                *({"send": {"type": "read", "dst": m, "slots": {"1": 1024}}}
                  for m in server_macs),
                wait("Data", 1.0)]

    got = rawpeer(other, script([srv.mac(), second.mac()], answered=False))
    assert got["frames"] == [], got["frames"]
    got = rawpeer(sled, script([srv.mac()], answered=True))
    kinds = [(f.get("type"), f["src"], f["dst"]) for f in got["frames"]]
    # The DATA, then (no READ follows) its batch repair's rounds: all here.
    assert kinds[0] == ("Offer", srv.mac(), sled.mac()), kinds
    assert kinds[1:] and set(kinds[1:]) == {("Data", srv.mac(), sled.mac())}, kinds
    macs = {e.get("mac") for e in events(log) if e["event"] in ("offer", "start", "reset")}
    assert macs == {sled.mac()}, events(log)


# ---- a HELLO flood from many hosts -------------------------------------------------------


def _hellos(host: Host, count: int) -> dict:
    p = subprocess.run(host.cmd([sys.executable, str(FUZZ), "hellos", host.ifname, "--count",
                                 str(count)]), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _next_stats(log: Path) -> dict:
    """The first periodic stats event logged from now on."""
    seen = sum(1 for e in events(log) if e["event"] == "stats")
    wait_for(lambda: sum(1 for e in events(log) if e["event"] == "stats") > seen, 5,
             "a stats event")
    return [e for e in events(log) if e["event"] == "stats"][-1]


def test_hello_flood_does_not_evict_a_booting_sled(lab: Lab, images: dict,
                                                   tmp_path: Path) -> None:
    """3000 "sleds" say HELLO (the session table holds 1024) while one boots:
    the table evicts newcomers, never the transfer in progress."""
    srv, sled, attacker = lab.bridge(3)
    img, raw = images["small"]
    log = tmp_path / "server.log"
    server = bootserver(lab, srv, ["--json", srv.ifname, str(img), "any"], log)
    wait_listening(log)
    hold_data(sled, len(raw) // 2)  # keeps the boot running through the flood
    save = tmp_path / "booting.raw"
    client = start_netboot(sled, img, save, 60)
    wait_for(lambda: any(e["event"] == "start" for e in events(log)), 30, "the boot to start")
    flood = _hellos(attacker, 3000)
    assert client.poll() is None, "the boot was over before the flood"
    clear_loss(sled)
    status, result, err = finish(client, 60)
    assert status == 0 and result["verified"], (result, err)
    assert save.read_bytes() == raw
    stats = _next_stats(log)
    assert server.poll() is None
    offers = sum(1 for e in events(log) if e["event"] == "offer")
    print(f"\nHELLO flood of {flood['sent']} hosts in {flood['seconds']} s during a boot: "
          f"boot verified in {result['total_seconds']} s; {offers} OFFERs, "
          f"sessions_evicted {stats.get('sessions_evicted')}, "
          f"sessions_full {stats.get('sessions_full')}, rx_drops {stats['rx_drops']}")
    assert stats.get("sessions_evicted", 0) >= 3000 - 1024 - stats["rx_drops"]


def test_stats_sessions_is_the_live_count(lab: Lab, images: dict, tmp_path: Path) -> None:
    srv, attacker = lab.pair()
    log = tmp_path / "server.log"
    bootserver(lab, srv, ["--json", srv.ifname, str(images["small"][0]), "any"], log)
    wait_listening(log)
    _hellos(attacker, 3000)
    stats = _next_stats(log)
    assert stats["sessions"] <= 1024, stats  # BootServer(max_sessions=1024)

"""The Wireshark dissector (contrib/wireshark/oxboot.lua), read by a real
tshark: on a capture of real boots with a RESET in it, on hand-made hostile
frames, and on a capture of the hostile-frame generator's run.

Every frame is held to oxboot.protocol: the dissector's fields must equal
what parse_frame decodes, it must call a frame malformed exactly when
parse_frame rejects it, and its warnings must be the ones the protocol's
rules (due_offsets, MIN_DATA_PAYLOAD, offer_acceptable) predict. tshark
refuses Lua scripts as root, so it runs as nobody on files in a directory
nobody can read."""

from __future__ import annotations

import json
import os
import pwd
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.cli import ROOT, command
from support.lab import FUZZ

from oxboot import Codec, build_image, protocol
from oxboot.format import MIN_OFFER_SIZE
from oxboot.netlab import Host, Lab, sh, wait_for
from oxboot.protocol import (
    BROADCAST,
    CHUNK,
    DATASET_LEN,
    ETH_HLEN,
    ETHERTYPE,
    HDR_LEN,
    HELLO_TEXT,
    MAGIC,
    MAX_DATA,
    MAX_HELLO,
    MIN_DATA_PAYLOAD,
    NETBOOT_ALIGN,
    OFFER_LEN,
    READ_LEN,
    SLOTS,
    Data,
    Finished,
    FrameError,
    Hello,
    MsgType,
    Offer,
    Read,
    Reset,
    data_extent,
    due_offsets,
    encode_dataset,
    offer_acceptable,
    pack_frame,
    parse_frame,
)
from oxboot.verify import read_header

LUA = ROOT / "contrib" / "wireshark" / "oxboot.lua"
TSHARK = shutil.which("tshark")
DUMPCAP = shutil.which("dumpcap")

needs_tshark = pytest.mark.skipif(
    TSHARK is None, reason="tshark is not installed (scripts/install-deps.sh installs it)")
needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="capturing in network namespaces needs root")

#: The dissector's expert infos (oxboot.expert.NAME); the first five and
#: "internal" are malformed frames, the others well-formed frames that hurt.
EXPERTS = ("short", "bad_magic", "unknown_type", "bad_len", "noffsets_range", "noffsets_slots",
           "runt_data", "data_trailer", "offer_refused", "internal")
MALFORMED = frozenset(EXPERTS[:5])
FIELDS = ("frame.number", "frame.protocols", "_ws.col.Info", "_ws.lua.error",
          "_ws.expert.message", "oxboot.magic", "oxboot.type", "oxboot.len",
          "oxboot.hello_text", "oxboot.ramdisk_size", "oxboot.data_size", "oxboot.sha256",
          "oxboot.dataset", "oxboot.noffsets", "oxboot.offsets", "oxboot.offset",
          "oxboot.data_len", *(f"oxboot.expert.{name}" for name in EXPERTS))

SLED = bytes.fromhex("020000000007")
SERVER = bytes.fromhex("020000000001")


# ---- pcap files, written and read here (the format is 24 + 16 bytes) ----------

_PCAP_HDR = struct.Struct("<IHHiIII")
_PCAP_REC = struct.Struct("<IIII")
_PCAP_MAGICS = {0xA1B2C3D4, 0xA1B23C4D}  # microsecond, nanosecond timestamps
_LINKTYPE_ETHERNET = 1


def write_pcap(path: Path, frames: list[bytes], wire_lens: list[int] | None = None) -> None:
    """A pcap file of `frames`; `wire_lens`: how long each was on the wire,
    for frames cut by a snapshot length (default: as long as captured)."""
    out = [_PCAP_HDR.pack(0xA1B2C3D4, 2, 4, 0, 0, 65535, _LINKTYPE_ETHERNET)]
    for i, frame in enumerate(frames):
        wire = len(frame) if wire_lens is None else wire_lens[i]
        out.append(_PCAP_REC.pack(1_700_000_000 + i, 0, len(frame), wire) + frame)
    path.write_bytes(b"".join(out))


def read_pcap(path: Path) -> list[bytes]:
    """The frames of a little-endian pcap file (dumpcap -P writes one on
    x86), ignoring a last record still being written."""
    buf = path.read_bytes() if path.exists() else b""
    if len(buf) < _PCAP_HDR.size:
        return []
    magic, *_, linktype = _PCAP_HDR.unpack_from(buf)
    assert magic in _PCAP_MAGICS and linktype == _LINKTYPE_ETHERNET, (hex(magic), linktype)
    frames, at = [], _PCAP_HDR.size
    while at + _PCAP_REC.size <= len(buf):
        _, _, caplen, _ = _PCAP_REC.unpack_from(buf, at)
        if at + _PCAP_REC.size + caplen > len(buf):
            break
        frames.append(buf[at + _PCAP_REC.size:at + _PCAP_REC.size + caplen])
        at += _PCAP_REC.size + caplen
    return frames


# ---- tshark as an unprivileged user --------------------------------------------


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory the unprivileged tshark can read, holding the dissector."""
    d = Path(tempfile.mkdtemp(prefix="oxboot-dissector-"))
    try:
        d.chmod(0o755)
        shutil.copyfile(LUA, d / LUA.name)
        (d / LUA.name).chmod(0o644)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def tshark_json(pcap: Path) -> list[dict[str, list[str]]]:
    """One {field: values} per frame of `pcap`, decoded with the dissector;
    tshark must exit 0 with nothing on stderr and no Lua error anywhere."""
    pcap.chmod(0o644)
    argv = [str(TSHARK), "-n", "-r", str(pcap), "-X", f"lua_script:{pcap.parent / LUA.name}",
            "-T", "json", *(a for f in FIELDS for a in ("-e", f))]
    if os.geteuid() == 0:
        try:
            nobody = pwd.getpwnam("nobody")
            ids = nobody.pw_uid, nobody.pw_gid
        except KeyError:
            ids = 65534, 65534
        argv = ["setpriv", f"--reuid={ids[0]}", f"--regid={ids[1]}", "--clear-groups", *argv]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HOME": str(pcap.parent)})
    assert p.returncode == 0 and p.stderr == "", (p.returncode, p.stderr[-2000:])
    assert "Lua Error" not in p.stdout
    return [packet["_source"]["layers"] for packet in json.loads(p.stdout)]


# ---- what oxboot.protocol says about a frame -------------------------------------


@dataclass
class Verdict:
    fields: dict[str, object] | None  # None: parse_frame rejects the frame
    warnings: set[str]


def noffsets_agree(read: Read) -> bool:
    """The OS client's rule (see due_offsets): a READ names each due offset
    at its own slot, and offset 0 (slot 0 only) is due exactly when fewer
    slots are nonzero than noffsets."""
    nonzero = sum(1 for slot in read.slots if slot)
    zero_due = read.slots[0] == 0 and nonzero < read.noffsets
    return read.noffsets == nonzero + zero_due


def verdict(frame: bytes) -> Verdict:
    try:
        parsed = parse_frame(frame)
    except FrameError:
        return Verdict(None, set())
    code, length = struct.unpack_from("!II", frame, ETH_HLEN + 4)
    fields: dict[str, object] = {"oxboot.type": code, "oxboot.len": length}
    warnings = set()
    match parsed.msg:
        case Hello(text):
            if text and all(32 <= b < 127 for b in text):
                fields["oxboot.hello_text"] = text.decode()
        case Offer() as offer:
            fields |= {"oxboot.ramdisk_size": offer.ramdisk_size,
                       "oxboot.data_size": offer.data_size,
                       "oxboot.sha256": offer.sha256.hex()}
            if all(32 <= ord(c) < 127 for c in offer.dataset_name):
                fields["oxboot.dataset"] = offer.dataset_name
            if not offer_acceptable(offer, offer.sha256):
                warnings.add("offer_refused")
        case Read() as read:
            fields |= {"oxboot.noffsets": read.noffsets, "oxboot.offsets": list(read.slots)}
            if not noffsets_agree(read):
                warnings.add("noffsets_slots")
        case Data(offset, payload):
            fields |= {"oxboot.offset": offset, "oxboot.data_len": len(payload)}
            if 0 < len(payload) < MIN_DATA_PAYLOAD:
                warnings.add("runt_data")
            elif payload and len(frame) > ETH_HLEN + HDR_LEN + length:
                warnings.add("data_trailer")
    return Verdict(fields, warnings)


def decoded(layers: dict[str, list[str]], name: str) -> object:
    values = layers[name]
    if name == "oxboot.offsets":
        return [int(v, 16) for v in values]
    (value,) = values
    if name in ("oxboot.hello_text", "oxboot.dataset"):
        return value
    if name == "oxboot.sha256":
        return value.replace(":", "")
    return int(value, 16) if value.startswith("0x") else int(value)


def check_frames(frames: list[bytes], layers: list[dict[str, list[str]]]) -> Counter[str]:
    """Hold each frame's decoding to oxboot.protocol's; returns how many
    frames raised each expert info."""
    assert len(layers) == len(frames)
    fired: Counter[str] = Counter()
    for i, (frame, got) in enumerate(zip(frames, layers, strict=True)):
        where = f"frame {i + 1} ({frame[:40].hex()}...): {got.get('_ws.expert.message')}"
        assert int(got["frame.number"][0]) == i + 1
        assert got["frame.protocols"] == ["eth:ethertype:oxboot"], where
        assert "_ws.lua.error" not in got, where
        experts = {name for name in EXPERTS if f"oxboot.expert.{name}" in got}
        fired.update(experts)
        want = verdict(frame)
        if want.fields is None:
            assert len(experts) == 1 and experts <= MALFORMED, where
            continue
        assert experts == want.warnings, where
        assert int(got["oxboot.magic"][0], 16) == MAGIC, where
        for name, value in want.fields.items():
            assert decoded(got, name) == value, (where, name)
    return fired


# ---- the dissector's own constants ------------------------------------------------


def test_dissector_constants_are_the_protocols() -> None:
    """The plugin repeats the protocol's numbers (it must stand alone): they
    are protocol.py's, so the two cannot drift apart unnoticed."""
    consts: dict[str, int] = {}
    for names, values in re.findall(r"^local ([A-Z_, ]+) = ([0-9a-fA-Fx, ]+?)\s*(?:--.*)?$",
                                    LUA.read_text(), re.M):
        for name, value in zip(names.split(","), values.split(","), strict=True):
            consts[name.strip()] = int(value.strip(), 0)
    # Every constant the dissector declares is the protocol's (T_X: MsgType.X),
    # and it declares all of these.
    assert consts == {name: MsgType[name[2:]].value if name.startswith("T_")
                      else getattr(protocol, name) for name in consts}
    assert {"ETHERTYPE", "MAGIC", "HDR_LEN", "SLOTS", "READ_LEN", "OFFER_LEN", "DATASET_LEN",
            "MAX_DATA", "MAX_HELLO", "MIN_DATA_PAYLOAD", "MIN_OFFER_SIZE",
            *(f"T_{t.name}" for t in MsgType)} <= set(consts)


# ---- hand-made hostile frames ---------------------------------------------------------


def _hdr(code: int, length: int, magic: int = MAGIC) -> bytes:
    return SERVER + SLED + struct.pack("!HIII", ETHERTYPE, magic, code, length)


def _read(noffsets: int, slots: dict[int, int]) -> bytes:
    row = [0] * SLOTS
    for i, offset in slots.items():
        row[i] = offset
    return _hdr(MsgType.READ, READ_LEN) + struct.pack(f"!Q{SLOTS}Q", noffsets, *row)


def _offer(ramdisk: int, size: int, dataset: bytes) -> bytes:
    return pack_frame(SLED, SERVER, Offer(ramdisk, size, bytes(range(32)), dataset))


def hostile_frames() -> list[tuple[bytes, str | None]]:
    """(frame, the expert info it must raise, or None)."""
    mib = MIN_OFFER_SIZE
    good = [
        pack_frame(BROADCAST, SLED, Hello(HELLO_TEXT)),
        pack_frame(BROADCAST, SLED, Hello(b"")),
        _offer(64 * mib, 2 * mib, encode_dataset("rpool/ROOT/ramdisk")),
        pack_frame(SERVER, SLED, Read(SLOTS, tuple(range(0, NETBOOT_ALIGN, CHUNK)))),
        pack_frame(SERVER, SLED, Read.from_slots({17: 17 * CHUNK, 90: 90 * CHUNK})),
        pack_frame(SERVER, SLED, Read.from_slots({0: 0})),  # offset 0 asked again
        pack_frame(SERVER, SLED, Read(0, (0,) * SLOTS)),
        pack_frame(SLED, SERVER, Data(0x1FC00, bytes(CHUNK))),
        pack_frame(SLED, SERVER, Data(2 * mib, b"")),
        pack_frame(SLED, SERVER, Data(2 * mib, b"")) + bytes(26),  # EOF padded: harmless
        pack_frame(SLED, SERVER, Data(0, bytes(MIN_DATA_PAYLOAD))),
        pack_frame(SLED, SERVER, Data(0, bytes(MAX_DATA))),
        pack_frame(SERVER, SLED, Finished()),
        pack_frame(SLED, SERVER, Reset()),
        pack_frame(SLED, SERVER, Reset()) + bytes(34),  # padded to 60: harmless
    ]
    cases: list[tuple[bytes, str | None]] = [(f, None) for f in good]
    for frame in good:
        cases.append((frame[:14] + struct.pack("!I", MAGIC ^ 0x100) + frame[18:], "bad_magic"))
        # Cut short anywhere: in the header, then in the payload.
        full = ETH_HLEN + HDR_LEN + struct.unpack_from("!I", frame, 22)[0]
        for cut in sorted({*range(ETH_HLEN, ETH_HLEN + HDR_LEN), (ETH_HLEN + HDR_LEN + full) // 2,
                           full - 1}):
            if cut < full:
                cases.append((frame[:cut], "short" if cut < ETH_HLEN + HDR_LEN else "bad_len"))
    cases += [
        (_hdr(0x9002, 0), "unknown_type"),
        (_hdr(0xFFFFFFFF, 4) + b"abcd", "unknown_type"),
        (_hdr(MsgType.OFFER, OFFER_LEN - 1) + bytes(OFFER_LEN - 1), "bad_len"),
        (_hdr(MsgType.READ, READ_LEN - 8) + bytes(READ_LEN - 8), "bad_len"),
        (_hdr(MsgType.READ, READ_LEN + 8) + bytes(READ_LEN + 8), "bad_len"),
        (_hdr(MsgType.FINISHED, 4) + bytes(4), "bad_len"),
        (_hdr(MsgType.RESET, 1) + bytes(34), "bad_len"),
        (_hdr(MsgType.DATA, 7) + bytes(7), "bad_len"),
        (_hdr(MsgType.DATA, 8 + MAX_DATA + 1) + bytes(8 + MAX_DATA + 1), "bad_len"),
        (_hdr(MsgType.HELLO, MAX_HELLO + 1) + bytes(MAX_HELLO + 1), "bad_len"),
        (_hdr(MsgType.HELLO, 0xFFFFFFFF) + HELLO_TEXT, "bad_len"),
        (_hdr(MsgType.DATA, 0x80000000) + bytes(40), "bad_len"),
        (_read(SLOTS + 1, {1: CHUNK}), "noffsets_range"),
        (_read((1 << 64) - 1, {}), "noffsets_range"),
        # noffsets against the nonzero slots (offset 0 due only in slot 0).
        (_read(1, {3: CHUNK, 9: 2 * CHUNK}), "noffsets_slots"),
        (_read(4, {3: CHUNK, 9: 2 * CHUNK}), "noffsets_slots"),
        (_read(3, {0: 4 * CHUNK, 9: 2 * CHUNK}), "noffsets_slots"),
        (_read(0, {5: CHUNK}), "noffsets_slots"),
        (_read(3, {3: CHUNK, 9: 2 * CHUNK}), None),  # + offset 0 in slot 0
        (_read(2, {3: CHUNK, 9: 2 * CHUNK}), None),
        # The padded DATA the OS client panics on, and bytes after a payload.
        *((pack_frame(SLED, SERVER, Data(2 * mib, bytes(n))), "runt_data")
          for n in range(1, MIN_DATA_PAYLOAD)),
        (pack_frame(SLED, SERVER, Data(0, bytes(10))) + bytes(16), "runt_data"),
        (pack_frame(SLED, SERVER, Data(0, bytes(CHUNK))) + bytes(4), "data_trailer"),
        # OFFERs the OS client ignores whatever their checksum.
        (_offer(64 * mib, 2 * mib, b"x" * DATASET_LEN), "offer_refused"),
        (_offer(mib - 1, mib - 1, encode_dataset("small")), "offer_refused"),
        (_offer(2 * mib, 3 * mib, encode_dataset("big")), "offer_refused"),
    ]
    rng = random.Random(16)
    for _ in range(200):  # our ethertype, then anything
        body = bytearray(rng.randbytes(rng.randrange(0, 1500)))
        if len(body) >= 8:
            body[:4] = struct.pack("!I", MAGIC)
            body[4:8] = struct.pack("!I", rng.choice(list(MsgType)))
        cases.append((SERVER + SLED + struct.pack("!H", ETHERTYPE) + bytes(body), "?"))
    return cases


@needs_tshark
def test_hostile_frames_are_flagged_never_a_lua_error(shared: Path) -> None:
    cases = hostile_frames()
    frames = [frame for frame, _ in cases]
    pcap = shared / "hostile.pcap"
    write_pcap(pcap, frames)
    layers = tshark_json(pcap)
    fired = check_frames(frames, layers)
    for (frame, want), got in zip(cases, layers, strict=True):
        if want != "?":
            experts = {name for name in EXPERTS if f"oxboot.expert.{name}" in got}
            assert experts == ({want} if want else set()), (frame[:40].hex(), got)
    # The random frames were mostly nonsense: each malformed kind was seen.
    assert MALFORMED <= set(fired), fired
    assert fired["internal"] == 0
    info = [got["_ws.col.Info"][0] for got in layers]
    assert info[:15] == [
        f'HELLO "{HELLO_TEXT.decode()}"', 'HELLO ""',
        f"OFFER size {2 * MIN_OFFER_SIZE} ramdisk {64 * MIN_OFFER_SIZE} "
        f"sha256 {bytes(range(32)).hex()}",
        "READ 128 offsets 0x0..0x1fc00", "READ 2 offsets 0x4400..0x16800", "READ 1 offset 0x0",
        "READ 0 offsets", "DATA offset 0x1fc00 len 1024",
        "DATA offset 0x200000 len 0 (end of image)", "DATA offset 0x200000 len 0 (end of image)",
        "DATA offset 0x0 len 26", "DATA offset 0x0 len 1468", "FINISHED", "RESET", "RESET"]


@needs_tshark
def test_frames_cut_by_the_snapshot_length(shared: Path) -> None:
    """A capture with a small snapshot length (tcpdump -s 64, to keep image
    bytes out of the file) holds whole frames cut short: what was captured
    is decoded, nothing is called malformed."""
    whole = [
        pack_frame(BROADCAST, SLED, Hello(HELLO_TEXT)),
        pack_frame(SLED, SERVER, Offer(4 * MIN_OFFER_SIZE, MIN_OFFER_SIZE, bytes(32),
                                       encode_dataset("d"))),
        pack_frame(SERVER, SLED, Read(SLOTS, tuple(range(0, NETBOOT_ALIGN, CHUNK)))),
        pack_frame(SLED, SERVER, Data(0x1FC00, bytes(CHUNK))),
    ]
    cuts = (14, 20, 26, 34, 42, 64, 100)
    cut_frames = [(frame[:cut], len(frame)) for frame in whole for cut in cuts
                  if cut < len(frame)]
    frames = [frame for frame, _ in cut_frames]
    pcap = shared / "snap.pcap"
    write_pcap(pcap, frames, [wire for _, wire in cut_frames])
    layers = tshark_json(pcap)
    assert len(layers) == len(frames)
    for got in layers:
        assert got["frame.protocols"] == ["eth:ethertype:oxboot"]
        assert not {k for k in got if k.startswith(("oxboot.expert.", "_ws.lua", "_ws.expert"))}
        assert got["_ws.col.Info"][0].endswith("[cut short by the capture]"), got
    data = [got for got in layers if got.get("oxboot.type") == [f"0x{MsgType.DATA:08x}"]]
    assert [decoded(got, "oxboot.offset") for got in data if "oxboot.offset" in got] == \
        [0x1FC00] * sum(cut >= 34 for cut in cuts)
    assert {decoded(got, "oxboot.data_len") for got in data if "oxboot.offset" in got} == {CHUNK}
    assert "READ 128 offsets 0x0..0x1c00 [cut short by the capture]" in \
        [got["_ws.col.Info"][0] for got in layers]


# ---- captures in a lab -------------------------------------------------------------------


@dataclass
class Capture:
    proc: subprocess.Popen[bytes]
    path: Path
    log: Path

    def stop(self) -> None:
        """End the capture (dumpcap writes out what it has on SIGINT)."""
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(20) == 0, self.log.read_text()


def capture(lab: Lab, host: Host, path: Path) -> Capture:
    """dumpcap on `host`'s interface, our ethertype only, into a pcap file."""
    if DUMPCAP is None:
        pytest.skip("dumpcap is not installed (scripts/install-deps.sh installs tshark)")
    log = path.with_suffix(".log")
    proc = lab.start(host, [DUMPCAP, "-i", host.ifname, "-f", f"ether proto {ETHERTYPE:#x}",
                            "-P", "-B", "64", "-w", str(path)], log)
    wait_for(lambda: "Capturing on" in log.read_text() or proc.poll() is not None, 30,
             "dumpcap to start")
    assert proc.poll() is None, log.read_text()
    return Capture(proc, path, log)


def _hold_data(host: Host, from_offset: int) -> None:
    """Drop, in the kernel at `host`'s ingress, every DATA at or past
    `from_offset` (the low word of its offset, frame bytes 30..33), so a boot
    gets that far and waits there, re-asking, until _clear_hold."""
    rules = (f"table netdev oxhold {{\n chain in {{\n"
             f"  type filter hook ingress device {host.ifname} priority 0;\n"
             f"  ether type {ETHERTYPE:#x} @ll,144,32 {MsgType.DATA:#x} "
             f"@ll,240,32 >= {from_offset} drop\n }}\n}}\n")
    subprocess.run(host.cmd(["nft", "-f", "-"]), input=rules, text=True, check=True,
                   capture_output=True)


def _clear_hold(host: Host) -> None:
    sh(*host.cmd(["nft", "delete", "table", "netdev", "oxhold"]))


def _events(log: Path) -> list[dict]:
    return [json.loads(ln) for ln in log.read_text().splitlines() if ln.startswith("{")]


def _serve(lab: Lab, host: Host, imgs: list[Path], log: Path) -> subprocess.Popen[bytes]:
    proc = lab.start(host, [*command("bootserver"), "--json", "--image", str(imgs[1]),
                            host.ifname, str(imgs[0]), "any"], log)
    wait_for(lambda: sum(e["event"] == "image" for e in _events(log)) == 2, 30,
             "the boot server to start")
    return proc


def _netboot(host: Host, img: Path, save: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        host.cmd([*command("oxboot"), "netboot", host.ifname, "--want-image", str(img),
                  "--save", str(save), "--json", "-t", "60"]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen[str]) -> tuple[int, dict]:
    out, err = proc.communicate(timeout=90)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert lines, (out, err)
    return proc.returncode, json.loads(lines[-1])


@needs_tshark
@needs_root
@pytest.mark.net
def test_capture_of_real_boots_with_a_reset(lab: Lab, shared: Path) -> None:
    """Two boots of one sled, captured at the sled: the first cut off by a
    server restart (a server with two images cannot tell which one a sled
    it has no session for is reading, so it answers RESET), the second whole."""
    imgs, raws = [], []
    # Whole batches: the OS client hashes up to a batch boundary.
    for i, size in enumerate((MIN_OFFER_SIZE, MIN_OFFER_SIZE + NETBOOT_ALIGN)):
        raw = random.Random(i).randbytes(size)
        (shared / f"{i}.raw").write_bytes(raw)
        build_image(shared / f"{i}.raw", shared / f"{i}.img", codec=Codec.NONE,
                    target_size=4 * MIN_OFFER_SIZE, image_name=f"image{i}", dataset=f"lab/d{i}")
        imgs.append(shared / f"{i}.img")
        raws.append(raw)
    srv, sled = lab.pair()
    sled_mac = sled.mac()
    cap = capture(lab, sled, shared / "boot.pcap")
    first = _serve(lab, srv, imgs, shared / "s1.log")
    _hold_data(sled, len(raws[0]) // 2)  # a boot that waits half-way
    client = _netboot(sled, imgs[0], shared / "first.raw")
    wait_for(lambda: any(e["event"] == "start" for e in _events(shared / "s1.log")), 30,
             "the boot to start")
    first.kill()
    first.wait()
    _clear_hold(sled)
    _serve(lab, srv, imgs, shared / "s2.log")
    status, result = _result(client)
    assert status != 0 and result["state"] == "reset", result
    status, result = _result(_netboot(sled, imgs[0], shared / "second.raw"))
    assert status == 0 and result["verified"], result
    # FINISHED is the sled's last frame: once it is in the file, all is.
    finished = struct.pack("!I", MsgType.FINISHED)
    wait_for(lambda: any(f[18:22] == finished for f in read_pcap(cap.path)), 30,
             "the capture to hold the FINISHED")
    cap.stop()

    frames = read_pcap(cap.path)
    layers = tshark_json(cap.path)
    fired = check_frames(frames, layers)
    assert not fired, fired  # real boots: nothing to flag
    types = [MsgType(int(got["oxboot.type"][0], 16)) for got in layers]
    count = Counter(types)
    print(f"\nboot capture: {len(frames)} frames, {({t.name: n for t, n in count.items()})}")
    assert count[MsgType.HELLO] >= 2 and count[MsgType.FINISHED] == 1, count
    assert count[MsgType.OFFER] == 2 * count[MsgType.HELLO], count  # two images each time
    assert count[MsgType.RESET] >= 1, count
    sled_bytes = bytes.fromhex(sled_mac.replace(":", ""))
    assert all(f[:6] == sled_bytes for f, t in zip(frames, types, strict=True)
               if t is MsgType.RESET)
    # The RESET ended the first boot; the sled began again with a HELLO.
    last_hello = max(i for i, t in enumerate(types) if t is MsgType.HELLO)
    assert types.index(MsgType.RESET) < last_hello
    assert all(got["oxboot.hello_text"] == [HELLO_TEXT.decode()]
               for got, t in zip(layers, types, strict=True) if t is MsgType.HELLO)
    headers = [read_header(img) for img in imgs]
    offers = {(decoded(got, "oxboot.ramdisk_size"), decoded(got, "oxboot.data_size"),
               decoded(got, "oxboot.sha256"), decoded(got, "oxboot.dataset"))
              for got, t in zip(layers, types, strict=True) if t is MsgType.OFFER}
    assert offers == {(h.target_size, h.image_size, h.sha256.hex(), h.dataset)
                      for h in headers}
    # The whole second boot: its READs asked for every chunk up to the
    # batch boundary, and each was answered with the image's bytes' length.
    size = len(raws[0])
    asked, served = set(), {}
    for frame, got, t in zip(frames[last_hello:], layers[last_hello:], types[last_hello:],
                             strict=True):
        if t is MsgType.READ:
            read = Read(decoded(got, "oxboot.noffsets"), tuple(decoded(got, "oxboot.offsets")))
            asked.update(due_offsets(read))
        elif t is MsgType.DATA:
            served[decoded(got, "oxboot.offset")] = decoded(got, "oxboot.data_len")
            assert len(frame) == ETH_HLEN + HDR_LEN + decoded(got, "oxboot.len")
    batches = -(-size // NETBOOT_ALIGN)
    assert asked == set(range(0, batches * NETBOOT_ALIGN, CHUNK))
    assert served == {offset: data_extent(size, offset)[1] for offset in asked}
    info = [got["_ws.col.Info"][0] for got in layers]
    assert "READ 128 offsets 0x0..0x1fc00" in info[last_hello:]
    assert "DATA offset 0x1fc00 len 1024" in info[last_hello:]
    assert f"OFFER size {size} ramdisk {4 * MIN_OFFER_SIZE} sha256 {headers[0].sha256.hex()}" \
        in info
    assert "RESET" in info and "FINISHED" in info


@needs_tshark
@needs_root
@pytest.mark.net
def test_capture_of_the_hostile_frame_generator(lab: Lab, shared: Path) -> None:
    """tests/peers/fuzz_frames.py's seeded hostile traffic, captured where it
    arrives: every frame decoded or flagged as oxboot.protocol says, as many
    flagged malformed as the generator made."""
    srv, attacker = lab.pair()
    cap = capture(lab, srv, shared / "fuzz.pcap")
    server_mac = srv.mac()
    p = subprocess.run(attacker.cmd([
        sys.executable, str(FUZZ), "fuzz", attacker.ifname, "--server", server_mac,
        "--image-mac", server_mac, "--image-mac", "02:00:00:00:00:42",
        "--spoof", "02:00:00:00:00:07", "--image-size", str(2 * MIN_OFFER_SIZE),
        "--count", "3000", "--seed", "1616"]), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    fuzz = json.loads(p.stdout)
    assert fuzz["sent"] == 3000 and fuzz["errors"] == 0, fuzz
    wait_for(lambda: len(read_pcap(cap.path)) >= fuzz["sent"], 60,
             "the capture to hold every frame sent")
    cap.stop()
    frames = read_pcap(cap.path)
    assert len(frames) == fuzz["sent"]
    fired = check_frames(frames, tshark_json(cap.path))
    print(f"\nfuzz capture: {len(frames)} frames, {fuzz['bad']} malformed; flagged {dict(fired)}")
    assert sum(fired[name] for name in MALFORMED) == fuzz["bad"], (fired, fuzz)
    assert fired["internal"] == 0

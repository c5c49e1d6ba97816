"""The boot server and the sled emulator over real kernel networking:
veth pairs between network namespaces, a bridge for several sleds, loss
injected by nftables in the kernel. Each test removes what it made."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.cli import command
from support.lab import (
    boot_once,
    bootserver,
    clear_loss,
    drop_data,
    dropped_frames,
    events,
    hold_data,
    netboot,
    rawpeer,
    wait_listening,
)

from oxboot.link import af_xdp_unavailable
from oxboot.netlab import Lab, sh, wait_for


@pytest.mark.parametrize("extra", [[], ["--workers", "2"], ["--tx", "ring"], ["--tx", "send"],
                                   ["--tx", "xdp"], ["--busy-poll", "0"]], ids=" ".join)
def test_single_sled_boot(lab: Lab, images: dict, tmp_path: Path, extra: list[str]) -> None:
    if "xdp" in extra and (why := af_xdp_unavailable()):
        pytest.skip(why)
    srv, sled = lab.pair()
    img, raw = images["plain"]
    log = tmp_path / "server.log"
    server = bootserver(lab, srv, ["-s", "--json", *extra, srv.ifname, str(img), "any"], log)
    wait_listening(log)
    status, result, saved = netboot(sled, img, tmp_path)
    assert status == 0 and result["verified"], result
    assert saved.read_bytes() == raw
    assert server.wait(10) == 0  # -s: exit 0 after the first FINISHED
    evs = events(log)
    assert {"offer", "start", "finished"} <= {e["event"] for e in evs}
    final = [e for e in evs if e["event"] == "stats"][-1]
    # With sendmmsg (the default), the ring or AF_XDP, after a session's first READ
    # its READs are answered in the C core; with send all go through Python.
    fast = extra != ["--tx", "send"]
    assert (final["rx_served_in_c"] > 0) == fast, final
    finished = [e for e in evs if e["event"] == "finished"][-1]
    assert finished["frames"] == final["tx_frames"] >= len(raw) // 1024, (finished, final)
    # One job per READ, and one per repair round (none, unless a round trip
    # here took far longer than the ones before it).
    assert final["reads"] + final.get("repairs", 0) == \
        final["tx_jobs"] + final["tx_dropped_jobs"], final
    # The default (auto) transmits by AF_XDP where the kernel allows it, on
    # the one queue a veth has: a second worker falls back to sendmmsg.
    methods = [e for e in evs if e["event"] == "transmit"][-1]["methods"]
    assert methods == final["tx_methods"]
    forced = extra[1] if extra[:1] == ["--tx"] else None
    if forced is not None:
        assert set(methods) == {forced}, methods
    elif af_xdp_unavailable() is None:
        assert methods == ["xdp", "sendmmsg"][:len(methods)], methods
    else:
        assert set(methods) == {"sendmmsg"}, methods


def test_xdp_with_more_workers_than_queues_is_a_one_line_error(lab: Lab, images: dict,
                                                              tmp_path: Path) -> None:
    if why := af_xdp_unavailable():
        pytest.skip(why)
    srv, _ = lab.pair()  # a veth has one queue: worker 1 has none to bind to
    p = subprocess.run(srv.cmd([*command("bootserver"), "--tx", "xdp", "--workers", "2",
                                srv.ifname, str(images["small"][0]), "any"]),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), p.stderr
    assert srv.ifname in lines[0] and "AF_XDP" in lines[0] and "queue 1" in lines[0], lines


@pytest.mark.parametrize("codec", ["zlib", "zstd"])
def test_compressed_images_are_served_inflated(lab: Lab, images: dict, tmp_path: Path,
                                               codec: str) -> None:
    srv, sled = lab.pair()
    boot_once(lab, srv, sled, images[codec], tmp_path)


def test_three_images_client_takes_matching_one(lab: Lab, images: dict, tmp_path: Path) -> None:
    srv, sled = lab.pair()
    log = tmp_path / "server.log"
    a, b, c = images["other1"][0], images["other2"][0], images["plain"][0]
    server = bootserver(lab, srv, ["-s", "--json", "--image", str(b), "--image", str(c),
                                   srv.ifname, str(a), "any"], log)
    wait_listening(log)
    status, result, saved = netboot(sled, b, tmp_path)
    assert status == 0 and result["verified"], result
    assert saved.read_bytes() == images["other2"][1]
    assert server.wait(10) == 0
    offers = [e for e in events(log) if e["event"] == "offer"]
    assert {Path(e["image"]).name for e in offers} == {a.name, b.name, c.name}
    finished = [e for e in events(log) if e["event"] == "finished"]
    assert [Path(e["image"]).name for e in finished] == [b.name]


@pytest.mark.parametrize("workers,tx", [(1, "auto"), (3, "auto"), (2, "xdp")])
def test_eight_sleds_on_a_bridge(lab: Lab, images: dict, tmp_path: Path, workers: int,
                                 tx: str) -> None:
    if tx == "xdp" and (why := af_xdp_unavailable()):
        pytest.skip(why)
    # With --tx xdp every worker needs a queue of its own: two-queue veths
    # stand in for a multi-queue NIC.
    hosts = lab.bridge(9, queues=workers if tx == "xdp" else 1)
    srv, sleds = hosts[0], hosts[1:]
    for i, sled in enumerate(sleds):
        # MAC bytes 2..5 = i: the fanout gives every worker some sleds.
        sh("ip", "-n", sled.ns, "link", "set", sled.ifname, "address", f"02:00:00:00:00:{i:02x}")
    img, raw = images["plain"]
    log = tmp_path / "server.log"
    server = bootserver(lab, srv, ["--json", "--workers", str(workers), "--tx", tx,
                                   srv.ifname, str(img), "any"], log)
    wait_listening(log)
    procs = []
    for sled in sleds:
        save = tmp_path / f"{sled.ns}.raw"
        procs.append((subprocess.Popen(
            sled.cmd([*command("oxboot"), "netboot", sled.ifname, "--want-image", str(img),
                      "--save", str(save), "--json", "-t", "90"]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), save))
    for p, save in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, (out, err)
        assert json.loads(out.splitlines()[-1])["verified"]
        assert save.read_bytes() == raw
    finished = {e["mac"] for e in events(log) if e["event"] == "finished"}
    assert finished == {s.mac() for s in sleds}
    server.terminate()
    server.wait(15)
    final = [e for e in events(log) if e["event"] == "stats"][-1]
    assert final.get("final") and final["workers"] == workers, final
    # Each worker answered its own sleds' READs in C, on its own thread.
    per_worker = final["rx_served_per_worker"]
    assert len(per_worker) == workers and min(per_worker) > 0, final
    assert final["finished"] == 8 and final["tx_errors"] == 0, final
    if tx == "xdp":
        # One AF_XDP socket per worker, each bound to its own queue.
        assert final["tx_methods"] == ["xdp"] * workers, final


def test_boot_survives_5_percent_data_loss(lab: Lab, images: dict, tmp_path: Path,
                                           boot_times: Callable[[str], None]) -> None:
    srv, sled = lab.pair()
    img, raw = images["small"]
    drop_data(sled, 5)
    log = tmp_path / "server.log"
    # The client's own timer (repaired boots: tests/netns/test_repair_lab.py).
    bootserver(lab, srv, ["-s", "--json", "--repair", "off", srv.ifname, str(img), "any"], log)
    wait_listening(log)
    started = time.monotonic()
    status, result, saved = netboot(sled, img, tmp_path, timeout=120)
    assert status == 0 and result["verified"], result
    assert saved.read_bytes() == raw
    assert dropped_frames(sled) > 0 and result["retransmits"] > 0
    boot_times(f"5% DATA loss, 1 sled (-s): 1 MiB booted in {time.monotonic() - started:.1f} s, "
               f"{result['retransmits']} retransmissions, {dropped_frames(sled)} frames dropped")


def test_read_with_scattered_slots_is_served_in_full(lab: Lab, images: dict,
                                                     tmp_path: Path) -> None:
    srv, peer = lab.pair()
    img, raw = images["plain"]
    log = tmp_path / "server.log"
    # One READ's answer (this peer sends no second READ: with batch repair
    # the same DATA would come again a few times, as it should).
    bootserver(lab, srv, ["--json", "--repair", "off", srv.ifname, str(img), "any"], log)
    wait_listening(log)
    size = len(raw)
    slots = {"17": 17 * 1024, "90": 90 * 1024, "91": 90 * 1024,  # a duplicate
             "100": 1000, "127": size - 10, "5": size + 4096}
    got = rawpeer(peer, [
        {"send": {"type": "hello", "dst": "broadcast"}},
        {"until": {"type": "Offer", "count": 1}, "wait": 0.5},
        {"send": {"type": "read", "slots": slots, "noffsets": 7}},  # 7 > 6 non-zero: offset 0
        {"until": {"type": "Data", "count": 6}, "wait": 1.0},  # then any duplicate
    ])
    data = [f for f in got["frames"] if f.get("type") == "Data"]
    by_offset = {f["offset"]: f for f in data}
    assert sorted(by_offset) == sorted({0, 17 * 1024, 90 * 1024, 1000, size - 10, size + 4096})
    assert len(data) == len(by_offset)  # duplicates served once
    for off, f in by_offset.items():
        payload = bytes.fromhex(f["payload_hex"])
        if off >= size:
            assert f["n"] == 0
        elif off == size - 10:
            assert payload == raw[off:] + bytes(16)  # padded to 26, never a short frame
        else:
            assert payload == raw[off:off + 1024]
    assert all(f["len"] >= 60 for f in data if f["n"])  # no runt the OS would panic on
    assert {f["type"] for f in got["frames"]} <= {"Offer", "Data", "Reset"}


def test_file_tail_is_never_served(lab: Lab, images: dict, tmp_path: Path) -> None:
    srv, peer = lab.pair()
    img, raw = images["small"]
    padded = tmp_path / "tail.img"
    padded.write_bytes(img.read_bytes() + b"SECRET" * 1000)
    bootserver(lab, srv, ["--json", srv.ifname, str(padded), "any"], tmp_path / "s.log")
    wait_listening(tmp_path / "s.log")
    size = len(raw)
    got = rawpeer(peer, [
        {"send": {"type": "hello", "dst": "broadcast"}},
        {"until": {"type": "Offer", "count": 1}, "wait": 0.5},
        {"send": {"type": "read", "slots": {"1": size - 1024, "2": size, "3": size + 1024}}},
        {"until": {"type": "Data", "count": 3}, "wait": 0.5},
    ])
    data = {f["offset"]: f for f in got["frames"] if f.get("type") == "Data"}
    assert data[size - 1024]["n"] == 1024 and data[size]["n"] == 0
    assert data[size + 1024]["n"] == 0
    assert all("534543524554" not in f.get("payload_hex", "") for f in got["frames"])


def test_read_without_session_gets_reset_with_several_images(lab: Lab, images: dict,
                                                             tmp_path: Path) -> None:
    srv, peer = lab.pair()
    log = tmp_path / "server.log"
    bootserver(lab, srv, ["--json", "--image", str(images["other1"][0]), srv.ifname,
                          str(images["plain"][0]), "any"], log)
    wait_listening(log)
    server_mac = srv.mac()
    got = rawpeer(peer, [
        {"send": {"type": "read", "dst": server_mac, "slots": {"1": 1024}}},
        {"until": {"type": "Reset", "count": 1}, "wait": 0.5},
    ])
    assert [f["type"] for f in got["frames"]] == ["Reset"]


def test_hello_timeout(lab: Lab, images: dict, tmp_path: Path) -> None:
    srv, _ = lab.pair()
    started = time.monotonic()
    p = subprocess.run(srv.cmd([*command("bootserver"), "-t", "1", srv.ifname,
                                str(images["plain"][0]), "any"]),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert p.stderr.strip().splitlines()[-1].startswith("Error: no HELLO within 1")
    # Gave up, well before a hang would end: a generous bound for a busy machine.
    assert time.monotonic() - started < 30


def test_wrong_mac_host_is_ignored(lab: Lab, images: dict, tmp_path: Path) -> None:
    srv, sled = lab.pair()
    img, _ = images["plain"]
    log = tmp_path / "server.log"
    bootserver(lab, srv, ["--json", srv.ifname, str(img), "02:00:00:00:00:01"], log)
    wait_listening(log)
    got = rawpeer(sled, [
        {"send": {"type": "hello", "dst": "broadcast"}}, {"wait": 0.5},
        {"send": {"type": "read", "dst": srv.mac(), "slots": {"0": 0}, "noffsets": 1}},
        {"wait": 0.5},
    ])
    assert got["frames"] == []
    assert not [e for e in events(log) if e["event"] in ("offer", "start")]


def test_allowed_mac_is_served(lab: Lab, images: dict, tmp_path: Path) -> None:
    srv, sled = lab.pair()
    img, raw = images["plain"]
    log = tmp_path / "server.log"
    server = bootserver(lab, srv, ["-s", "--json", srv.ifname, str(img), sled.mac()], log)
    wait_listening(log)
    status, result, saved = netboot(sled, img, tmp_path)
    assert status == 0 and result["verified"]
    assert server.wait(10) == 0


def test_server_restart_mid_boot(lab: Lab, images: dict, tmp_path: Path) -> None:
    srv, sled = lab.pair()
    img, raw = images["big"]
    log1, log2 = tmp_path / "s1.log", tmp_path / "s2.log"
    first = bootserver(lab, srv, ["--json", srv.ifname, str(img), "any"], log1)
    wait_listening(log1)
    # The second half of the image is held back (its DATA dropped) until the
    # server has been killed: really mid-boot, however fast or slow the machine.
    hold_data(sled, len(raw) // 2)
    save = tmp_path / "restart.raw"
    client = subprocess.Popen(
        sled.cmd([*command("oxboot"), "netboot", sled.ifname, "--want-image", str(img),
                  "--save", str(save), "--json", "-t", "60"]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: '"event": "start"' in log1.read_text(), 20, "the boot to start")
    first.kill()
    first.wait()
    assert client.poll() is None, "the boot was over before the server was killed"
    assert not any(e["event"] == "finished" for e in events(log1))
    clear_loss(sled)
    time.sleep(0.5)
    bootserver(lab, srv, ["--json", srv.ifname, str(img), "any"], log2)
    out, err = client.communicate(timeout=90)
    assert client.returncode == 0, (out, err)
    assert json.loads(out.splitlines()[-1])["verified"]
    assert save.read_bytes() == raw
    assert any(e["event"] == "finished" for e in events(log2))

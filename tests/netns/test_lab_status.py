"""The operator's view of a real boot server over real kernel networking:
its HTTP listener (/metrics, /status, /healthz, read by a real HTTP client
in the server's namespace) after real boots, link health under nftables
loss, and the live table in a real terminal (tmux). Each test removes what
it made."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.cli import command
from support.lab import (
    bootserver,
    drop_data,
    dropped_frames,
    events,
    finish,
    netboot,
    start_netboot,
    wait_listening,
)

from oxboot.netlab import Host, Lab, sh, wait_for
from oxboot.verify import read_header

_GET = """
import json, sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
        code, body = r.status, r.read().decode()
except urllib.error.HTTPError as e:
    code, body = e.code, e.read().decode()
print(json.dumps({"code": code, "body": body}))
"""


def http_get(host: Host, url: str) -> tuple[int, str]:
    """GET `url` with urllib from inside `host`'s namespace."""
    p = subprocess.run(host.cmd([sys.executable, "-c", _GET, url]), capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    return out["code"], out["body"]


def metrics(host: Host, url: str) -> dict[str, float]:
    code, body = http_get(host, url + "/metrics")
    assert code == 200
    return {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1])
            for ln in body.splitlines() if ln and not ln.startswith("#")}


def status(host: Host, url: str) -> dict:
    code, body = http_get(host, url + "/status")
    assert code == 200
    return json.loads(body)


def healthz(host: Host, url: str) -> tuple[int, list[str]]:
    code, body = http_get(host, url + "/healthz")
    return code, json.loads(body)["problems"]


def listening(log: Path) -> str:
    """The URL the server's listener bound (--listen with port 0)."""
    wait_listening(log)
    (event,) = [e for e in events(log) if e["event"] == "listen"]
    return str(event["url"])


def test_metrics_status_and_health_of_a_real_boot(lab: Lab, images: dict,
                                                   tmp_path: Path) -> None:
    srv, sled = lab.pair()
    img, raw = images["small"]
    served = tmp_path / "served.img"
    shutil.copyfile(img, served)
    log = tmp_path / "server.log"
    server = bootserver(lab, srv, ["--json", "--listen", "127.0.0.1:0", srv.ifname,
                                   str(served), "any"], log)
    url = listening(log)
    # "starting" (503) until the loop's first status publication.
    wait_for(lambda: healthz(srv, url) == (200, []), 10, "the server to be healthy")
    rc, result, _ = netboot(sled, img, tmp_path)
    assert rc == 0 and result["verified"], result
    mac = sled.mac()
    wait_for(lambda: [s["state"] for s in status(srv, url)["sleds"]] == ["finished"], 10,
             "the sled to show finished")
    (done,) = [e for e in events(log) if e["event"] == "finished"]

    m = metrics(srv, url)
    assert m["oxboot_boots_started_total"] == m["oxboot_boots_finished_total"] == 1
    assert m["oxboot_boots_reset_total"] == 0
    assert m["oxboot_data_bytes_sent_total"] == len(raw)  # 1 MiB: no chunk sent twice
    assert m["oxboot_data_frames_sent_total"] == done["frames"] == len(raw) // 1024
    assert m["oxboot_offsets_reasked_total"] == 0
    assert m["oxboot_sleds_booting"] == 0 and m["oxboot_sources_blocked"] == 0
    assert m[f'oxboot_sled_data_bytes_sent_total{{sled="{mac}"}}'] == len(raw)
    assert m[f'oxboot_sled_offsets_reasked_total{{sled="{mac}"}}'] == 0
    assert m[f'oxboot_sled_progress_ratio{{sled="{mac}"}}'] == 1.0
    assert m["oxboot_link_up"] == 1

    doc = status(srv, url)
    header = read_header(str(img))
    (image,) = doc["images"]
    assert image["name"] == "small" and image["path"] == str(served)
    assert image["size"] == len(raw) and image["sha256"] == header.sha256.hex()
    assert image["version"] == 1 and image["loaded"]
    (s,) = doc["sleds"]
    assert s["mac"] == mac and s["state"] == "finished" and s["percent"] == 100.0
    assert s["image"]["sha256"] == header.sha256.hex() and s["bytes"] == len(raw)
    assert s["frames_sent"] == done["frames"] and s["reasked"] == 0
    assert doc["server"]["link"] == srv.ifname and doc["server"]["workers"] == 1
    assert doc["server"]["link_up"] and doc["server"]["tx_methods"]
    assert doc["totals"]["finished"] == 1 and doc["totals"]["boots_finished"] == 1

    # The same, as the table `oxboot status` prints (not a terminal: once).
    p = subprocess.run(srv.cmd([*command("oxboot"), "status", url]), capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    (row,) = [ln for ln in p.stdout.splitlines() if ln.startswith(mac)]
    assert row.split()[1:5] == ["small", "finished", "1.0M", "100%"]

    # Unhealthy: no carrier (the sled's end down), the link set down, the
    # image file gone; healthy again when each comes back.
    sh("ip", "-n", sled.ns, "link", "set", sled.ifname, "down")
    wait_for(lambda: healthz(srv, url)[0] == 503, 10, "no carrier to show")
    assert healthz(srv, url) == (503, [f"link {srv.ifname} has no carrier"])
    # The loop sees it too (logged at its next status publication).
    wait_for(lambda: "link_down" in {e["event"] for e in events(log)}, 10,
             "the link_down event")
    sh("ip", "-n", sled.ns, "link", "set", sled.ifname, "up")
    wait_for(lambda: healthz(srv, url)[0] == 200, 10, "the carrier back")
    sh("ip", "-n", srv.ns, "link", "set", srv.ifname, "down")
    assert healthz(srv, url) == (503, [f"link {srv.ifname} is down"])
    sh("ip", "-n", srv.ns, "link", "set", srv.ifname, "up")
    wait_for(lambda: healthz(srv, url)[0] == 200, 10, "the link back up")
    # The server rode it out, and serves on.
    rc, result, _ = netboot(sled, img, tmp_path)
    assert rc == 0 and result["verified"], result
    assert server.poll() is None
    # Logged at the loop's next status publication (a quarter second
    # apart), which a quick boot may finish before: waited for.
    wait_for(lambda: "link_up" in {e["event"] for e in events(log)}, 10, "the link_up event")
    served.unlink()
    code, problems = healthz(srv, url)
    assert code == 503 and problems == [f"image {served}: No such file or directory"]


@pytest.mark.parametrize("workers", [1, 2])
def test_lossy_link_is_named_and_counted_exactly(lab: Lab, images: dict, tmp_path: Path,
                                                  workers: int) -> None:
    """Two sleds on a bridge, one losing 1% of its DATA at its ingress: only
    it is reported, and the offsets it asked again are exactly the frames
    the rule dropped (DATA lost after the server sent it, nothing else).
    With two workers, each receive thread brings its own sleds' C counts."""
    srv, lossy, clean = lab.bridge(3)
    img, raw = images["small"]  # 1024 DATA: P(no loss at 1%) = 0.99**1024 < 1e-4
    drop_data(lossy, 1, only_to=lossy.mac())
    log = tmp_path / "server.log"
    # Repair off: the client re-asks for every lost frame itself (batch
    # repair would resend most of them first: tests/netns/test_repair_lab.py).
    bootserver(lab, srv, ["--json", "--listen", "127.0.0.1:0", "--workers", str(workers),
                          "--repair", "off", srv.ifname, str(img), "any"], log)
    url = listening(log)
    procs = [(h, start_netboot(h, img, tmp_path / f"{h.ns}.raw", 120)) for h in (lossy, clean)]
    results = {}
    for h, p in procs:
        rc, result, err = finish(p, 180)
        assert rc == 0 and result["verified"], (result, err)
        assert (tmp_path / f"{h.ns}.raw").read_bytes() == raw
        results[h.mac()] = result
    dropped = dropped_frames(lossy)
    assert dropped > 0
    wait_for(lambda: sum(e["event"] == "finished" for e in events(log)) == 2, 10,
             "both finished events")
    finished = {e["mac"]: e for e in events(log) if e["event"] == "finished"}
    # Every dropped DATA was asked for again once (and only those were):
    # the server's count, the sled's own and the kernel's agree.
    assert finished[lossy.mac()]["reasked"] == dropped == results[lossy.mac()]["retransmits"]
    assert finished[clean.mac()]["reasked"] == 0 == results[clean.mac()]["retransmits"]
    warnings = [e for e in events(log) if e["event"] == "lossy_link"]
    assert warnings and {e["mac"] for e in warnings} == {lossy.mac()}
    w = warnings[0]
    assert w["share"] > 0.001 and 0 < w["reasked"] <= w["reasked_boot"] <= dropped
    assert w["stall_seconds"] == w["reasked_boot"] * 1.0
    # In /status and the metrics too (once published: 4 times a second).
    wait_for(lambda: [s["state"] for s in status(srv, url)["sleds"]] == ["finished"] * 2, 10,
             "both sleds to show finished")
    doc = status(srv, url)
    sleds = {s["mac"]: s for s in doc["sleds"]}
    assert sleds[lossy.mac()]["reasked"] == dropped
    assert sleds[lossy.mac()]["repeated_reads"] >= 1
    assert sleds[clean.mac()]["reasked"] == 0
    assert any(x["event"] == "lossy_link" for x in doc["warnings"])
    m = metrics(srv, url)
    assert m[f'oxboot_sled_offsets_reasked_total{{sled="{lossy.mac()}"}}'] == dropped
    assert m[f'oxboot_sled_offsets_reasked_total{{sled="{clean.mac()}"}}'] == 0
    assert m["oxboot_offsets_reasked_total"] == dropped
    assert m["oxboot_lossy_link_warnings_total"] == len(warnings)


def _tmux(sock: Path, *args: str) -> str:
    return subprocess.run(["tmux", "-S", str(sock), *args], check=True, capture_output=True,
                          text=True, timeout=30).stdout


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_live_table_in_a_terminal(lab: Lab, images: dict, tmp_path: Path) -> None:
    srv, a, b = lab.bridge(3)
    img, _ = images["small"]
    sock = tmp_path / "tmux.sock"  # a tmux server of this test's own
    argv = ["env", f"PYTHONPATH={os.environ.get('PYTHONPATH', '')}",
            *srv.cmd([*command("bootserver"), srv.ifname, str(img), "any"])]
    _tmux(sock, "new-session", "-d", "-s", "srv", "-x", "100", "-y", "30", shlex.join(argv))
    try:
        def pane() -> str:
            return _tmux(sock, "capture-pane", "-p", "-t", "srv")

        wait_for(lambda: "oxboot bootserver on" in pane(), 30, "the table to show")
        procs = [start_netboot(h, img, tmp_path / f"{h.ns}.raw", 60) for h in (a, b)]
        for p in procs:
            rc, result, err = finish(p, 90)
            assert rc == 0 and result["verified"], (result, err)

        def rows() -> dict[str, list[str]]:
            cells = [ln.split() for ln in pane().splitlines()]
            return {c[0]: c for c in cells if c and c[0] in (a.mac(), b.mac())}

        wait_for(lambda: all(rows().get(h.mac(), [""] * 3)[2] == "finished" for h in (a, b)),
                 10, "both sleds finished in the table")
        text = pane()
        (tmp_path / "pane.txt").write_text(text)
        print("\n" + text)  # the table as the terminal shows it (pytest -s)
        table = rows()
        for h in (a, b):
            assert table[h.mac()][1:5] == ["small", "finished", "1.0M", "100%"]
        assert "sleds: 0 booting, 0 stalled, 2 finished" in text
        lines = text.splitlines()
        assert lines[1].split() == ["SLED", "IMAGE", "STATE", "BYTES", "%", "MB/s", "REASK",
                                    "ETA", "LAST"]
        assert all(len(line.rstrip()) < 80 for line in lines)
        # No event lines on a terminal: the table owns it.
        assert not any(" offer: " in line for line in lines)
    finally:
        subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True,
                       timeout=30)
        time.sleep(0.2)

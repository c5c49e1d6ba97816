"""A permanent lab server over real kernel networking: bootserver --config
with images assigned to sleds on a bridge, an image folder changed while it
runs, SIGHUP re-reading the file mid-boot, and SIGTERM/SIGINT ending it
cleanly. Each test removes what it made."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from support.lab import (
    bootserver,
    clear_loss,
    events,
    finish,
    has_event,
    hold_data,
    netboot,
    rawpeer,
    start_netboot,
)

from oxboot.netlab import Lab, sh, wait_for

SLED_MACS = ["02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"]
#: A HELLO, then long enough for any OFFER to come back (an OFFER is
#: answered in milliseconds; the server's own events say it made none).
HELLO_AND_LISTEN = [{"send": {"type": "hello", "dst": "broadcast"}}, {"wait": 1.0}]


def write_config(path: Path, link: str, images: list[tuple[Path, list[str] | None]],
                 image_dir: Path | None = None, extra: str = "") -> None:
    """The file, written as an operator's editor would (a new file renamed
    over the old), so a SIGHUP never reads half of it."""
    lines = [f'link = "{link}"', extra]
    if image_dir is not None:
        lines.append(f'image_dir = "{image_dir}"')
    for image, sleds in images:
        lines += ["", "[[image]]", f'path = "{image}"']
        if sleds is not None:
            lines.append(f"sleds = {json.dumps(sleds)}")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def drop_into(folder: Path, image: Path, name: str | None = None) -> Path:
    """Put an image into the folder atomically: copied aside, renamed in."""
    final = folder / (name or image.name)
    tmp = folder / f".{final.name}.part"
    shutil.copyfile(image, tmp)
    os.replace(tmp, final)
    return final


def wait_event(log: Path, kind: str, what: str, count: int = 1, **fields: object) -> None:
    def seen() -> bool:
        return sum(1 for e in events(log) if e["event"] == kind
                   and all(e.get(k) == v for k, v in fields.items())) >= count
    wait_for(seen, 30, what)


def offers_to(log: Path, mac: str) -> list[str]:
    return [Path(e["image"]).name for e in events(log) if e["event"] == "offer"
            and e["mac"] == mac]


def test_two_sleds_each_boot_their_image_a_third_gets_nothing(lab: Lab, images: dict,
                                                              tmp_path: Path) -> None:
    hosts = lab.bridge(4)
    srv, sleds = hosts[0], hosts[1:]
    for sled, mac in zip(sleds, SLED_MACS, strict=True):
        sh("ip", "-n", sled.ns, "link", "set", sled.ifname, "address", mac)
    (a, raw_a), (b, raw_b) = images["other1"], images["other2"]
    conf = tmp_path / "lab.toml"
    write_config(conf, srv.ifname, [(a, [SLED_MACS[0]]), (b, [SLED_MACS[1]])])
    log = tmp_path / "server.log"
    server = bootserver(lab, srv, ["--json", "--config", str(conf)], log)
    wait_event(log, "image", "the images to be offered", count=2)
    image_events = {Path(e["image"]).name: e["sleds"] for e in events(log)
                    if e["event"] == "image"}
    assert image_events == {a.name: [SLED_MACS[0]], b.name: [SLED_MACS[1]]}

    first = start_netboot(sleds[0], a, tmp_path / "a.raw", 60)
    second = start_netboot(sleds[1], b, tmp_path / "b.raw", 60)
    for p, raw, save in ((first, raw_a, "a.raw"), (second, raw_b, "b.raw")):
        status, result, err = finish(p, 90)
        assert status == 0 and result["verified"], (result, err)
        assert (tmp_path / save).read_bytes() == raw
    # The third sled, assigned nothing: a HELLO gets no frame at all back.
    got = rawpeer(sleds[2], HELLO_AND_LISTEN)
    assert got["frames"] == [], got
    # Each sled was offered only its own image; the third not even that.
    assert set(offers_to(log, SLED_MACS[0])) == {a.name}
    assert set(offers_to(log, SLED_MACS[1])) == {b.name}
    assert offers_to(log, SLED_MACS[2]) == []
    finished = {e["mac"]: Path(e["image"]).name for e in events(log)
                if e["event"] == "finished"}
    assert finished == {SLED_MACS[0]: a.name, SLED_MACS[1]: b.name}
    server.send_signal(signal.SIGTERM)
    assert server.wait(15) == 0, log.read_text()[-2000:]


def test_image_folder_changes_count_from_the_next_hello(lab: Lab, images: dict,
                                                       tmp_path: Path) -> None:
    srv, sled = lab.pair()
    folder = tmp_path / "images"
    folder.mkdir()
    conf = tmp_path / "lab.toml"
    write_config(conf, srv.ifname, [], image_dir=folder)
    log = tmp_path / "server.log"
    server = bootserver(lab, srv, ["--json", "--config", str(conf)], log)
    wait_event(log, "transmit", "the server to start")
    assert rawpeer(sled, HELLO_AND_LISTEN)["frames"] == []  # nothing to offer yet

    # Dropped in while it runs: booted by the next sled, no restart.
    (one, raw_one), (two, raw_two) = images["small"], images["other1"]
    drop_into(folder, one, "lab.img")
    status, result, saved = netboot(sled, one, tmp_path)
    assert status == 0 and result["verified"], (result, log.read_text()[-2000:])
    assert saved.read_bytes() == raw_one

    # A file that is not an image: an error event, skipped, never fatal.
    (folder / "junk.img").write_bytes(b"not an image" * 100)
    # Replaced by rename: the next boot gets the new version.
    drop_into(folder, two, "lab.img")
    status, result, saved = netboot(sled, two, tmp_path)
    assert status == 0 and result["verified"], (result, log.read_text()[-2000:])
    assert saved.read_bytes() == raw_two
    assert has_event(log, "error", image=str(folder / "junk.img"))
    assert server.poll() is None

    # Removed: offered no more.
    (folder / "lab.img").unlink()
    (folder / "junk.img").unlink()
    got = rawpeer(sled, HELLO_AND_LISTEN)
    assert got["frames"] == [], got
    assert has_event(log, "removed", image=str(folder / "lab.img"))
    # Two images in a row in one slot, each from the link's own MAC (the
    # slot was free again), then none: every OFFER came from that MAC.
    macs = {e["mac"] for e in events(log) if e["event"] == "image"}
    assert macs == {srv.mac()}, macs
    server.send_signal(signal.SIGTERM)
    assert server.wait(15) == 0


def test_sighup_moves_a_sled_to_another_image_for_its_next_boot(lab: Lab, images: dict,
                                                                tmp_path: Path) -> None:
    srv, sled = lab.pair()
    (a, raw_a), (b, raw_b) = images["other2"], images["small"]
    mac = sled.mac()
    conf = tmp_path / "lab.toml"
    write_config(conf, srv.ifname, [(a, [mac]), (b, [])])
    log = tmp_path / "server.log"
    server = bootserver(lab, srv, ["--json", "--config", str(conf)], log)
    wait_event(log, "image", "the images to be offered", count=2)

    # A boot of image a, held mid-way (the second half of its DATA dropped
    # at the sled) while the configuration moves the sled to image b.
    hold_data(sled, len(raw_a) // 2)
    save = tmp_path / "a.raw"
    client = start_netboot(sled, a, save, 60)
    wait_event(log, "start", "the boot to start", mac=mac)
    write_config(conf, srv.ifname, [(a, []), (b, [mac])], extra="read_rate = 9000")
    server.send_signal(signal.SIGHUP)
    wait_event(log, "config", "the configuration to be re-read")
    assert client.poll() is None, "the boot was over before the SIGHUP"
    clear_loss(sled)
    status, result, err = finish(client, 90)
    assert status == 0 and result["verified"], (result, err)  # not dropped
    assert save.read_bytes() == raw_a

    # Its next boot: offered b only.
    status, result, saved = netboot(sled, b, tmp_path)
    assert status == 0 and result["verified"], (result, log.read_text()[-2000:])
    assert saved.read_bytes() == raw_b
    offers = offers_to(log, mac)
    assert offers[0] == a.name and offers[-1] == b.name and a.name not in offers[1:], offers

    # A broken file on SIGHUP: an error event, the previous configuration stays.
    conf.write_text('link = "x"\nread_rate = "fast"\n')
    server.send_signal(signal.SIGHUP)
    wait_event(log, "error", "the bad file to be reported")
    bad = [e for e in events(log) if e["event"] == "error"][-1]
    assert f"{conf}:2: read_rate:" in bad["message"], bad
    assert rawpeer(sled, [{"send": {"type": "hello", "dst": "broadcast"}},
                          {"until": {"type": "Offer", "count": 1}, "wait": 0.5}]
                   )["frames"][0]["type"] == "Offer"
    assert server.poll() is None
    server.send_signal(signal.SIGTERM)
    assert server.wait(15) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("json_mode", [True, False], ids=["json", "text"])
def test_stop_signal_ends_cleanly(lab: Lab, images: dict, tmp_path: Path,
                                  sig: signal.Signals, json_mode: bool) -> None:
    srv, sled = lab.pair()
    img, _ = images["small"]
    log = tmp_path / "server.log"
    server = bootserver(lab, srv, [*(["--json"] if json_mode else []), srv.ifname, str(img),
                                   "any"], log)
    wait_for(lambda: "image" in log.read_text(), 30, "the server to start")
    status, result, _ = netboot(sled, img, tmp_path)
    assert status == 0 and result["verified"], result
    server.send_signal(sig)
    assert server.wait(15) == 0, log.read_text()
    text = log.read_text()
    assert "Error" not in text and "Traceback" not in text, text
    if json_mode:
        last = events(log)[-2:]
        assert [e["event"] for e in last] == ["stopped", "stats"], last
        assert last[0]["signal"] == sig.name and last[1]["final"], last
        assert last[1]["finished"] == 1, last
    else:
        lines = text.splitlines()
        assert f"stopped: stopped by {sig.name}" in lines[-2], lines
        assert "stats: boots finished: 1" in lines[-1], lines


def test_image_dir_on_the_command_line_with_the_positional_usage(lab: Lab, images: dict,
                                                                 tmp_path: Path) -> None:
    srv, sled = lab.pair()
    folder = tmp_path / "images"
    folder.mkdir()
    (a, _), (b, raw_b) = images["small"], images["other1"]
    log = tmp_path / "server.log"
    server = bootserver(lab, srv, ["--json", "--image-dir", str(folder), srv.ifname, str(a),
                                   "any"], log)
    wait_event(log, "image", "the server to start")
    drop_into(folder, b)
    status, result, saved = netboot(sled, b, tmp_path)
    assert status == 0 and result["verified"], (result, log.read_text()[-2000:])
    assert saved.read_bytes() == raw_b
    # The folder's image has a MAC of its own, next to the link's.
    added = [e for e in events(log) if e["event"] == "image"]
    assert [e["index"] for e in added] == [0, 1] and added[1]["mac"] != srv.mac()
    # SIGHUP without a configuration file: a warning, the server goes on.
    server.send_signal(signal.SIGHUP)
    wait_event(log, "warning", "the SIGHUP warning", message="no configuration file")
    assert server.poll() is None
    server.send_signal(signal.SIGTERM)
    assert server.wait(15) == 0

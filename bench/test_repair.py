"""Boots on lossy links: batch repair (bootserver --repair) against the
same boot on a clean link, in the same run.

The OS-faithful emulator (`oxboot netboot`) boots over a veth pair while
nftables drops a random share of the DATA at the sled's ingress (its
counter gives the frames lost):

- boot time at 1% and at 5% loss / clean boot time, interleaved;
- duplicate DATA per lost frame (each is a `dropped data packet` line on
  the OS's console), with the boot times, in the figures' details;
- clean boots with repair on vs off (nothing may change on a clean link);
- 8 sleds on a bridge at 5% loss: the last one's boot / the clean
  aggregate (all 8 at once, clean).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    QUICK,
    SELF_TEST,
    boot_together,
    knob,
    netboot_image,
    note,
    record,
    script,
    self_test_skip,
)

from oxboot.netlab import Host, Lab, sh, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)")

MIB = 1 << 20
SIZE = (16 if QUICK else 64) * MIB
ROUNDS = 3
#: A boot slowed by the self-test (--repair off: minutes) is stopped after
#: this long; the ratio it gives is then a lower bound, far past the floor.
SLOWED_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    img = netboot_image(tmp_path_factory.mktemp("repairbench"), SIZE)
    os.sync()
    return img


def _drop(host: Host, percent: int) -> None:
    """Drop `percent`% of the DATA (type 0x9104, frame byte 18) at the
    host's ingress, at random, counting them."""
    rules = (f"table netdev oxloss {{\n chain in {{\n"
             f"  type filter hook ingress device {host.ifname} priority 0;\n"
             f"  ether type 0x1de0 @ll,144,32 0x9104 numgen random mod 100 < {percent} "
             f"counter drop\n }}\n}}\n")
    subprocess.run(["ip", "netns", "exec", host.ns, "nft", "-f", "-"], input=rules, text=True,
                   check=True, capture_output=True)


def _lost_and_clear(host: Host) -> int:
    out = sh("ip", "netns", "exec", host.ns, "nft", "list", "table", "netdev", "oxloss").stdout
    sh("ip", "netns", "exec", host.ns, "nft", "delete", "table", "netdev", "oxloss")
    return int(out.split("packets ")[1].split()[0])


def _server(lab: Lab, srv: Host, image: Path, log: Path, repair: str) -> None:
    lab.start(srv, [*script("bootserver"), "--json", "--repair", repair, srv.ifname, str(image),
                    "any"], log)
    wait_for(lambda: '"event": "image"' in log.read_text(), 30, "server")


def _boot(host: Host, image: Path, timeout: float) -> tuple[float, dict]:
    """(seconds, the emulator's result): the transfer's time, or the whole
    time given when it did not finish (a self-test's slowed boot)."""
    t0 = time.monotonic()
    p = subprocess.run(host.cmd([*script("oxboot"), "netboot", host.ifname, "--want-image",
                                 str(image), "--json", "-t", str(timeout)]),
                       capture_output=True, text=True, timeout=timeout + 60)
    lines = [x for x in p.stdout.splitlines() if x.startswith("{")]
    assert lines, (p.stdout, p.stderr)
    result = json.loads(lines[-1])
    if result["verified"]:
        return result["seconds"], result
    assert SELF_TEST and "timed out" in (result["reason"] or ""), result
    return time.monotonic() - t0, result


def test_boot_under_loss_vs_clean(lab: Lab, image: Path, tmp_path: Path) -> None:
    figures = ("repair_loss1_vs_clean", "repair_loss5_vs_clean")
    repair = knob(figures, "on", "off")
    timeout = SLOWED_TIMEOUT if SELF_TEST else 300.0
    srv, sled = lab.pair()
    _server(lab, srv, image, tmp_path / "srv.log", repair)
    times: dict[int, list[float]] = {0: [], 1: [], 5: []}
    lost = {1: 0, 5: 0}
    dups = {0: 0, 1: 0, 5: 0}
    for _ in range(ROUNDS):
        for percent in (0, 1, 5):  # interleaved: a slow minute spoils one round
            if percent:
                _drop(sled, percent)
            secs, result = _boot(sled, image, timeout)
            if percent:
                lost[percent] += _lost_and_clear(sled)
            times[percent].append(secs)
            dups[percent] += result["duplicates"]
    ratios = {p: statistics.median(t / c for t, c in zip(times[p], times[0], strict=True))
              for p in (1, 5)}
    clean = statistics.median(times[0])

    def details(p: int) -> dict[str, object]:
        return {"repair": repair, "image_mib": SIZE // MIB, "clean_seconds": round(clean, 4),
                "lossy_seconds": [round(t, 3) for t in times[p]],
                "clean_seconds_each": [round(t, 4) for t in times[0]],
                "lost_frames": lost[p], "duplicates": dups[p],
                "duplicates_per_lost_frame": round(dups[p] / max(lost[p], 1), 2),
                "clean_duplicates": dups[0]}

    record("repair_loss1_vs_clean", ratios[1], **details(1))
    record("repair_loss5_vs_clean", ratios[5], **details(5))


def test_clean_boot_repair_on_vs_off(lab: Lab, image: Path, tmp_path: Path) -> None:
    """Nothing changes on a clean link: the same boot from a server with
    repair on and one with it off (each on its own veth pair), in turn."""
    self_test_skip("repair_clean_on_vs_off")
    (srv_on, sled_on), (srv_off, sled_off) = lab.pair(), lab.pair()
    _server(lab, srv_on, image, tmp_path / "on.log", "on")
    _server(lab, srv_off, image, tmp_path / "off.log", "off")
    on, off, dups = [], [], 0
    for _ in range(3 * ROUNDS):
        secs, result = _boot(sled_on, image, 120)
        on.append(secs)
        dups += result["duplicates"]
        off.append(_boot(sled_off, image, 120)[0])
    ratio = statistics.median(b / a for a, b in zip(on, off, strict=True))
    record("repair_clean_on_vs_off", ratio, on_seconds=[round(t, 4) for t in on],
           off_seconds=[round(t, 4) for t in off], on_duplicates=dups,
           image_mib=SIZE // MIB)


def _boot_together(sleds: list[Host], image: Path, timeout: float) -> tuple[float, list[dict]]:
    """All sleds released at once: the time until the last is done, and
    their results (each verified, except when the self-test slowed them)."""
    held = boot_together(sleds, image, timeout)
    for result, err in zip(held.results, held.errors, strict=True):
        assert result["verified"] or SELF_TEST, (result, err)
    return held.seconds, held.results


def test_eight_sleds_at_5_percent_vs_clean(lab: Lab, image: Path, tmp_path: Path) -> None:
    repair = knob(("sleds8_loss5_vs_clean",), "on", "off")
    hosts = lab.bridge(9)
    srv, sleds = hosts[0], hosts[1:]
    _server(lab, srv, image, tmp_path / "srv.log", repair)
    timeout = SLOWED_TIMEOUT if SELF_TEST else 600.0
    clean, _ = _boot_together(sleds, image, timeout)
    for s in sleds:
        _drop(s, 5)
    lossy, results = _boot_together(sleds, image, timeout)
    lost = sum(_lost_and_clear(s) for s in sleds)
    dups = sum(r["duplicates"] for r in results)
    record("sleds8_loss5_vs_clean", lossy / clean, repair=repair, clean_seconds=round(clean, 3),
           lossy_seconds=round(lossy, 3), image_mib=SIZE // MIB, lost_frames=lost,
           duplicates=dups, duplicates_per_lost_frame=round(dups / max(lost, 1), 2),
           slowest_sled_seconds=max(r["seconds"] for r in results))
    note("sleds8_loss5", clean_aggregate_mbps=round(8 * SIZE / clean / 1e6, 1),
         lossy_aggregate_mbps=round(8 * SIZE / lossy / 1e6, 1))

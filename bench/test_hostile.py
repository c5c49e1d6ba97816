"""How much a READ flood from another host slows a sled's boot beside it.

The tests (tests/netns/test_hostile.py) check what must happen: the flooder is
blocked in the kernel, the boot beside it completes and verifies. How long
that boot takes, against the same boot undisturbed in the same run, is a
figure with a floor here: a timing ratio is not something a test on a busy
machine can assert.
"""

from __future__ import annotations

import json
import os
import random
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SELF_TEST, knob, record, script

from oxboot import build_image
from oxboot.netlab import Host, Lab, wait_for

HERE = Path(__file__).resolve().parent
FUZZ = HERE.parent / "tests" / "peers" / "fuzz_frames.py"  # its flood: valid 128-offset READs
IMAGE_BYTES = 32 << 20
#: Boots of each kind: the figure is the ratio of their medians (a boot
#: takes ~0.1 s, so one disturbed by the machine would sway a max or a min).
ROUNDS = 5

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)")


def _events(log: Path) -> list[dict]:
    return [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]


def _boot(host: Host, image: Path, timeout: float = 120) -> float:
    """A verified boot's total seconds (HELLO to verified). In self-test
    mode the slowed server may starve the sled altogether: a boot that does
    not finish within 20 s counts as taking those 20 s."""
    if SELF_TEST:
        timeout = 20
    p = subprocess.run(host.cmd([*script("oxboot"), "netboot", host.ifname, "--want-image",
                                 str(image), "--json", "-t", str(timeout)]),
                       capture_output=True, text=True, timeout=timeout + 30)
    if SELF_TEST and p.returncode != 0:
        return float(timeout)
    assert p.returncode == 0, (p.stdout, p.stderr)
    result = json.loads(p.stdout.splitlines()[-1])
    assert result["verified"], result
    return float(result["total_seconds"])


def test_read_flood_boot_vs_undisturbed(lab: Lab, tmp_path: Path) -> None:
    """The median of a few boots while another host on the bridge floods
    READs as fast as it can (after a second of it at full speed), against
    the median of the same boots undisturbed, before and after the flood."""
    rng = random.Random(11)
    raw = tmp_path / "flood.raw"
    raw.write_bytes(b"".join(rng.randbytes(1 << 20) if i % 2 else bytes(1 << 20)
                             for i in range(IMAGE_BYTES >> 20)))
    img = tmp_path / "flood.img"
    build_image(raw, img, target_size=64 << 20, image_name="flood")
    srv, sled, flooder = lab.bridge(3)
    log = tmp_path / "srv.log"
    # Self-test: a read rate so high that no host is ever flagged, so the
    # flooder is never blocked in the kernel and the server answers its READs.
    lab.start(srv, [*script("bootserver"), "--json",
                    *knob(("read_flood_boot_vs_undisturbed",), [], ["--read-rate", "1e6"]),
                    srv.ifname, str(img), "any"], log)
    wait_for(lambda: '"event": "image"' in log.read_text(), 30, "server")
    quiet = [_boot(sled, img) for _ in range(ROUNDS // 2 + 1)]

    flood = subprocess.Popen(flooder.cmd([sys.executable, str(FUZZ), "flood", flooder.ifname,
                                          "--server", srv.mac(), "--image-size",
                                          str(IMAGE_BYTES)]),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    lab.procs.append(flood)  # type: ignore[arg-type]
    ready, _, _ = select.select([flood.stderr], [], [], 20)
    assert ready and flood.stderr is not None and flood.stderr.readline().strip() == "ready"
    time.sleep(1.0)  # the flood at full speed (a measurement condition, not a wait)
    flooded = [_boot(sled, img) for _ in range(ROUNDS)]
    flood.terminate()
    out, err = flood.communicate(timeout=30)
    sent = json.loads(out.strip().splitlines()[-1])
    blocked = [e["mac"] for e in _events(log) if e["event"] == "blocked"]
    assert blocked or SELF_TEST, "the flooder was never blocked"
    quiet += [_boot(sled, img) for _ in range(ROUNDS - len(quiet))]
    record("read_flood_boot_vs_undisturbed", statistics.median(flooded) / statistics.median(quiet),
           undisturbed_s=[round(t, 4) for t in quiet], flooded_s=[round(t, 4) for t in flooded],
           flood_reads_per_s=sent["rate"], blocks=len(blocked), image_bytes=IMAGE_BYTES)
